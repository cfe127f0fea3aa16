//! The config parser (file text, `-o` overrides, validation) on arbitrary
//! input; see `tlsfront::fuzzing::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tlsfront::fuzzing::config(data));
