//! libFuzzer entry of the `lease_spec` target; the parsing and the properties live in `aura_fuzz::lease_spec`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| aura_fuzz::lease_spec(data));
