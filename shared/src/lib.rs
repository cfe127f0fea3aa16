//! Types and code both the eBPF programs (`ebpf/`) and userspace
//! (`frontend/`, `tests/`) use.
//!
//! Everything here is `#![no_std]`. Map values are `#[repr(C)]` so that the
//! byte layout is the same on both sides of the eBPF ABI. The packet parser
//! ([`parse`]) and the keyed flow hash ([`flow_hash`]) are plain functions over the
//! [`Packet`] abstraction: the XDP program runs them over the packet memory
//! (one bounds check against `data_end` per header, which is what the
//! verifier needs), the host runs them over a byte slice (unit tests, the
//! end-to-end tests that predict the CPU of a connection, fuzzing).
#![no_std]

/// Ethernet header length (destination, source, EtherType).
pub const ETH_HLEN: usize = 14;
/// Length of one 802.1Q / 802.1ad tag (TCI + inner EtherType).
pub const VLAN_HLEN: usize = 4;
/// EtherType IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType IPv6.
pub const ETH_P_IPV6: u16 = 0x86DD;
/// EtherType 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// EtherType 802.1ad (QinQ outer) tag.
pub const ETH_P_8021AD: u16 = 0x88A8;
/// Smallest IPv4 header (IHL = 5).
pub const IPV4_MIN_HLEN: usize = 20;
/// Fixed IPv6 header.
pub const IPV6_HLEN: usize = 40;
/// Smallest TCP header (data offset = 5).
pub const TCP_MIN_HLEN: usize = 20;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IPv6 extension headers the parser skips (hop-by-hop, routing,
/// destination options); they share the `next header, length in 8-octet
/// units minus one` layout.
pub const IPV6_EXT_HOPOPTS: u8 = 0;
/// IPv6 routing header.
pub const IPV6_EXT_ROUTING: u8 = 43;
/// IPv6 fragment header (not skipped: a fragment is passed, not steered).
pub const IPV6_EXT_FRAGMENT: u8 = 44;
/// IPv6 destination options header.
pub const IPV6_EXT_DSTOPTS: u8 = 60;
/// How many IPv6 extension headers the parser skips before giving up
/// (bounded so that the verifier sees a bounded loop).
pub const IPV6_MAX_EXT: usize = 3;

/// Size of the `CPUS` array map (worker slot → CPU) and the most workers
/// that XDP steering spreads over.
pub const MAX_WORKERS: u32 = 256;
/// Default `max_entries` of `CPUMAP` and `SOCKETS` (both indexed by CPU id);
/// userspace raises it to the number of possible CPUs at load time.
pub const DEFAULT_MAX_CPUS: u32 = 64;

/// Names of the maps and programs in the eBPF object, shared so that the
/// loader cannot drift from the object.
pub mod names {
    /// `HashMap<u16, u8>`: destination ports (host byte order) to steer.
    pub const PORTS: &str = "PORTS";
    /// `Array<u32>`: index = worker slot, value = that worker's CPU.
    pub const CPUS: &str = "CPUS";
    /// `Array<u32>`: [`super::CONFIG_WORKERS`] = number of valid slots in `CPUS`.
    pub const CONFIG: &str = "CONFIG";
    /// `CpuMap`: index = CPU id.
    pub const CPUMAP: &str = "CPUMAP";
    /// `ReusePortSockArray`: index = CPU id, value = the listener of the
    /// worker pinned to that CPU.
    pub const SOCKETS: &str = "SOCKETS";
    /// `PerCpuArray<SteeringStats>` with one entry.
    pub const STATS: &str = "STATS";
    /// `PerCpuArray<u64>` with [`super::MAX_WORKERS`] entries: index =
    /// worker slot, value = segments this CPU steered to that worker.
    pub const STEERED: &str = "STEERED";
    /// `Array<FlowHashKey>` with one entry: the key of
    /// [`super::flow_hash`], random per start of the frontend.
    pub const FLOW_KEY: &str = "FLOW_KEY";
    /// The XDP program.
    pub const XDP_PROGRAM: &str = "tlsfront_xdp";
    /// The SK_REUSEPORT program.
    pub const REUSEPORT_PROGRAM: &str = "tlsfront_reuseport";
}

/// Index in the `CONFIG` map of the number of workers (valid `CPUS` slots).
pub const CONFIG_WORKERS: u32 = 0;
/// Number of entries of the `CONFIG` map.
pub const CONFIG_LEN: u32 = 1;

/// Counters of the steering programs, one copy per CPU (`PerCpuArray`),
/// each written only by the CPU it belongs to.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SteeringStats {
    /// Packets the XDP program saw.
    pub xdp_seen: u64,
    /// Packets it left to the kernel unchanged (not TCP to a steered port,
    /// fragments, no workers configured, redirect failure).
    pub xdp_passed: u64,
    /// Of those passed, packets that were truncated or malformed.
    pub xdp_parse_errors: u64,
    /// `bpf_redirect_map` failures (no CPUMAP entry for the target).
    pub xdp_redirect_failed: u64,
    /// SK_REUSEPORT runs that selected the listener of the current CPU.
    pub reuseport_selected: u64,
    /// SK_REUSEPORT runs with no listener for the current CPU (the kernel's
    /// hash chose).
    pub reuseport_fallback: u64,
}

