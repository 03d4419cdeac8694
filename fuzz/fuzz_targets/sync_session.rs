//! Fuzz target: a sync session fed an arbitrary sequence of frames over a real replica.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sync_protocol::fuzzing::session_frames(data);
});
