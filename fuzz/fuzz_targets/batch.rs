//! libFuzzer entry of the `batch` target; the parsing and the properties live in `aura_fuzz::batch`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| aura_fuzz::batch(data));
