//! `tlsfront check`: reads and verifies everything `run` would (the config,
//! certificates and their keys, CA and secret files, the shared paths, the
//! user to become) without binding a port, opening a shared file or
//! talking to Redis, and names every problem, not only the first. With
//! `process.user` it also warns of the files a reload would re-read, and
//! the `unix:` upstreams it would connect to, as that user and could not.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::config::{
    Config, ConfigError, ConfigWarning, KeySourceSpec, Loaded, Steering, Tls13Mode, Upstream,
    UpstreamServer,
};
use crate::tickets::KeySource;
use crate::tls::{self, TlsError};
use crate::user_access::{Access, Identity};

/// What [`check`] found.
#[derive(Debug)]
pub struct Checked {
    /// What `run` accepts but deserves a word: old key names, files a
    /// reload after the privilege drop could not read.
    pub warnings: Vec<Warning>,
    /// `Ok`: a one-line summary; `Err`: every problem, located at the
    /// file's line or the `-o` that set the key to blame where there is one.
    pub outcome: Result<String, Vec<ConfigError>>,
}

/// Something `run` would accept that an operator should still hear of.
#[derive(Debug, thiserror::Error)]
pub enum Warning {
    /// A renamed key used under its old name.
    #[error("{0}")]
    Renamed(ConfigWarning),
    /// A file or socket `process.user` could not use after the drop,
    /// located where its key was set.
    #[error("{0}")]
    AfterTheDrop(ConfigError),
}

/// Checks the configuration `file` + `overrides` would give `run`.
pub fn check(file: Option<&Path>, overrides: &[String]) -> Checked {
    let mut loaded = Loaded::read(file, overrides);
    let certificates = check_certificates(&mut loaded);
    check_files(&mut loaded);
    check_paths(&mut loaded);
    check_system(&mut loaded);
    let mut warnings: Vec<Warning> = std::mem::take(&mut loaded.warnings)
        .into_iter()
        .map(Warning::Renamed)
        .collect();
    warnings.extend(
        after_the_drop(&loaded, file)
            .into_iter()
            .map(Warning::AfterTheDrop),
    );
    if !loaded.problems.is_empty() {
        return Checked {
            warnings,
            outcome: Err(loaded.problems),
        };
    }
    let c = &loaded.config;
    let source = match file {
        Some(p) => p.display().to_string(),
        None => "built-in defaults".to_string(),
    };
    let outcome = Ok(format!(
        "{source}: OK: {} keys set, {certificates} certificate(s) ({} by SNI), listen {}, upstream {}",
        loaded.origins.len(),
        c.sni.len(),
        crate::config::ConfigValue::render(&c.listen),
        crate::config::ConfigValue::render(&c.upstream),
    ));
    Checked { warnings, outcome }
}

/// With `process.user`: every file a reload re-reads that the user could
/// not read, and every `unix:` upstream it could not connect to (`run`
/// reads the files at start as the starting user, so only later does it
/// fail: a refused reload, a failed client).
fn after_the_drop(loaded: &Loaded, file: Option<&Path>) -> Vec<ConfigError> {
    let c = &loaded.config;
    let Some(name) = &c.process_user.0 else {
        return Vec::new();
    };
    // An unknown user is a problem of its own (`check_system`).
    let Ok(Some(user)) = nix::unistd::User::from_name(name) else {
        return Vec::new();
    };
    let who = match Identity::of(&user) {
        Ok(who) => who,
        Err(reason) => return vec![loaded.locate("process.user", reason)],
    };
    let mut files: Vec<(String, std::path::PathBuf, Access)> = Vec::new();
    if let Some(file) = file {
        files.push(("the config file".into(), file.to_path_buf(), Access::Read));
    }
    if let (true, Tls13Mode::Stateless, KeySourceSpec::File(path)) =
        (c.tickets_enabled, c.tls13_mode, &c.ticket_source)
    {
        files.push(("tickets.key_source".into(), path.clone(), Access::Read));
    }
    let mut read = |key: String, path: &Option<std::path::PathBuf>| {
        if let Some(path) = path {
            files.push((key, path.clone(), Access::Read));
        }
    };
    read("tls.cert".into(), &c.cert.0);
    read("tls.key".into(), &c.key.0);
    read("tls.ocsp".into(), &c.ocsp.0);
    if c.client_auth != crate::config::ClientAuth::None {
        read("tls.client_ca".into(), &c.client_ca.0);
    }
    for (name, sni) in &c.sni {
        read(format!("tls.sni.{name}.cert"), &sni.cert);
        read(format!("tls.sni.{name}.key"), &sni.key);
        read(format!("tls.sni.{name}.ocsp"), &sni.ocsp);
    }
    let mut sockets = |key: String, upstream: Option<&Upstream>| {
        if let Some(Upstream::Servers(servers)) = upstream {
            for server in servers {
                if let UpstreamServer::Unix(path) = server {
                    files.push((key.clone(), path.clone(), Access::Write));
                }
            }
        }
    };
    sockets("upstream.addr".into(), Some(&c.upstream));
    for (name, sni) in &c.sni {
        sockets(format!("tls.sni.{name}.upstream"), sni.upstream.as_ref());
    }
    files
        .into_iter()
        .filter_map(|(key, path, access)| {
            let refused = who.may(&path, access).err()?;
            let consequence = match access {
                Access::Read => "a reload after the privilege drop would be refused",
                Access::Write => "connections to this upstream would fail after the privilege drop",
            };
            Some(loaded.locate(&key, format!("{refused}: {consequence} (process.user)")))
        })
        .collect()
}

