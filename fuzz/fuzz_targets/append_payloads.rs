//! Fuzz target: the payloads of append-only tables that arrive from peers — an append
//! batch or a range tombstone inside a version-2 envelope, a block or a tombstone inside
//! a state transfer — decoded without panicking, a decoded batch or tombstone surviving
//! its own encoding
//! (`edgestore::fuzzing::decode_append_payloads`). The envelope target reaches batches
//! only through whole envelopes; this one reaches the decoders directly.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    edgestore::fuzzing::decode_append_payloads(data);
});
