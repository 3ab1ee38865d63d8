//! libFuzzer entry of the `config` target; the parsing and the properties live in `aura_fuzz::config`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| aura_fuzz::config(data));
