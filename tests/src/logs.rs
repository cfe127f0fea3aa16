//! The log lines tlsfront writes on stderr, parsed ([`log_lines`]), and the
//! access line of one client ([`access_line_for`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use crate::process::wait_until;
use crate::CapturesOutput;

/// One line of tlsfront's stderr log (tracing's default format:
/// `TIME LEVEL target: message key=value ...`).
#[derive(Debug, Clone)]
pub struct LogLine {
    pub level: String,
    pub target: String,
    pub message: String,
    /// `key=value` fields, with the quotes of string values removed.
    pub fields: BTreeMap<String, String>,
    pub raw: String,
}

impl LogLine {
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
}

/// Splits `message k=v k="v w" ...` into the message and the fields. The
/// message is what precedes the first ` key=` (keys are identifiers).
fn split_fields(rest: &str) -> (String, BTreeMap<String, String>) {
    let mut fields = BTreeMap::new();
    let bytes = rest.as_bytes();
    // Find the start of the first field: a space followed by ident '='.
    let is_key_start = |i: usize| -> Option<usize> {
        let mut j = i;
        while j < bytes.len()
            && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_' || bytes[j] == b'.')
        {
            j += 1;
        }
        (j > i && j < bytes.len() && bytes[j] == b'=').then_some(j)
    };
    let mut first = None;
    for i in 0..bytes.len() {
        if (i == 0 || bytes[i - 1] == b' ') && is_key_start(i).is_some() {
            first = Some(i);
            break;
        }
    }
    let Some(mut i) = first else {
        return (rest.trim().to_string(), fields);
    };
    let message = rest[..i].trim().to_string();
    while i < bytes.len() {
        let Some(eq) = is_key_start(i) else { break };
        let key = rest[i..eq].to_string();
        let mut j = eq + 1;
        let value = if j < bytes.len() && bytes[j] == b'"' {
            // Quoted (Debug-formatted) string: up to the next unescaped quote.
            let mut v = Vec::new();
            j += 1;
            while j < bytes.len() && bytes[j] != b'"' {
                if bytes[j] == b'\\' && j + 1 < bytes.len() {
                    j += 1;
                }
                v.push(bytes[j]);
                j += 1;
            }
            j += 1;
            String::from_utf8_lossy(&v).into_owned()
        } else {
            let start = j;
            while j < bytes.len() && bytes[j] != b' ' {
                j += 1;
            }
            rest[start..j].to_string()
        };
        fields.insert(key, value);
        while j < bytes.len() && bytes[j] == b' ' {
            j += 1;
        }
        i = j;
    }
    (message, fields)
}

/// The log lines of `stderr` (lines that are not `TIME LEVEL target: ...`
/// are skipped).
pub fn log_lines(stderr: &str) -> Vec<LogLine> {
    const LEVELS: [&str; 5] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"];
    stderr
        .lines()
        .filter_map(|raw| {
            let mut words = raw.split_whitespace();
            let _time = words.next()?;
            let level = words.next()?;
            if !LEVELS.contains(&level) {
                return None;
            }
            let after_level = &raw[raw.find(level)? + level.len()..];
            let after_level = after_level.trim_start();
            let (target, rest) = after_level.split_once(": ")?;
            let (message, fields) = split_fields(rest);
            Some(LogLine {
                level: level.to_string(),
                target: target.to_string(),
                message,
                fields,
                raw: raw.to_string(),
            })
        })
        .collect()
}

/// The one access log line (`log.access = 1`) of the connection from
/// `peer`, waited for up to 5 s.
pub fn access_line_for(fe: &crate::Frontend, peer: SocketAddr) -> LogLine {
    let want = peer.to_string();
    let find = || -> Vec<LogLine> {
        log_lines(&fe.stderr())
            .into_iter()
            .filter(|l| l.target == "tlsfront::access" && l.field("client") == Some(want.as_str()))
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(5), || !find().is_empty()),
        "no access line for {peer}\n{}",
        fe.output()
    );
    thread::sleep(Duration::from_millis(100));
    let lines = find();
    assert_eq!(lines.len(), 1, "access lines for {peer}: {lines:#?}");
    lines.into_iter().next().unwrap()
}

#[cfg(test)]
mod self_tests {
    use super::*;

    #[test]
    fn log_lines_split_message_and_fields() {
        let l = log_lines(
            "2026-01-01T00:00:00.000001Z  INFO tlsfront::access: access client=127.0.0.1:5 sni=\"a b\" bytes_in=3 worker=1\nnot a log line\n",
        );
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].level, "INFO");
        assert_eq!(l[0].target, "tlsfront::access");
        assert_eq!(l[0].message, "access");
        assert_eq!(l[0].field("client"), Some("127.0.0.1:5"));
        assert_eq!(l[0].field("sni"), Some("a b"));
        assert_eq!(l[0].field("worker"), Some("1"));
    }
}
