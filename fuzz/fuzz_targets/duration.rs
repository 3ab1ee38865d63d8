//! libFuzzer entry of the `duration` target; the parsing and the properties live in `aura_fuzz::duration`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| aura_fuzz::duration(data));
