//! Why the remote tier could not be opened, attached or reached: one type
//! for the tier, each variant naming the key, file or URL it is about.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::MIN_SECRET;

/// Why the Redis tier could not be opened or attached, or did not answer.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// `cache.remote.secret` could not be read.
    #[error("cache.remote.secret {}: {source}", path.display())]
    SecretRead {
        /// The secret file.
        path: PathBuf,
        /// The read's error.
        source: io::Error,
    },
    /// `cache.remote.secret` is too short to derive keys from.
    #[error(
        "cache.remote.secret {}: {len} bytes; the secret needs at least {MIN_SECRET}",
        path.display()
    )]
    SecretShort {
        /// The secret file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// `cache.remote.ca` could not be read.
    #[error("cache.remote.ca {}: {source}", path.display())]
    CaRead {
        /// The CA file.
        path: PathBuf,
        /// The read's error.
        source: io::Error,
    },
    /// `cache.remote` is not a URL the client takes (the reason names it,
    /// without its password).
    #[error("cache.remote {0}")]
    Url(String),
    /// The Redis client refused the URL (TLS set-up, scheme).
    #[error("cache.remote {url}: {source}")]
    Client {
        /// The URL, without its password.
        url: String,
        /// The client's error.
        source: redis::RedisError,
    },
    /// What the tier's thread needs from the OS (eventfd, runtime, thread).
    #[error("cache.remote: {what}: {source}")]
    Os {
        /// What was being made.
        what: &'static str,
        /// The OS's error.
        source: io::Error,
    },
    /// No issuer number could be drawn.
    #[error("cache.remote: the random generator failed")]
    Random,
    /// The cache has a remote tier already.
    #[error("cache.remote: a remote tier is attached already")]
    AlreadyAttached,
    /// The tier's thread has stopped.
    #[error("the Redis thread has stopped")]
    Stopped,
    /// Redis answered nothing within the wait.
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
    /// Redis is not connected, or refused the command.
    #[error("{0}")]
    Redis(String),
}
