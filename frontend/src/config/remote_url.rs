//! The values of `cache.remote` (a Redis URL, its password never shown)
//! and `cache.remote.secret`, and the parsing of Redis URLs into the
//! client's connection settings (used by the remote tier's client too).

use std::path::PathBuf;

use super::ConfigValue;

/// Scheme of a Redis Cluster: `redis+cluster://[[USER]:PASS@]HOST:PORT[,HOST:PORT...]`.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// `cache.remote`: a `redis://`, `rediss://` (TLS), `redis+unix://` or
/// `redis+cluster://` URL, or empty = off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteUrl(pub Option<String>);

impl ConfigValue for RemoteUrl {
    const KIND: &'static str =
        "redis[s]://[USER:PASS@]HOST:PORT[/DB], redis+unix:///PATH, redis+cluster://HOST:PORT[,HOST:PORT...] or empty";
    fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Ok(RemoteUrl(None));
        }
        if raw.starts_with(CLUSTER_SCHEME) {
            return cluster_nodes(raw).map(|_| RemoteUrl(Some(raw.to_string())));
        }
        connection_info(raw).map(|_| RemoteUrl(Some(raw.to_string())))
    }
    fn render(&self) -> String {
        // `sysctl -a` and logs never show the password.
        self.0.as_deref().map(redact).unwrap_or_default()
    }
}

/// `cache.remote.secret`: `file:PATH` or empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteSecret(pub Option<PathBuf>);

impl ConfigValue for RemoteSecret {
    const KIND: &'static str = "file:PATH or empty";
    fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Ok(RemoteSecret(None));
        }
        match raw.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(RemoteSecret(Some(PathBuf::from(path)))),
            _ => Err(format!("{raw:?} is not file:PATH")),
        }
    }
    fn render(&self) -> String {
        self.0
            .as_ref()
            .map(|p| format!("file:{}", p.display()))
            .unwrap_or_default()
    }
}

/// Parses a URL into the client's connection settings (TCP_NODELAY on, no
/// client-name round trips at connect).
pub(crate) fn connection_info(url: &str) -> Result<redis::ConnectionInfo, String> {
    use redis::IntoConnectionInfo;
    let info = hash_in_userinfo_encoded(url)
        .as_ref()
        .into_connection_info()
        .map_err(|e| format!("{}: {e}", redact(url)))?;
    let tcp = redis::io::tcp::TcpSettings::default().set_nodelay(true);
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    Ok(info.set_tcp_settings(tcp).set_redis_settings(settings))
}

/// `url` with each `#` of its user and password written `%23`: a URL
/// parser would take a `#` for the start of a fragment (a Redis URL has
/// none), and the client decodes `%23` back, so `redis://:pa#ss@h:6379`
/// authenticates with `pa#ss`.
fn hash_in_userinfo_encoded(url: &str) -> std::borrow::Cow<'_, str> {
    let start = url.find("://").map_or(0, |i| i + 3);
    match url.rfind('@') {
        Some(at) if at > start && url[start..at].contains('#') => std::borrow::Cow::Owned(format!(
            "{}{}{}",
            &url[..start],
            url[start..at].replace('#', "%23"),
            &url[at..]
        )),
        _ => std::borrow::Cow::Borrowed(url),
    }
}

/// The seed nodes of a `redis+cluster://` URL, each as a `redis://` one (the
/// credentials, if any, apply to every node; no database: a cluster has one).
pub(crate) fn cluster_nodes(url: &str) -> Result<Vec<redis::ConnectionInfo>, String> {
    let rest = url
        .strip_prefix(CLUSTER_SCHEME)
        .ok_or_else(|| format!("{}: not {CLUSTER_SCHEME}", redact(url)))?;
    let (auth, hosts) = match rest.rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    };
    let hosts = hosts.strip_suffix('/').unwrap_or(hosts);
    let mut nodes = Vec::new();
    for host in hosts.split(',') {
        if host.is_empty() || host.contains('/') || host.contains('?') {
            return Err(format!(
                "{}: expected {CLUSTER_SCHEME}HOST:PORT[,HOST:PORT...] (no database, no options)",
                redact(url)
            ));
        }
        nodes.push(connection_info(&format!("redis://{auth}{host}"))?);
    }
    Ok(nodes)
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}
