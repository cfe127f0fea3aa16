//! How tlsfront reaches Redis: the client for `cache.remote` (one
//! multiplexed connection to a single server, or a Redis Cluster client
//! routing each key to its slot's node), with its TLS roots and timeouts.

use std::time::Duration;

use super::{RemoteError, RemoteSettings, CLUSTER_SCHEME};

/// Longest wait for a connection to Redis (the lookups waiting for it are
/// bounded by their own budget on the worker's side).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for the answer to a write.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the store is.
pub(super) enum Target {
    // Both boxed: built once per process, and the two clients differ in size.
    Single(Box<redis::Client>),
    Cluster(Box<redis::cluster::ClusterClient>),
}

impl Target {
    pub(super) fn new(settings: &RemoteSettings, budget: Duration) -> Result<Target, RemoteError> {
        let certs = match &settings.ca {
            Some(path) => Some(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(path).map_err(|source| RemoteError::CaRead {
                    path: path.clone(),
                    source,
                })?),
            }),
            None => None,
        };
        if settings.url.starts_with(CLUSTER_SCHEME) {
            let nodes = super::cluster_nodes(&settings.url).map_err(RemoteError::Url)?;
            let mut builder = redis::cluster::ClusterClient::builder(nodes)
                .retries(0)
                .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true))
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(budget.max(WRITE_TIMEOUT));
            if let Some(certs) = certs {
                builder = builder.certs(certs);
            }
            let client = builder.build().map_err(|source| RemoteError::Client {
                url: super::redact(&settings.url),
                source,
            })?;
            return Ok(Target::Cluster(Box::new(client)));
        }
        let info = super::connection_info(&settings.url).map_err(RemoteError::Url)?;
        let client = match certs {
            Some(certs) => redis::Client::build_with_tls(info, certs),
            None => redis::Client::open(info),
        }
        .map_err(|source| RemoteError::Client {
            url: super::redact(&settings.url),
            source,
        })?;
        Ok(Target::Single(Box::new(client)))
    }

    pub(super) async fn connect(&self) -> redis::RedisResult<Conn> {
        match self {
            Target::Single(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    // Each command is bounded by its own deadline instead.
                    .set_response_timeout(None);
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Conn::Single)
            }
            Target::Cluster(client) => client
                .get_async_connection()
                .await
                .map(|c| Conn::Cluster(Box::new(c))),
        }
    }
}

/// A connection every task may clone: commands share its pipeline.
#[derive(Clone)]
pub(super) enum Conn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(Box<redis::cluster_async::ClusterConnection>),
}

impl Conn {
    pub(super) async fn query<T: redis::FromRedisValue>(
        &mut self,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(&mut **c).await,
        }
    }
}

/// Whether the connection is unusable after `e` (rather than one command
/// refused, e.g. a wrong type or a MOVED the cluster client reports).
pub(super) fn broken(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error()
}
