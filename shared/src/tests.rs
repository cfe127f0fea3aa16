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

#[test]
fn hash_is_stable_and_spreads() {
    // Pinned values, computed outside this code (a Python transcription
    // of the seed, murmur3 rounds and finaliser): the XDP program, the
    // tests and anyone predicting a connection's worker must agree on
    // them, so a change of the hash must show up here.
    let k = FlowKey::v4(CLIENT4, SERVER4, 40000, 443);
    assert_eq!(flow_hash(&k), 0xb5cb_ba79);
    assert_eq!(worker_slot(&k, 4), Some(0xb5cb_ba79 % 4));
    let k = FlowKey::v4([10, 0, 0, 1], [10, 0, 0, 2], 12345, 8443);
    assert_eq!(flow_hash(&k), 0xa62f_c8a6);
    let mut per = [0u32; 4];
    for port in 10000..18000u16 {
        let k = FlowKey::v4(CLIENT4, SERVER4, port, 443);
        per[worker_slot(&k, 4).unwrap() as usize] += 1;
    }
    for n in per {
        assert!((1800..2200).contains(&n), "uneven: {per:?}");
    }
    assert_eq!(worker_slot(&k, 0), None);
}

#[test]
fn stats_add() {
    let mut a = SteeringStats::default();
    let mut redirected = [0; STATS_CPUS];
    redirected[3] = 5;
    let b = SteeringStats {
        xdp_seen: 2,
        xdp_redirected: redirected,
        ..SteeringStats::default()
    };
    a.add(&b);
    a.add(&b);
    assert_eq!(a.xdp_seen, 4);
    assert_eq!(a.xdp_redirected[3], 10);
}
