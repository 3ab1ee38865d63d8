//! libFuzzer entry of the `size` target; the parsing and the properties live in `aura_fuzz::size`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| aura_fuzz::size(data));
