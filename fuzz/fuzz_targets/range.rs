//! libFuzzer entry of the `range` target; the parsing and the properties live in `aura_fuzz::range`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| aura_fuzz::range(data));
