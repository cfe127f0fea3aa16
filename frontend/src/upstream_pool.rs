//! Which upstream server a connection goes to: round robin over the servers
//! of `upstream.addr` (or of `tls.sni.<name>.upstream` for that name),
//! skipping for `upstream.down_time` a server whose connect failed or timed
//! out (passive health, as nginx's `max_fails`/`fail_timeout` and HAProxy's
//! `observe layer4`). The connection that met the failure tries the next
//! server at once, so one dead server costs no client.
//!
//! Shared by every worker of the process (one failure is seen by all); the
//! only shared writes are one round-robin counter and, on a failure, one
//! timestamp per server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::SockAddr;

use crate::config::{Config, Upstream, UpstreamServer};

/// The servers of one upstream list.
#[derive(Debug)]
pub struct Pool {
    servers: Vec<(UpstreamServer, SockAddr)>,
    next: AtomicUsize,
    /// Per server: until when it is skipped, in ms since `epoch` (0: up).
    down_until: Vec<AtomicU64>,
    epoch: Instant,
}

impl Pool {
    /// A pool over `servers` (at least one).
    pub fn new(servers: &[UpstreamServer]) -> std::io::Result<Pool> {
        let resolved = servers
            .iter()
            .map(|s| {
                let addr = match s {
                    UpstreamServer::Tcp(a) => SockAddr::from(*a),
                    UpstreamServer::Unix(p) => SockAddr::unix(p)?,
                };
                Ok((s.clone(), addr))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Pool {
            down_until: servers.iter().map(|_| AtomicU64::new(0)).collect(),
            servers: resolved,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
        })
    }

    /// Server `i`: its configured form (for logs) and address.
    pub fn server(&self, i: usize) -> (&UpstreamServer, &SockAddr) {
        let (s, a) = &self.servers[i];
        (s, a)
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// The next server to try at `now`, in round-robin order, that is not
    /// in `tried` (a bit per server, for the servers of a pool of up to 64;
    /// larger pools try their first 64 alternatives): a server that is up
    /// if there is one, else one that is down (better a server marked down
    /// than no service). `None`: every server was tried.
    pub fn pick(&self, now: Instant, tried: u64) -> Option<usize> {
        let n = self.servers.len();
        if n == 1 {
            // The usual case: no round robin, so no write to the counter
            // every worker shares.
            return (tried & 1 == 0).then_some(0);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now_ms = self.millis(now);
        let untried = |i: usize| i >= 64 || tried & (1 << i) == 0;
        let order = (0..n).map(|k| (start + k) % n).filter(|&i| untried(i));
        let mut fallback = None;
        for i in order {
            if self.down_until[i].load(Ordering::Relaxed) <= now_ms {
                return Some(i);
            }
            fallback.get_or_insert(i);
        }
        fallback
    }

    /// Server `i` failed a connect at `now`: skip it for `down`.
    pub fn mark_down(&self, i: usize, now: Instant, down: Duration) {
        if let Some(d) = self.down_until.get(i) {
            d.store(self.millis(now + down), Ordering::Relaxed);
        }
    }
}

/// Every pool of a configuration: `upstream.addr` and each name's own.
#[derive(Debug)]
pub struct Pools {
    default: Arc<Pool>,
    by_name: HashMap<String, Arc<Pool>>,
    /// What they were built from, to keep them (and their health) when a
    /// change of another key rebuilds nothing.
    built_from: (Upstream, Vec<(String, Upstream)>),
}

impl Pools {
    /// The pools of `config`; `builtin` gives the built-in responder's
    /// address when `upstream.addr = builtin` (started on first use).
    pub fn new(
        config: &Config,
        builtin: impl Fn() -> std::io::Result<std::net::SocketAddr>,
    ) -> std::io::Result<Pools> {
        let built_from = Pools::source(config);
        let pool_of = |u: &Upstream| -> std::io::Result<Arc<Pool>> {
            let servers = match u {
                Upstream::Builtin => vec![UpstreamServer::Tcp(builtin()?)],
                Upstream::Servers(list) => list.clone(),
            };
            Ok(Arc::new(Pool::new(&servers)?))
        };
        let default = pool_of(&built_from.0)?;
        let by_name = built_from
            .1
            .iter()
            .map(|(name, u)| Ok((name.clone(), pool_of(u)?)))
            .collect::<std::io::Result<_>>()?;
        Ok(Pools {
            default,
            by_name,
            built_from,
        })
    }

    fn source(config: &Config) -> (Upstream, Vec<(String, Upstream)>) {
        let names = config
            .sni
            .iter()
            .filter_map(|(name, sni)| Some((name.clone(), sni.upstream.clone()?)))
            .collect();
        (config.upstream.clone(), names)
    }

    /// Whether `config` names the same servers as these pools.
    pub fn same_servers(&self, config: &Config) -> bool {
        self.built_from == Pools::source(config)
    }

    /// The pool for a connection to server name `sni`: the name's own
    /// (exact name first, then a `*.` wildcard of one label, as for
    /// certificates), else `upstream.addr`'s.
    pub fn for_name(&self, sni: Option<&str>) -> &Arc<Pool> {
        sni.and_then(|name| crate::server_name::lookup(&self.by_name, name))
            .unwrap_or(&self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: u16) -> Pool {
        let servers: Vec<_> = (0..n)
            .map(|i| UpstreamServer::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], 9000 + i))))
            .collect();
        Pool::new(&servers).expect("pool")
    }

    #[test]
    fn a_single_server_is_picked_until_it_was_tried() {
        let p = pool(1);
        let now = Instant::now();
        p.mark_down(0, now, Duration::from_secs(10));
        assert_eq!(p.pick(now, 0), Some(0), "down, but the only one");
        assert_eq!(p.pick(now, 1), None);
    }

    #[test]
    fn servers_take_turns() {
        let p = pool(3);
        let now = Instant::now();
        let picks: Vec<_> = (0..6).map(|_| p.pick(now, 0).expect("a server")).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_server_marked_down_is_skipped_until_its_time_is_over() {
        let p = pool(3);
        let now = Instant::now();
        p.mark_down(1, now, Duration::from_secs(10));
        let picks: Vec<_> = (0..6).map(|_| p.pick(now, 0).expect("a server")).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        let later = now + Duration::from_secs(11);
        let picks: Vec<_> = (0..3)
            .map(|_| p.pick(later, 0).expect("a server"))
            .collect();
        assert!(picks.contains(&1), "{picks:?}");
    }

    #[test]
    fn a_retry_goes_to_a_server_not_tried_yet_and_ends_when_all_were() {
        let p = pool(3);
        let now = Instant::now();
        let first = p.pick(now, 0).expect("first");
        let second = p.pick(now, 1 << first).expect("second");
        assert_ne!(first, second);
        let third = p.pick(now, 1 << first | 1 << second).expect("third");
        assert!(third != first && third != second);
        assert_eq!(p.pick(now, 0b111), None);
    }

    #[test]
    fn when_every_server_is_down_they_are_tried_anyway() {
        let p = pool(2);
        let now = Instant::now();
        p.mark_down(0, now, Duration::from_secs(10));
        p.mark_down(1, now, Duration::from_secs(10));
        let a = p.pick(now, 0).expect("a down server rather than none");
        let b = p.pick(now, 1 << a).expect("and then the other");
        assert_ne!(a, b);
        assert_eq!(p.pick(now, 1 << a | 1 << b), None);
    }
}
