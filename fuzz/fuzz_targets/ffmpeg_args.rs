//! libFuzzer entry of the `ffmpeg_args` target; the parsing and the properties live in
//! `aura_fuzz::ffmpeg_args`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| aura_fuzz::ffmpeg_args(data));