/// Loads every certificate with its key, as `run` would; a failure is
/// blamed on the `.cert` key when the certificate is unreadable, else on
/// the `.key` key (an unreadable key, or one of another certificate).
/// Returns how many pairs loaded.
fn check_certificates(loaded: &mut Loaded) -> usize {
    let provider = tls::provider();
    let c = &loaded.config;
    let mut pairs = Vec::new();
    if let (Some(cert), Some(key)) = (&c.cert.0, &c.key.0) {
        let ocsp = c.ocsp.0.clone().map(|p| ("tls.ocsp".to_string(), p));
        pairs.push((
            "tls.cert".to_string(),
            "tls.key".to_string(),
            cert.clone(),
            key.clone(),
            ocsp,
        ));
    }
    for (name, sni) in &c.sni {
        if let (Some(cert), Some(key)) = (&sni.cert, &sni.key) {
            let ocsp = sni
                .ocsp
                .clone()
                .map(|p| (format!("tls.sni.{name}.ocsp"), p));
            pairs.push((
                format!("tls.sni.{name}.cert"),
                format!("tls.sni.{name}.key"),
                cert.clone(),
                key.clone(),
                ocsp,
            ));
        }
    }
    let mut good = 0;
    for (cert_key, key_key, cert, key, ocsp) in pairs {
        match tls::load_certified_key(&cert, &key, &provider) {
            Ok(certified) => {
                good += 1;
                // `run` staples only a response that matches and is current
                // (and warns otherwise); `check` names the one it would not.
                if let Some((ocsp_key, path)) = ocsp {
                    if let Err(e) =
                        crate::ocsp::load(&path, &certified.cert, std::time::SystemTime::now())
                    {
                        let problem =
                            loaded.locate(&ocsp_key, format!("{e}: run would not staple it"));
                        loaded.problems.push(problem);
                    }
                }
            }
            Err(e) => {
                let blame = match e {
                    TlsError::Pem {
                        what: "certificate",
                        ..
                    } => &cert_key,
                    _ => &key_key,
                };
                let problem = loaded.locate(blame, e.to_string());
                loaded.problems.push(problem);
            }
        }
    }
    good
}

/// The CA files of `cache.remote.ca` and `tls.client_ca` and the secrets of
/// `tickets.key_source` and `cache.remote.secret`, read as `run` reads them.
fn check_files(loaded: &mut Loaded) {
    let c = &loaded.config;
    let mut found: Vec<(&str, String)> = Vec::new();
    if let Some(ca) = &c.cache_remote_ca.0 {
        if let Err(reason) = read_ca(ca) {
            found.push(("cache.remote.ca", reason));
        }
    }
    if c.client_auth != crate::config::ClientAuth::None && c.client_ca.0.is_some() {
        if let Err(e) = crate::client_auth::setup(c, &tls::provider()) {
            found.push(("tls.client_ca", e.to_string()));
        }
    }
    let ring_used = c.tickets_enabled && c.tls13_mode == Tls13Mode::Stateless;
    if let (true, KeySourceSpec::File(path)) = (ring_used, &c.ticket_source) {
        if let Err(e) = KeySource::from_file(path) {
            found.push(("tickets.key_source", e.to_string()));
        }
    }
    if let Some(path) = &c.cache_remote_secret.0 {
        if let Err(reason) = crate::session_cache::remote::Keys::from_file(path) {
            found.push(("cache.remote.secret", reason.to_string()));
        }
    }
    for (key, reason) in found {
        let problem = loaded.locate(key, reason);
        loaded.problems.push(problem);
    }
}

