//! libFuzzer entry of the `job_spec` target; the parsing and the properties live in `aura_fuzz::job_spec`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| aura_fuzz::job_spec(data));
