//! The agent's release-stream decoder (zstd + tar, checked against a manifest): see `dropship::fuzzing::stream`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dropship::fuzzing::stream(data));
