//! libFuzzer entry of the `proc_entries` target; the parsing and the properties live in `aura_fuzz::proc_entries`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| aura_fuzz::proc_entries(data));
