//! The manifest parser and validator, and the path and symlink checks: see `dropship::fuzzing::manifest`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dropship::fuzzing::manifest(data));
