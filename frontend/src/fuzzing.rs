//! Entry points of the fuzz targets (`fuzz/`, cargo-fuzz) and of their
//! regression replay (`tests/tests/fuzz_regressions.rs`), kept here so that
//! both run exactly the same code: one function per target, taking the raw
//! input, that panics only when it finds a bug.
//!
//! Each function states the property it checks. None of them is used by
//! tlsfront itself.

use std::collections::HashMap;
use std::path::Path;

use tlsfront_shared::{
    flow_hash, parse, worker_slot, FlowHashKey, FlowKey, Parsed, ETH_HLEN, ETH_P_8021AD,
    ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPV6_EXT_DSTOPTS, IPV6_EXT_HOPOPTS,
    IPV6_EXT_ROUTING, IPV6_MAX_EXT,
};

use crate::config::Config;
use crate::session_cache::{self, Opened, SessionCache};
use crate::tickets::TicketKeyRing;

/// The config parser on arbitrary text (target `config`).
///
/// Applies `data` (lossily decoded) as a config file, then each of its
/// lines as a `-o` override, validating after each step; errors are
/// expected, panics are bugs. Then checks the contract of the value types
/// (`parse(render(v)) == v`): every `(key, value)` that `entries()` lists
/// must set again on a fresh config and read back identically.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut config = Config::default();
    if let Err(e) = config.apply_text(Path::new("fuzz.conf"), &text) {
        let _ = e.to_string();
    }
    if let Err(e) = config.validate() {
        let _ = e.to_string();
    }
    for line in text.lines().take(64) {
        if let Err(e) = config.apply_override(line) {
            let _ = e.to_string();
        }
    }
    if let Err(e) = config.validate() {
        let _ = e.to_string();
    }
    let mut again = Config::default();
    for (key, value) in config.entries() {
        if let Err(reason) = again.set(&key, &value) {
            panic!("{key} = {value:?} is listed by entries() but refused by set(): {reason}");
        }
        assert_eq!(
            again.get(&key).as_deref(),
            Some(value.as_str()),
            "{key}: value changed on the way through set()/get()"
        );
    }
    // A renamed key's old name reads and writes the same value in the old
    // name's syntax (a bare number of milliseconds for `*_ms`).
    for r in crate::config::RENAMED {
        let old = config.get(r.old).unwrap_or_default();
        let mut via_old = Config::default();
        if let Err(reason) = via_old.set(r.old, &old) {
            panic!(
                "{} = {old:?} is shown by get() but refused by set(): {reason}",
                r.old
            );
        }
        assert_eq!(
            via_old.get(r.new),
            config.get(r.new),
            "{}: value changed on the way through its old name {}",
            r.new,
            r.old
        );
    }
}

/// The session cache on an attacker-controlled file (target `cache_file`).
///
/// `dir` is a scratch directory (best on tmpfs) that this function owns
/// while it runs. The cache file is written three ways, each opened with a
/// geometry of 1 to 4 sets chosen by the first byte: `data` as-is;
/// `data` padded or truncated to the file length; and a valid header
/// followed by `data` as the slots (so that hostile slots are really read,
/// not rebuilt away). Then up to 32 `put`/`get`/`take` operations are
/// decoded from `data`, their keys and values being slices of `data`
/// (so of the file). Checked:
/// - no panic, no out-of-bounds access (the fuzzer runs under ASan);
/// - a value returned for a key was put for that key in this run, or
///   lies in the file as `key ‖ value` (an entry the file really holds);
/// - on a file that was created or rebuilt (nothing hostile in it), a hit
///   is exactly the last value put and not taken since, and an expired or
///   taken key is a miss.
pub fn cache_file(dir: &Path, data: &[u8]) {
    let sets = 1 + usize::from(data.first().copied().unwrap_or(0) % 4);
    let len = usize::try_from(session_cache::file_size(sets)).expect("at most 4 sets");
    let path = dir.join("fuzz.cache");

    let mut padded = data.to_vec();
    padded.resize(len, 0);
    let mut with_header = session_cache::valid_header(sets, FUZZ_SEED);
    with_header.extend_from_slice(data);
    with_header.resize(len, 0);

    for (variant, contents) in [
        ("as-is", data),
        ("padded", &padded[..]),
        ("header", &with_header[..]),
    ] {
        // A fresh file each time: the previous variant's cache left its own
        // sessions in it.
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, contents).expect("writing the fuzz cache file");
        let (cache, opened) = SessionCache::open(&path, len as u64, 300, 1)
            .unwrap_or_else(|e| panic!("{variant}: opening the fuzz cache file failed: {e}"));
        if variant == "header" {
            assert_eq!(
                opened,
                Opened::Reused,
                "a file with a valid header must be used as it is (does valid_header still match the layout?)"
            );
        }
        let hostile = opened == Opened::Reused;
        cache_ops(&cache, data, contents, hostile);
    }
}

