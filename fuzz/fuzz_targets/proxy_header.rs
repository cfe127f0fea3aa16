//! The PROXY protocol header reader on arbitrary first bytes of a
//! connection; see `tlsfront::fuzzing::proxy_header`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tlsfront::fuzzing::proxy_header(data));
