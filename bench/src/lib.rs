//! tlsfront-bench