impl SteeringStats {
    /// Adds `other` into `self` (summing the per-CPU copies).
    pub fn add(&mut self, other: &SteeringStats) {
        self.xdp_seen += other.xdp_seen;
        self.xdp_passed += other.xdp_passed;
        self.xdp_parse_errors += other.xdp_parse_errors;
        self.xdp_redirect_failed += other.xdp_redirect_failed;
        self.reuseport_selected += other.reuseport_selected;
        self.reuseport_fallback += other.reuseport_fallback;
    }
}

/// Bytes of a packet, read with a bounds check per read.
///
/// The eBPF implementation compares `data + offset + N` with `data_end`
/// once per call: the parser calls [`Packet::load`] once per header, which
/// keeps one verifier-visible bounds check per header.
pub trait Packet {
    /// `N` bytes at `offset`, or `None` if the packet is shorter.
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

impl Packet for [u8] {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        let bytes = self.get(offset..end)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Some(out)
    }
}

/// The addresses and ports of a TCP segment, as they appear in the packet
/// (source = the client for segments towards the server). IPv4 addresses
/// are stored as IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    /// Source address (16 bytes; IPv4 mapped).
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Source port, host byte order.
    pub src_port: u16,
    /// Destination port, host byte order.
    pub dst_port: u16,
    /// Whether the packet was IPv6.
    pub ipv6: bool,
}

impl FlowKey {
    /// An IPv4 flow.
    pub const fn v4(src: [u8; 4], dst: [u8; 4], src_port: u16, dst_port: u16) -> FlowKey {
        FlowKey {
            src: mapped(src),
            dst: mapped(dst),
            src_port,
            dst_port,
            ipv6: false,
        }
    }

    /// An IPv6 flow.
    pub const fn v6(src: [u8; 16], dst: [u8; 16], src_port: u16, dst_port: u16) -> FlowKey {
        FlowKey {
            src,
            dst,
            src_port,
            dst_port,
            ipv6: true,
        }
    }
}

const fn mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// What the parser found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A TCP segment (first or only fragment-free IP packet).
    Tcp(FlowKey),
    /// Well-formed, but not something to steer: not IP, not TCP, an IP
    /// fragment, or more IPv6 extension headers than the parser skips.
    Other,
    /// Truncated or malformed (short header, IHL < 5, TCP data offset < 5,
    /// an IP total length shorter than its headers).
    Malformed,
}