/// The key-hash seed of the cache files [`cache_file`] writes with a valid
/// header. Fixed: one drawn from `data` would change with the very slots
/// the fuzzer writes, and no key hash in them could ever match.
pub const FUZZ_SEED: u64 = 0x7f4a_7c15_9e37_79b9;

/// The operations of [`cache_file`] on one opened cache.
fn cache_ops(cache: &SessionCache, data: &[u8], file: &[u8], hostile: bool) {
    // Every value put per key in this run, and (for a trusted file) what
    // the cache must hold: Some(value) live, None absent.
    let mut put: HashMap<Vec<u8>, Vec<Vec<u8>>> = HashMap::new();
    let mut live: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
    let slice = |at: usize, len: usize| -> &[u8] {
        if data.is_empty() {
            return &[];
        }
        let start = at % data.len();
        &data[start..(start + len).min(data.len())]
    };
    let mut pos = 1;
    for _ in 0..32 {
        let Some(op) = data.get(pos..pos + 6) else {
            break;
        };
        pos += 6;
        // Keys a little past the cache's limit, values a little past what an
        // entry holds: both sides of each bound, whatever the layout.
        let key = slice(
            usize::from(u16::from_le_bytes([op[1], op[2]])),
            usize::from(op[3]) % (session_cache::MAX_KEY_BYTES + 7),
        );
        let value_len =
            usize::from(u16::from_le_bytes([op[4], op[5]])) % (session_cache::ENTRY_BYTES + 16);
        let value = slice(
            usize::from(op[5]).wrapping_mul(31) + usize::from(op[0]),
            value_len,
        );
        match op[0] % 5 {
            0 | 1 => {
                let stored = cache.put_local(key, value);
                let fits = session_cache::fits(key, value);
                if !hostile {
                    assert_eq!(
                        stored,
                        fits,
                        "put of a {}+{} byte entry",
                        key.len(),
                        value.len()
                    );
                }
                if stored {
                    put.entry(key.to_vec()).or_default().push(value.to_vec());
                    live.insert(key.to_vec(), Some(value.to_vec()));
                }
            }
            2 => {
                // Stored already expired: must never be returned.
                let stored = cache.put_local_until(key, value, 1);
                if stored {
                    live.insert(key.to_vec(), None);
                }
            }
            op => {
                let take = op == 4;
                let got = if take {
                    cache.take_local(key)
                } else {
                    cache.get_local(key)
                };
                let Some(got) = got else { continue };
                let ours = put.get(key).is_some_and(|vs| vs.contains(&got));
                if hostile {
                    let mut entry = key.to_vec();
                    entry.extend_from_slice(&got);
                    assert!(
                        ours || contains(file, &entry),
                        "{}: value {got:02x?} for key {key:02x?} was neither put nor in the file",
                        if take { "take" } else { "get" }
                    );
                } else {
                    assert!(ours, "value {got:02x?} for key {key:02x?} was never put");
                    // Eviction may lose a live entry (a miss), never change it.
                    assert_eq!(
                        live.get(key),
                        Some(&Some(got.clone())),
                        "hit for key {key:02x?} is not the last live value"
                    );
                    if take {
                        live.insert(key.to_vec(), None);
                    }
                }
            }
        }
    }
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// The ticket-key ring on arbitrary tickets (target `ticket_open`).
///
/// `ring` is opened once by the caller (random keys). Checked: opening
/// `data` as a ticket gives `None` (it was not sealed by this ring; a
/// `Some` would be a forged ticket) and does not panic; sealing `data`
/// and opening the result gives `data` back; the sealed ticket with one
/// bit flipped (chosen by `data`) or cut short does not open.
pub fn ticket_open(ring: &TicketKeyRing, data: &[u8]) {
    assert_eq!(
        ring.open_ticket(data),
        None,
        "arbitrary bytes opened as a ticket"
    );
    let sealed = ring.seal(data).expect("sealing with the current key");
    assert_eq!(
        ring.open_ticket(&sealed).as_deref(),
        Some(data),
        "seal/open round trip"
    );
    let seed = data.iter().fold(0usize, |a, b| {
        a.wrapping_mul(31).wrapping_add(usize::from(*b))
    });
    let mut flipped = sealed.clone();
    let bit = seed % (flipped.len() * 8);
    flipped[bit / 8] ^= 1 << (bit % 8);
    assert_eq!(
        ring.open_ticket(&flipped),
        None,
        "a ticket with bit {bit} flipped opened"
    );
    let cut = seed % sealed.len();
    assert_eq!(
        ring.open_ticket(&sealed[..cut]),
        None,
        "a ticket cut to {cut} bytes opened"
    );
}

/// The XDP packet parser and flow hash of `tlsfront-shared` on arbitrary
/// frames (target `packet`).
///
/// Checked: [`parse`] agrees with an independent, slice-based reading of
/// the same headers ([`reference_parse`]); a steerable or ignored frame
/// parses the same with bytes appended (the parser reads headers, never
/// the frame's end); the hash is deterministic and the worker slot is
/// below the worker count (taken from the first bytes), `None` for none.
pub fn packet(data: &[u8]) {
    let parsed = parse(data);
    assert_eq!(
        parsed,
        reference_parse(data),
        "parse disagrees with the reference"
    );
    if parsed != Parsed::Malformed {
        let mut longer = data.to_vec();
        longer.extend_from_slice(&[0xa5; 64]);
        assert_eq!(
            parse(&longer[..]),
            parsed,
            "trailing bytes changed the result"
        );
    }
    if let Parsed::Tcp(key) = parsed {
        let copy = key;
        // The key from the input's last 16 bytes (zero-padded).
        let mut key_bytes = [0u8; 16];
        for (b, d) in key_bytes.iter_mut().zip(data.iter().rev()) {
            *b = *d;
        }
        let hk = FlowHashKey::from_bytes(key_bytes);
        assert_eq!(flow_hash(&key, &hk), flow_hash(&copy, &hk));
        let workers = u32::from(data.first().copied().unwrap_or(0));
        match worker_slot(&key, &hk, workers) {
            None => assert_eq!(workers, 0),
            Some(slot) => {
                assert!(slot < workers, "slot {slot} of {workers} workers");
                assert_eq!(u64::from(slot), flow_hash(&key, &hk) % u64::from(workers));
            }
        }
    }
}

/// What [`parse`] should return for `frame`, written independently of it
/// (slices and explicit offsets) to serve as the fuzzer's oracle.
pub fn reference_parse(frame: &[u8]) -> Parsed {
    let be16 = |at: usize| -> Option<u16> {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    if frame.len() < ETH_HLEN {
        return Parsed::Malformed;
    }
    let (ethertype, l3) = match be16(12) {
        Some(ETH_P_8021Q | ETH_P_8021AD) => match (frame.len() >= ETH_HLEN + 4, be16(16)) {
            (true, Some(inner)) => (inner, ETH_HLEN + 4),
            _ => return Parsed::Malformed,
        },
        Some(t) => (t, ETH_HLEN),
        None => return Parsed::Malformed,
    };
    // The TCP ports at `l4` if a whole TCP header with a sane data offset is there.
    let tcp_ports = |l4: usize| -> Option<(u16, u16)> {
        let header = frame.get(l4..l4.checked_add(20)?)?;
        (header[12] >> 4 >= 5).then(|| {
            (
                u16::from_be_bytes([header[0], header[1]]),
                u16::from_be_bytes([header[2], header[3]]),
            )
        })
    };
    match ethertype {
        ETH_P_IP => {
            let Some(ip) = frame.get(l3..l3 + 20) else {
                return Parsed::Malformed;
            };
            let version = ip[0] >> 4;
            let header_len = usize::from(ip[0] & 0xf) * 4;
            let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            if version != 4 || header_len < 20 || total_len < header_len {
                return Parsed::Malformed;
            }
            let more_fragments = ip[6] & 0x20 != 0;
            let offset = u16::from_be_bytes([ip[6] & 0x1f, ip[7]]);
            if ip[9] != IPPROTO_TCP || more_fragments || offset != 0 {
                return Parsed::Other;
            }
            if total_len < header_len + 20 {
                return Parsed::Malformed;
            }
            match tcp_ports(l3 + header_len) {
                Some((sp, dp)) => Parsed::Tcp(FlowKey::v4(
                    [ip[12], ip[13], ip[14], ip[15]],
                    [ip[16], ip[17], ip[18], ip[19]],
                    sp,
                    dp,
                )),
                None => Parsed::Malformed,
            }
        }
        ETH_P_IPV6 => {
            let Some(ip) = frame.get(l3..l3 + 40) else {
                return Parsed::Malformed;
            };
            if ip[0] >> 4 != 6 {
                return Parsed::Malformed;
            }
            let mut next = ip[6];
            let mut l4 = l3 + 40;
            for _ in 0..IPV6_MAX_EXT {
                if ![IPV6_EXT_HOPOPTS, IPV6_EXT_ROUTING, IPV6_EXT_DSTOPTS].contains(&next) {
                    break;
                }
                let Some(ext) = frame.get(l4..l4 + 2) else {
                    return Parsed::Malformed;
                };
                next = ext[0];
                l4 += 8 + 8 * usize::from(ext[1]);
            }
            if next != IPPROTO_TCP {
                return Parsed::Other;
            }
            match tcp_ports(l4) {
                Some((sp, dp)) => {
                    let src: [u8; 16] = ip[8..24].try_into().expect("16 bytes");
                    let dst: [u8; 16] = ip[24..40].try_into().expect("16 bytes");
                    Parsed::Tcp(FlowKey::v6(src, dst, sp, dp))
                }
                None => Parsed::Malformed,
            }
        }
        _ => Parsed::Other,
    }
}

/// The ClientHello reader ([`crate::client_hello`]) on arbitrary first
/// bytes of a connection: it never panics and never reads past the first
/// record.
///
/// Checked: what it returns respects the format's limits (a session ID of
/// 1 to 32 bytes, a server name of lower-case ASCII of at most 253 bytes, a
/// first PSK identity exactly when identities were counted); the first
/// record lies within the input; bytes after it change nothing.
pub fn client_hello(data: &[u8]) {
    use crate::client_hello::{first_record_len, parse};
    let Some(info) = parse(data) else {
        return;
    };
    let len = first_record_len(data).expect("a parsed hello has a record header");
    assert!(len <= data.len(), "parsed past the input");
    if let Some(id) = &info.session_id {
        assert!(
            (1..=32).contains(&id.len()),
            "session ID of {} bytes",
            id.len()
        );
    }
    if let Some(name) = &info.server_name {
        assert!(!name.is_empty() && name.len() <= 253);
        assert!(name
            .bytes()
            .all(|b| b.is_ascii() && !b.is_ascii_uppercase()));
    }
    assert_eq!(info.first_psk_identity.is_some(), info.psk_identities > 0);
    let mut longer = data[..len].to_vec();
    longer.extend_from_slice(&[0x16; 64]);
    assert_eq!(
        parse(&longer),
        Some(info),
        "bytes after the first record changed the result"
    );
}

/// The PROXY header reader ([`crate::proxy_protocol::parse`]) on arbitrary
/// first bytes of a connection (target `proxy_header`): it never panics and
/// never looks past [`crate::proxy_protocol::MAX_HEADER`] bytes.
///
/// Checked: a complete header lies within the input and the limit; bytes
/// after it change nothing, and every shorter prefix of it asks for more;
/// the addresses of a complete header survive being sent again by
/// tlsfront's own writer ([`crate::proxy_protocol::proxy_protocol_header`])
/// and read back.
pub fn proxy_header(data: &[u8]) {
    use crate::proxy_protocol::{parse, proxy_protocol_header, Header, Parsed, MAX_HEADER};
    let Parsed::Complete { header, len } = parse(data) else {
        return;
    };
    assert!(
        len <= data.len() && len <= MAX_HEADER,
        "a header of {len} bytes"
    );
    let mut longer = data[..len].to_vec();
    longer.extend_from_slice(b"\x16\x03\x01PROXY \r\n");
    assert_eq!(
        parse(&longer),
        Parsed::Complete { header, len },
        "bytes after the header changed it"
    );
    // Every v2 prefix is incomplete; a v1 prefix too (a CRLF ends the line).
    for cut in [0, 1, len / 2, len - 1] {
        assert_eq!(
            parse(&data[..cut]),
            Parsed::Incomplete,
            "a prefix of {cut} of {len} bytes"
        );
    }
    if let Header::Proxied {
        source,
        destination,
    } = header
    {
        for version in [1, 2] {
            if version == 1 && source.is_ipv4() != destination.is_ipv4() {
                continue;
            }
            let again = proxy_protocol_header(version, source, destination);
            match parse(&again) {
                Parsed::Complete { header: h, .. } => {
                    assert_eq!(h, header, "v{version} round trip")
                }
                other => panic!("tlsfront's own v{version} header does not read back: {other:?}"),
            }
        }
    }
}
