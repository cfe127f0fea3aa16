//! Host tests of the parser and the hash (the XDP program runs the same
//! code over packet memory).

extern crate std;

use std::vec::Vec;

use super::*;

const CLIENT4: [u8; 4] = [198, 18, 0, 2];
const SERVER4: [u8; 4] = [198, 18, 0, 1];

fn eth(ethertype: u16) -> Vec<u8> {
    let mut f = std::vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn tcp(sport: u16, dport: u16) -> [u8; 20] {
    let mut t = [0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02; // SYN
    t
}

fn ipv4(options: usize, proto: u8, payload: &[u8]) -> Vec<u8> {
    let ihl = 20 + options;
    let mut ip = std::vec![0u8; ihl];
    ip[0] = 0x40 | (ihl / 4) as u8;
    ip[2..4].copy_from_slice(&((ihl + payload.len()) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&CLIENT4);
    ip[16..20].copy_from_slice(&SERVER4);
    for b in &mut ip[20..] {
        *b = 1; // NOP options
    }
    ip.extend_from_slice(payload);
    ip
}

fn frame4(options: usize, sport: u16, dport: u16) -> Vec<u8> {
    let mut f = eth(ETH_P_IP);
    f.extend(ipv4(options, IPPROTO_TCP, &tcp(sport, dport)));
    f
}

fn ipv6(next: u8, rest: &[u8]) -> Vec<u8> {
    let mut ip = std::vec![0u8; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(rest.len() as u16).to_be_bytes());
    ip[6] = next;
    ip[7] = 64;
    ip[8] = 0xfd;
    ip[23] = 2;
    ip[24] = 0xfd;
    ip[39] = 1;
    ip.extend_from_slice(rest);
    ip
}

#[test]
fn ipv4_tcp_with_and_without_options() {
    for options in [0, 4, 40] {
        let f = frame4(options, 40000, 443);
        assert_eq!(
            parse(&f[..]),
            Parsed::Tcp(FlowKey::v4(CLIENT4, SERVER4, 40000, 443)),
            "options {options}"
        );
    }
}

#[test]
fn vlan_tagged() {
    for tpid in [ETH_P_8021Q, ETH_P_8021AD] {
        let mut f = eth(tpid);
        f.extend_from_slice(&[0x00, 0x07]);
        f.extend_from_slice(&ETH_P_IP.to_be_bytes());
        f.extend(ipv4(0, IPPROTO_TCP, &tcp(1, 2)));
        assert_eq!(
            parse(&f[..]),
            Parsed::Tcp(FlowKey::v4(CLIENT4, SERVER4, 1, 2))
        );
    }
}

#[test]
fn every_truncation_is_malformed_or_other() {
    let f = frame4(8, 40000, 443);
    for len in 0..f.len() {
        let got = parse(&f[..len]);
        assert_eq!(got, Parsed::Malformed, "truncated to {len}");
    }
}

#[test]
fn bad_ihl_and_version() {
    let mut f = frame4(0, 1, 2);
    f[ETH_HLEN] = 0x44; // IHL 4 < 5
    assert_eq!(parse(&f[..]), Parsed::Malformed);
    f[ETH_HLEN] = 0x4f; // IHL 15: options run into the TCP header, TCP cut
    assert_eq!(parse(&f[..]), Parsed::Malformed);
    f[ETH_HLEN] = 0x65; // version 6 in an IPv4 EtherType
    assert_eq!(parse(&f[..]), Parsed::Malformed);
}

#[test]
fn fragments_and_other_protocols_are_not_steered() {
    let mut f = frame4(0, 1, 2);
    f[ETH_HLEN + 6] = 0x20; // MF
    assert_eq!(parse(&f[..]), Parsed::Other);
    let mut udp = eth(ETH_P_IP);
    udp.extend(ipv4(0, 17, &[0u8; 8]));
    assert_eq!(parse(&udp[..]), Parsed::Other);
    assert_eq!(parse(&eth(0x0806)[..]), Parsed::Other);
}

#[test]
fn ipv6_tcp_and_extension_headers() {
    let mut f = eth(ETH_P_IPV6);
    f.extend(ipv6(IPPROTO_TCP, &tcp(5, 443)));
    let Parsed::Tcp(k) = parse(&f[..]) else {
        panic!("not parsed: {:?}", parse(&f[..]));
    };
    assert!(k.ipv6);
    assert_eq!((k.src_port, k.dst_port), (5, 443));

    // Hop-by-hop (8 bytes) then destination options (16 bytes) then TCP.
    let mut rest = std::vec![IPV6_EXT_DSTOPTS, 0, 0, 0, 0, 0, 0, 0];
    rest.extend_from_slice(&[IPPROTO_TCP, 1]);
    rest.extend_from_slice(&[0u8; 14]);
    rest.extend_from_slice(&tcp(6, 443));
    let mut f = eth(ETH_P_IPV6);
    f.extend(ipv6(IPV6_EXT_HOPOPTS, &rest));
    assert!(matches!(parse(&f[..]), Parsed::Tcp(k) if k.src_port == 6));
    for len in 0..f.len() {
        assert_eq!(parse(&f[..len]), Parsed::Malformed, "truncated to {len}");
    }

    // A fragment header: passed, not steered.
    let mut f = eth(ETH_P_IPV6);
    f.extend(ipv6(IPV6_EXT_FRAGMENT, &[IPPROTO_TCP, 0, 0, 0, 0, 0, 0, 0]));
    assert_eq!(parse(&f[..]), Parsed::Other);

    // More extension headers than the parser skips.
    let mut rest = Vec::new();
    for _ in 0..IPV6_MAX_EXT {
        rest.extend_from_slice(&[IPV6_EXT_DSTOPTS, 0, 0, 0, 0, 0, 0, 0]);
    }
    rest.extend_from_slice(&tcp(6, 443));
    let mut f = eth(ETH_P_IPV6);
    f.extend(ipv6(IPV6_EXT_DSTOPTS, &rest));
    assert_eq!(parse(&f[..]), Parsed::Other);
}

/// Two fixed keys (a start draws a random one; the tests need repeatable
/// numbers).
const KEY_A: FlowHashKey = FlowHashKey {
    k0: 0x0706_0504_0302_0100,
    k1: 0x0f0e_0d0c_0b0a_0908,
};
const KEY_B: FlowHashKey = FlowHashKey {
    k0: 0x9e37_79b9_7f4a_7c15,
    k1: 0xbf58_476d_1ce4_e5b9,
};
/// Worker counts of the uniformity tests.
const WORKER_COUNTS: [u32; 4] = [2, 7, 64, 256];
/// Tuples per uniformity test.
const TUPLES: u32 = 1_000_000;

/// The 36 bytes `flow_hash` is defined over.
fn message(k: &FlowKey) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&k.src);
    m.extend_from_slice(&k.dst);
    m.extend_from_slice(&k.src_port.to_be_bytes());
    m.extend_from_slice(&k.dst_port.to_be_bytes());
    m
}

#[test]
#[allow(deprecated)] // std's SipHasher is SipHash-2-4, the reference here
fn siphash_rounds_agree_with_the_standard_library() {
    use std::hash::Hasher as _;
    let keys = [
        FlowKey::v4(CLIENT4, SERVER4, 40000, 443),
        FlowKey::v6([0xfd; 16], [0x20; 16], 1, 65535),
    ];
    for hk in [KEY_A, KEY_B] {
        for k in &keys {
            let mut std_sip = std::hash::SipHasher::new_with_keys(hk.k0, hk.k1);
            std_sip.write(&message(k));
            let (words, tail) = flow_message(k);
            assert_eq!(
                siphash::<2, 4>(&hk, &words, tail),
                std_sip.finish(),
                "{k:?}"
            );
        }
    }
}

#[test]
fn every_bit_of_the_tuple_changes_the_hash() {
    let base = FlowKey::v6([0x11; 16], [0x22; 16], 0x3333, 0x4444);
    let h = flow_hash(&base, &KEY_A);
    for bit in 0..(36 * 8) {
        let mut m = message(&base);
        m[bit / 8] ^= 1 << (bit % 8);
        let mut k = base;
        k.src.copy_from_slice(&m[0..16]);
        k.dst.copy_from_slice(&m[16..32]);
        k.src_port = u16::from_be_bytes([m[32], m[33]]);
        k.dst_port = u16::from_be_bytes([m[34], m[35]]);
        assert_ne!(flow_hash(&k, &KEY_A), h, "bit {bit} of the message");
    }
}

#[test]
fn worker_slot_is_the_hash_modulo_the_workers() {
    let k = FlowKey::v4(CLIENT4, SERVER4, 40000, 443);
    for n in WORKER_COUNTS {
        assert_eq!(
            worker_slot(&k, &KEY_A, n),
            Some((flow_hash(&k, &KEY_A) % u64::from(n)) as u32)
        );
    }
    assert_eq!(worker_slot(&k, &KEY_A, 0), None);
}

/// Pearson's chi-square statistic of `counts` against equal expectations.
fn chi_square(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    let expected = total as f64 / counts.len() as f64;
    counts
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum()
}

/// The chi-square value a uniform hash exceeds with probability about
/// 3·10⁻⁷ (z = 5) for `df` degrees of freedom (Wilson–Hilferty).
fn chi_square_limit(df: u32) -> f64 {
    let df = f64::from(df);
    let a = 2.0 / (9.0 * df);
    df * (1.0 - a + 5.0 * a.sqrt()).powi(3)
}

/// Per worker count of [`WORKER_COUNTS`], how many of `tuples` each slot
/// gets with `hash`.
fn spread(tuples: impl Iterator<Item = FlowKey>, hash: impl Fn(&FlowKey) -> u64) -> Vec<Vec<u64>> {
    let mut counts: Vec<Vec<u64>> = WORKER_COUNTS
        .iter()
        .map(|&n| std::vec![0; n as usize])
        .collect();
    for k in tuples {
        let h = hash(&k);
        for (c, &n) in counts.iter_mut().zip(&WORKER_COUNTS) {
            c[(h % u64::from(n)) as usize] += 1;
        }
    }
    counts
}

/// Asserts that `tuples` spread uniformly over every worker count under
/// both keys.
fn assert_uniform(what: &str, tuples: impl Fn() -> std::boxed::Box<dyn Iterator<Item = FlowKey>>) {
    for hk in [KEY_A, KEY_B] {
        let counts = spread(tuples(), |k| flow_hash(k, &hk));
        for (c, &n) in counts.iter().zip(&WORKER_COUNTS) {
            assert_eq!(c.iter().sum::<u64>(), u64::from(TUPLES), "{what}");
            let (x2, limit) = (chi_square(c), chi_square_limit(n - 1));
            assert!(
                x2 < limit,
                "{what}, {n} workers, key {hk:x?}: chi-square {x2:.1} >= {limit:.1}"
            );
        }
    }
}

/// IPv6 sources inside one /64 whose 32-bit words XOR to the same value
/// (so the folded hash this one replaced saw one source address).
fn equal_fold_v6(i: u32) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..8].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1]);
    a[8..12].copy_from_slice(&i.to_be_bytes());
    a[12..].copy_from_slice(&(i ^ 0x5a5a_5a5a).to_be_bytes());
    a
}

