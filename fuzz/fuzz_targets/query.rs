//! libFuzzer entry of the `query` target; the parsing and the properties live in `aura_fuzz::query`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| aura_fuzz::query(data));
