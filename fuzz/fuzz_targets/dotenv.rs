//! The dotenv parser, and the `render` round trip: see `dropship::fuzzing::dotenv`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dropship::fuzzing::dotenv(data));
