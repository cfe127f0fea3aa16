//! Matching a TLS server name (SNI) against configured names, one rule for
//! certificates and upstreams alike: an exact name first, then a wildcard
//! `*.<parent>` covering exactly one leftmost label (as RFC 6125 §6.4.3 has
//! clients match them), compared case-insensitively (DNS names are,
//! RFC 4343) and without a trailing root dot.

use std::collections::HashMap;

/// The entry of `by_name` (lower-case names; a wildcard is written
/// `*.example.com`) that server name `name` selects, if any.
pub fn lookup<'a, T>(by_name: &'a HashMap<String, T>, name: &str) -> Option<&'a T> {
    // Called for every handshake (certificate) and every upstream connect:
    // no allocation when there is nothing to match or the name is already
    // lower case, as clients send it.
    if by_name.is_empty() {
        return None;
    }
    let name = name.trim_end_matches('.');
    let name: std::borrow::Cow<'_, str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
        name.to_ascii_lowercase().into()
    } else {
        name.into()
    };
    if let Some(exact) = by_name.get(name.as_ref()) {
        return Some(exact);
    }
    // `*.example.com` stands for one label: `www.example.com`, never
    // `example.com` or `a.b.example.com` (that would be `*.b.example.com`).
    name.split_once('.')
        .filter(|(label, parent)| !label.is_empty() && !parent.is_empty())
        .and_then(|(_, parent)| by_name.get(&format!("*.{parent}")))
}