/// Parses Ethernet (with at most one 802.1Q/802.1ad tag), IPv4 (options
/// skipped by IHL) or IPv6 (up to [`IPV6_MAX_EXT`] hop-by-hop, routing or
/// destination-options headers skipped), and TCP.
#[inline(always)]
pub fn parse<P: Packet + ?Sized>(p: &P) -> Parsed {
    // Ethernet: one check for the 14 bytes.
    let Some(eth) = p.load::<ETH_HLEN>(0) else {
        return Parsed::Malformed;
    };
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(tag) = p.load::<VLAN_HLEN>(ETH_HLEN) else {
            return Parsed::Malformed;
        };
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        l3 = ETH_HLEN + VLAN_HLEN;
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(p, l3),
        ETH_P_IPV6 => parse_ipv6(p, l3),
        _ => Parsed::Other,
    }
}

#[inline(always)]
fn parse_ipv4<P: Packet + ?Sized>(p: &P, l3: usize) -> Parsed {
    let Some(ip) = p.load::<IPV4_MIN_HLEN>(l3) else {
        return Parsed::Malformed;
    };
    if ip[0] >> 4 != 4 {
        return Parsed::Malformed;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < IPV4_MIN_HLEN {
        return Parsed::Malformed;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if total < ihl {
        return Parsed::Malformed;
    }
    if ip[9] != IPPROTO_TCP {
        return Parsed::Other;
    }
    // More fragments, or a fragment offset: no (whole) TCP header to hash.
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if frag & 0x3fff != 0 {
        return Parsed::Other;
    }
    if total < ihl + TCP_MIN_HLEN {
        return Parsed::Malformed;
    }
    let Some((src_port, dst_port)) = parse_tcp(p, l3 + ihl) else {
        return Parsed::Malformed;
    };
    Parsed::Tcp(FlowKey::v4(
        [ip[12], ip[13], ip[14], ip[15]],
        [ip[16], ip[17], ip[18], ip[19]],
        src_port,
        dst_port,
    ))
}

#[inline(always)]
fn parse_ipv6<P: Packet + ?Sized>(p: &P, l3: usize) -> Parsed {
    let Some(ip) = p.load::<IPV6_HLEN>(l3) else {
        return Parsed::Malformed;
    };
    if ip[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let mut next = ip[6];
    let mut l4 = l3 + IPV6_HLEN;
    let mut skipped = 0;
    while skipped < IPV6_MAX_EXT {
        if next != IPV6_EXT_HOPOPTS && next != IPV6_EXT_ROUTING && next != IPV6_EXT_DSTOPTS {
            break;
        }
        let Some(ext) = p.load::<2>(l4) else {
            return Parsed::Malformed;
        };
        next = ext[0];
        l4 += (usize::from(ext[1]) + 1) * 8;
        skipped += 1;
    }
    if next != IPPROTO_TCP {
        return Parsed::Other;
    }
    let Some((src_port, dst_port)) = parse_tcp(p, l4) else {
        return Parsed::Malformed;
    };
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);
    Parsed::Tcp(FlowKey::v6(src, dst, src_port, dst_port))
}

/// The ports of the TCP header at `l4`, if the header is whole and sane.
#[inline(always)]
fn parse_tcp<P: Packet + ?Sized>(p: &P, l4: usize) -> Option<(u16, u16)> {
    let tcp = p.load::<TCP_MIN_HLEN>(l4)?;
    if usize::from(tcp[12] >> 4) * 4 < TCP_MIN_HLEN {
        return None;
    }
    Some((
        u16::from_be_bytes([tcp[0], tcp[1]]),
        u16::from_be_bytes([tcp[2], tcp[3]]),
    ))
}

/// The secret key of [`flow_hash`]: 128 random bits per start of the
/// frontend, written into the `FLOW_KEY` map that the XDP program reads.
/// Without it nobody can predict which worker a 4-tuple lands on, so no
/// client can choose ports or addresses that pile up on one worker.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowHashKey {
    /// First half (SipHash `k0`).
    pub k0: u64,
    /// Second half (SipHash `k1`).
    pub k1: u64,
}

impl FlowHashKey {
    /// The key made of 16 (random) bytes, little-endian halves.
    pub const fn from_bytes(b: [u8; 16]) -> FlowHashKey {
        FlowHashKey {
            k0: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            k1: u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        }
    }
}

/// Length of the message [`flow_hash`] hashes: source address, destination
/// address (16 bytes each, IPv4 mapped), source port, destination port
/// (2 bytes each, network byte order).
pub const FLOW_MESSAGE_LEN: u64 = 36;

/// SipHash-1-3 (keyed by `hk`) of the flow's whole 4-tuple, the 36-byte
/// message of [`FLOW_MESSAGE_LEN`]; the same on the host and in the XDP
/// program. Nothing is folded before hashing: every bit of both addresses
/// and ports goes through the keyed rounds, so tuples built to collide
/// under a fold (equal XOR of address words, trivially chosen inside one
/// IPv6 /64) are as spread as any others.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, hk: &FlowHashKey) -> u64 {
    let (words, tail) = flow_message(key);
    siphash::<1, 3>(hk, &words, tail)
}

