//! The preflight's ELF reader on any bytes: see `dropship::fuzzing::elf`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dropship::fuzzing::elf(data));