const SERVER6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1];

#[test]
fn sequential_ipv4_clients_spread_uniformly() {
    // 16 neighbouring client addresses, 62 500 consecutive ports each.
    assert_uniform("IPv4, sequential", || {
        std::boxed::Box::new((0..TUPLES).map(|i| {
            let a = 2 + (i / 62_500) as u8;
            FlowKey::v4([198, 18, 0, a], SERVER4, 1024 + (i % 62_500) as u16, 443)
        }))
    });
}

#[test]
fn ipv6_sources_with_equal_xor_folds_spread_uniformly() {
    assert_uniform("IPv6, one /64, equal folds, one port", || {
        std::boxed::Box::new(
            (0..TUPLES).map(|i| FlowKey::v6(equal_fold_v6(i), SERVER6, 40000, 443)),
        )
    });
    // The same with ports that cancel too: fold(src) ^ port constant.
    assert_uniform("IPv6, equal folds with ports", || {
        std::boxed::Box::new((0..TUPLES).map(|i| {
            let mut src = equal_fold_v6(i >> 8);
            src[15] ^= (i & 0xff) as u8;
            FlowKey::v6(src, SERVER6, 40000 ^ (i & 0xff) as u16, 443)
        }))
    });
}

/// The hash this one replaced: addresses XOR-folded to 32 bits, then
/// murmur3 rounds with a public seed. Kept here to show that the
/// uniformity test can fail.
fn folded_hash(k: &FlowKey) -> u64 {
    let fold = |a: &[u8; 16]| {
        let w = |i: usize| u32::from_be_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        w(0) ^ w(4) ^ w(8) ^ w(12)
    };
    let round = |h: u32, k: u32| {
        let k = k
            .wrapping_mul(0xcc9e_2d51)
            .rotate_left(15)
            .wrapping_mul(0x1b87_3593);
        (h ^ k)
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64)
    };
    let ports = (u32::from(k.src_port) << 16) | u32::from(k.dst_port);
    let h = round(round(round(0x7f4a_7c15, fold(&k.src)), fold(&k.dst)), ports);
    u64::from(h)
}

