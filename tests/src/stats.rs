//! `tlsfront stats --json`, parsed: the counters of each worker and the total.

/// Counters of one worker, or the total.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub worker: Option<u64>,
    pub cpu: Option<u64>,
    pub accepted: u64,
    pub handshakes: u64,
    pub handshake_errors: u64,
    pub active: u64,
    pub upstream_errors: u64,
    pub bytes_client_to_upstream: u64,
    pub bytes_upstream_to_client: u64,
    /// Every unsigned integer field of the JSON object, by name, including
    /// those without a field above (`resumed_tls12`, `cache_hits`, ...).
    pub all: std::collections::BTreeMap<String, u64>,
}

/// Output of `tlsfront stats --json`.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub workers: Vec<Counters>,
    pub total: Counters,
}

impl Counters {
    fn from_json(v: &serde_json::Value) -> Result<Counters, String> {
        let obj = v.as_object().ok_or("counters are not an object")?;
        let num = |k: &str| -> Result<u64, String> {
            obj.get(k)
                .ok_or_else(|| format!("missing field {k:?}"))?
                .as_u64()
                .ok_or_else(|| format!("field {k:?} is not an unsigned integer"))
        };
        Ok(Counters {
            worker: obj.get("worker").and_then(|x| x.as_u64()),
            cpu: obj.get("cpu").and_then(|x| x.as_u64()),
            accepted: num("accepted")?,
            handshakes: num("handshakes")?,
            handshake_errors: num("handshake_errors")?,
            active: num("active")?,
            upstream_errors: num("upstream_errors")?,
            bytes_client_to_upstream: num("bytes_client_to_upstream")?,
            bytes_upstream_to_client: num("bytes_upstream_to_client")?,
            all: obj
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .collect(),
        })
    }

    /// The counter `name` (e.g. `resumed_tls12`, `cache_hits`); panics, listing
    /// the counters present, if the JSON had no such field.
    pub fn get(&self, name: &str) -> u64 {
        match self.all.get(name) {
            Some(v) => *v,
            None => panic!(
                "stats have no counter {name:?}; present: {:?}",
                self.all.keys().collect::<Vec<_>>()
            ),
        }
    }
}

impl Stats {
    pub fn parse(text: &str) -> Result<Stats, String> {
        let v: serde_json::Value = serde_json::from_str(text.trim()).map_err(|e| e.to_string())?;
        let workers = v
            .get("workers")
            .and_then(|w| w.as_array())
            .ok_or("missing array \"workers\"")?
            .iter()
            .map(Counters::from_json)
            .collect::<Result<Vec<_>, _>>()?;
        let total = Counters::from_json(v.get("total").ok_or("missing object \"total\"")?)?;
        Ok(Stats { workers, total })
    }

    /// Counter `name` of each worker, by worker index (see [`Counters::get`]).
    pub fn per_worker(&self, name: &str) -> Vec<u64> {
        self.workers.iter().map(|w| w.get(name)).collect()
    }
}

/// Per-worker difference `after - before` of counter `name`.
pub fn worker_diff(before: &Stats, after: &Stats, name: &str) -> Vec<u64> {
    after
        .per_worker(name)
        .iter()
        .zip(before.per_worker(name))
        .map(|(a, b)| a - b)
        .collect()
}

/// The one worker whose `name` moved by exactly 1 between the two stats,
/// the others not at all.
#[track_caller]
pub fn single_worker(before: &Stats, after: &Stats, name: &str) -> usize {
    let d = worker_diff(before, after, name);
    assert_eq!(
        d.iter().sum::<u64>(),
        1,
        "{name} moved by {d:?} between two stats, expected one connection"
    );
    d.iter().position(|&x| x == 1).unwrap()
}
