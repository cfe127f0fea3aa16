//! The ClientHello reader on arbitrary first bytes of a connection; see
//! `tlsfront::fuzzing::client_hello`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tlsfront::fuzzing::client_hello(data));