#[test]
fn the_uniformity_test_rejects_the_folded_hash_it_replaced() {
    let counts = spread(
        (0..TUPLES).map(|i| FlowKey::v6(equal_fold_v6(i), SERVER6, 40000, 443)),
        folded_hash,
    );
    for (c, &n) in counts.iter().zip(&WORKER_COUNTS) {
        // Every tuple on one worker.
        assert_eq!(c.iter().filter(|&&x| x > 0).count(), 1, "{n} workers");
        assert!(chi_square(c) > chi_square_limit(n - 1));
    }
}

#[test]
fn tuples_aimed_at_one_worker_under_one_key_spread_under_another() {
    // What an attacker who knew key A (or the public seed of the old hash)
    // would send: only source ports that key A puts on worker 0 of 7.
    let aimed: Vec<FlowKey> = (0..TUPLES * 8)
        .map(|i| {
            let a = (i >> 16) as u16;
            let src = [198, 18, (a >> 8) as u8, a as u8];
            FlowKey::v4(src, SERVER4, i as u16, 443)
        })
        .filter(|k| worker_slot(k, &KEY_A, 7) == Some(0))
        .take(TUPLES as usize)
        .collect();
    assert_eq!(aimed.len(), TUPLES as usize);
    let counts = spread(aimed.iter().copied(), |k| flow_hash(k, &KEY_B));
    for (c, &n) in counts.iter().zip(&WORKER_COUNTS) {
        let (x2, limit) = (chi_square(c), chi_square_limit(n - 1));
        assert!(x2 < limit, "{n} workers: chi-square {x2:.1} >= {limit:.1}");
    }
}

#[test]
fn two_keys_send_the_same_tuples_to_different_workers() {
    let tuples = (0..10_000u16).map(|p| FlowKey::v4(CLIENT4, SERVER4, 20000 + p, 443));
    for n in [2u32, 64] {
        let same = tuples
            .clone()
            .filter(|k| worker_slot(k, &KEY_A, n) == worker_slot(k, &KEY_B, n))
            .count();
        // Independent keys agree on about 1/n of the tuples.
        let expected = 10_000 / n as usize;
        assert!(
            same.abs_diff(expected) < expected / 5 + 30,
            "{n} workers: {same} of 10000 on the same worker under both keys"
        );
    }
}

#[test]
fn stats_add() {
    let mut a = SteeringStats::default();
    let b = SteeringStats {
        xdp_seen: 2,
        xdp_passed: 5,
        ..SteeringStats::default()
    };
    a.add(&b);
    a.add(&b);
    assert_eq!(a.xdp_seen, 4);
    assert_eq!(a.xdp_passed, 10);
}