/// At least one PEM certificate in `path`.
fn read_ca(path: &Path) -> Result<(), String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e:?}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE block found", path.display()));
    }
    Ok(())
}

/// The shared files `run` would make or reuse: each must be writable if it
/// exists, else its directory must be (or, for the private directory of
/// the `auto` paths that `run` makes, the directory that would hold it).
fn check_paths(loaded: &mut Loaded) {
    let c = &loaded.config;
    let mut paths = vec![("control.socket", c.control_socket_path())];
    if c.cache_enabled {
        paths.push(("cache.path", c.cache_path()));
    }
    if c.tickets_enabled && c.tls13_mode == Tls13Mode::Stateless {
        paths.push(("tickets.path", c.tickets_path()));
    }
    let runtime_dir = c.runtime_dir();
    let mut found = Vec::new();
    for (key, path) in paths {
        if let Err(reason) = writable(&path, &runtime_dir) {
            found.push((key, format!("{}: {reason}", path.display())));
        }
    }
    for (key, reason) in found {
        let problem = loaded.locate(key, reason);
        loaded.problems.push(problem);
    }
}

/// Whether `path` can be written or made, without making anything.
fn writable(path: &Path, runtime_dir: &Path) -> Result<(), String> {
    use nix::unistd::{access, AccessFlags};
    if path.exists() {
        return access(path, AccessFlags::W_OK).map_err(|e| format!("not writable: {e}"));
    }
    let dir = match path.parent() {
        Some(d) if d.as_os_str().is_empty() => Path::new("."),
        Some(d) => d,
        None => return Err("has no directory".to_string()),
    };
    // `run` makes the private directory itself, in its parent.
    let dir = match (dir == runtime_dir && !dir.exists(), dir.parent()) {
        (true, Some(parent)) => parent,
        _ => dir,
    };
    if !dir.is_dir() {
        return Err(format!("directory {} does not exist", dir.display()));
    }
    access(dir, AccessFlags::W_OK | AccessFlags::X_OK)
        .map_err(|e| format!("directory {} is not writable: {e}", dir.display()))
}

/// What the system must have: `process.user`, the XDP interface.
fn check_system(loaded: &mut Loaded) {
    let c: &Config = &loaded.config;
    let mut found = Vec::new();
    if let Some(user) = &c.process_user.0 {
        match nix::unistd::User::from_name(user) {
            Ok(Some(_)) => {}
            Ok(None) => found.push(("process.user", format!("no such user {user:?}"))),
            Err(e) => found.push(("process.user", format!("looking up {user:?}: {e}"))),
        }
    }
    if let (Steering::Xdp, Some(interface)) = (c.steering, &c.xdp_interface.0) {
        if !Path::new("/sys/class/net").join(interface).exists() {
            found.push(("net.xdp.interface", format!("no interface {interface:?}")));
        }
    }
    for (key, reason) in found {
        let problem = loaded.locate(key, reason);
        loaded.problems.push(problem);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_of_a_shared_file_is_named() {
        let reason = writable(
            Path::new("/nonexistent-dir/x.cache"),
            Path::new("/dev/shm/t"),
        )
        .expect_err("no directory");
        assert!(reason.contains("/nonexistent-dir"), "{reason}");
    }

    #[test]
    fn the_private_directory_run_would_make_is_not_required_to_exist() {
        let dir = tempfile::tempdir().expect("temp dir");
        let private = dir.path().join("tlsfront-0");
        writable(&private.join("8443.cache"), &private).expect("its parent is writable");
        assert!(!private.exists(), "check made the directory");
    }
}
