//! libFuzzer entry of the `headers` target; the parsing and the properties live in `aura_fuzz::headers`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| aura_fuzz::headers(data));
