//! libFuzzer entry of the `control` target; the parsing and the properties live in `aura_fuzz::control`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| aura_fuzz::control(data));
