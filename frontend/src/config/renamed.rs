//! Keys that were renamed, still accepted under their old names.
//!
//! The duration keys used to carry their unit in their name
//! (`cache.timeout_secs`) while accepting other units (`1h`). They are now
//! named for what they are (`cache.timeout`) and take nginx's time syntax.
//! A config file written for an older tlsfront must keep working across
//! an upgrade (`--takeover`, reload), so every old name is an alias of its
//! new key, everywhere a key is accepted, with its old reading of a bare
//! number; each use is reported as a warning naming the new key. [`RENAMED`]
//! is the only list of them: parsing, `sysctl` and the "Renamed keys" table
//! of `docs/config.md` are derived from it.

use super::{ConfigValue, Duration};

/// What a bare number (no unit) meant under the old name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareUnit {
    /// Seconds: the same as the new key reads it.
    Seconds,
    /// Milliseconds: the new key would read it as seconds, so a bare
    /// number given under the old name gets `ms` appended.
    Milliseconds,
}

/// One renamed key.
#[derive(Debug, Clone, Copy)]
pub struct Renamed {
    /// The name older releases used.
    pub old: &'static str,
    /// The key (of the table `KEYS`) it is now.
    pub new: &'static str,
    /// What a bare number meant under `old`.
    pub bare: BareUnit,
}

/// Every renamed key, old name first.
pub const RENAMED: &[Renamed] = &[
    renamed(
        "worker.drain_secs",
        "worker.drain_timeout",
        BareUnit::Seconds,
    ),
    renamed(
        "upstream.down_secs",
        "upstream.down_time",
        BareUnit::Seconds,
    ),
    renamed(
        "limits.handshake_timeout_secs",
        "limits.handshake_timeout",
        BareUnit::Seconds,
    ),
    renamed(
        "limits.idle_timeout_secs",
        "limits.idle_timeout",
        BareUnit::Seconds,
    ),
    renamed("cache.timeout_secs", "cache.timeout", BareUnit::Seconds),
    renamed(
        "cache.remote.timeout_ms",
        "cache.remote.timeout",
        BareUnit::Milliseconds,
    ),
    renamed(
        "tickets.rotate_secs",
        "tickets.rotate_interval",
        BareUnit::Seconds,
    ),
];

const fn renamed(old: &'static str, new: &'static str, bare: BareUnit) -> Renamed {
    Renamed { old, new, bare }
}

/// The entry of the renamed-keys table whose old name is `key`.
pub fn renamed_key(key: &str) -> Option<&'static Renamed> {
    RENAMED.iter().find(|r| r.old == key)
}

impl Renamed {
    /// `raw`, given under the old name, as the new key reads the same
    /// value: a bare number of milliseconds gets its unit.
    pub fn new_value(&self, raw: &str) -> String {
        let raw = raw.trim();
        let bare = !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit());
        match self.bare {
            BareUnit::Milliseconds if bare => format!("{raw}ms"),
            _ => raw.to_string(),
        }
    }

    /// `value`, as the new key renders it, the way the old name showed it
    /// (`cache.remote.timeout_ms = 20`), so that scripts reading the old
    /// name read what they used to.
    pub fn old_value(&self, value: &str) -> String {
        match (self.bare, Duration::parse(value)) {
            (BareUnit::Milliseconds, Ok(d)) => d.0.as_millis().to_string(),
            _ => value.to_string(),
        }
    }

    /// The warning a use of the old name gets.
    pub fn warning(&self) -> String {
        format!(
            "key '{}' is renamed '{}': the old name still works, but may go in a future \
             release; {}",
            self.old,
            self.new,
            self.bare_note()
        )
    }

    /// How a bare number under the old name is read, for the warning and
    /// the reference page.
    pub fn bare_note(&self) -> &'static str {
        match self.bare {
            BareUnit::Seconds => "a bare number is seconds under both names",
            BareUnit::Milliseconds => {
                "a bare number is milliseconds under the old name, seconds under the new one \
                 (write 20ms)"
            }
        }
    }
}
