//! libFuzzer entry of the `sse` target; the parsing and the properties live in `aura_fuzz::sse`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| aura_fuzz::sse(data));
