//! The XDP packet parser and flow hash of tlsfront-shared on arbitrary
//! frames; see `tlsfront::fuzzing::packet`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tlsfront::fuzzing::packet(data));
