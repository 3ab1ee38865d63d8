//! libFuzzer entry of the `progress` target; the parsing and the properties live in `aura_fuzz::progress`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| aura_fuzz::progress(data));
