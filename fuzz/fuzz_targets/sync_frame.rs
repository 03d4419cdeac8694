//! Fuzz target: decoding one sync frame from untrusted bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sync_protocol::fuzzing::decode_frame(data);
});