/// The worker slot (index into the CPU list) a flow goes to, with
/// `workers` workers and key `hk`; `None` when there are none.
#[inline(always)]
pub fn worker_slot(key: &FlowKey, hk: &FlowHashKey, workers: u32) -> Option<u32> {
    if workers == 0 {
        return None;
    }
    // A 64-bit hash modulo at most MAX_WORKERS: the bias is below 2^-56.
    Some((flow_hash(key, hk) % u64::from(workers)) as u32)
}

/// The 36-byte message as SipHash reads it: four little-endian 8-byte
/// words and the last block (4 bytes of ports, the length in the top byte).
#[inline(always)]
fn flow_message(key: &FlowKey) -> ([u64; 4], u64) {
    let word = |a: &[u8; 16], i: usize| {
        u64::from_le_bytes([
            a[i],
            a[i + 1],
            a[i + 2],
            a[i + 3],
            a[i + 4],
            a[i + 5],
            a[i + 6],
            a[i + 7],
        ])
    };
    let words = [
        word(&key.src, 0),
        word(&key.src, 8),
        word(&key.dst, 0),
        word(&key.dst, 8),
    ];
    let [s0, s1] = key.src_port.to_be_bytes();
    let [d0, d1] = key.dst_port.to_be_bytes();
    let tail = u64::from(u32::from_le_bytes([s0, s1, d0, d1])) | (FLOW_MESSAGE_LEN << 56);
    (words, tail)
}

/// SipHash with `C` compression and `D` finalisation rounds over the
/// message `words` followed by its last block `tail` (the remaining bytes
/// and the length in the top byte, as the SipHash paper pads). Generic so
/// that the host tests can check SipHash-2-4 against the standard library.
#[inline(always)]
fn siphash<const C: usize, const D: usize>(hk: &FlowHashKey, words: &[u64; 4], tail: u64) -> u64 {
    let mut v = [
        hk.k0 ^ 0x736f_6d65_7073_6575,
        hk.k1 ^ 0x646f_7261_6e64_6f6d,
        hk.k0 ^ 0x6c79_6765_6e65_7261,
        hk.k1 ^ 0x7465_6462_7974_6573,
    ];
    // Five blocks written out and constant round counts: LLVM unrolls
    // everything, the verifier sees straight-line code.
    sip_block::<C>(&mut v, words[0]);
    sip_block::<C>(&mut v, words[1]);
    sip_block::<C>(&mut v, words[2]);
    sip_block::<C>(&mut v, words[3]);
    sip_block::<C>(&mut v, tail);
    v[2] ^= 0xff;
    for _ in 0..D {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[inline(always)]
fn sip_block<const C: usize>(v: &mut [u64; 4], m: u64) {
    v[3] ^= m;
    for _ in 0..C {
        sip_round(v);
    }
    v[0] ^= m;
}

#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

#[cfg(test)]
mod tests;
