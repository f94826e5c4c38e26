//! Placeholder for the simulator-driven cluster target; does nothing yet.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|_data: &[u8]| {});
