//! The `tlsfront` command: `run`, `sysctl`, `stats`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tlsfront::config::{Config, ConfigValue, KeySourceSpec, Tls13Mode, Upstream, KEYS};
use tlsfront::metrics::{render_table, PerWorkerCounters, Stats};
use tlsfront::session_cache::{Opened, SessionCache};
use tlsfront::tickets::{KeySource, TicketKeyRing};
use tlsfront::tls::CertSource;
use tlsfront::{control, tls, upstream, worker};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
usage:
  tlsfront run    [-c FILE] [-o key=value]...   start the frontend
  tlsfront sysctl -a [-c FILE] [-o key=value]... print every key with its value
  tlsfront sysctl [-c FILE] [-o key=value]... KEY...  print these keys
  tlsfront stats  [-c FILE] [-o key=value]... [--socket PATH] [--json]
                                               counters of the running process
  tlsfront --version

With no -c, the embedded default runs: 127.0.0.1:8443, a self-signed
certificate for localhost, and a built-in HTTP responder as upstream.
Every key is listed by `tlsfront sysctl -a` and in docs/config.md.";

/// Exit code for a bad command line or configuration.
const EXIT_USAGE: u8 = 2;

struct Args {
    command: String,
    file: Option<PathBuf>,
    overrides: Vec<String>,
    all: bool,
    json: bool,
    socket: Option<PathBuf>,
    keys: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let command = it.next().ok_or("no command given")?;
    let mut args = Args {
        command,
        file: None,
        overrides: Vec::new(),
        all: false,
        json: false,
        socket: None,
        keys: Vec::new(),
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-c" | "--config" => args.file = Some(it.next().ok_or("-c needs a file")?.into()),
            "-o" => args.overrides.push(it.next().ok_or("-o needs key=value")?),
            "-a" | "--all" => args.all = true,
            "--json" => args.json = true,
            "--socket" => args.socket = Some(it.next().ok_or("--socket needs a path")?.into()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            _ => args.keys.push(arg),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let first = std::env::args().nth(1);
    match first.as_deref() {
        Some("--version" | "-V") => {
            println!("tlsfront {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some("--help" | "-h" | "help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tlsfront: {e}\n{USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let config = match Config::load(args.file.as_deref(), &args.overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tlsfront: error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let outcome = match args.command.as_str() {
        "run" => run(config),
        "sysctl" => sysctl(&config, &args),
        "stats" => stats(&config, &args),
        other => {
            eprintln!("tlsfront: unknown command {other:?}\n{USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tlsfront: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn sysctl(config: &Config, args: &Args) -> Result<(), String> {
    let mut out = String::new();
    if args.all {
        for (k, v) in config.entries() {
            out.push_str(&format!("{k} = {v}\n"));
        }
    } else if args.keys.is_empty() {
        return Err(format!("sysctl needs -a or a key\n{USAGE}"));
    } else {
        for key in &args.keys {
            let value = config.get(key).ok_or_else(|| {
                format!("unknown key '{key}' (see `tlsfront sysctl -a` or docs/config.md)")
            })?;
            out.push_str(&format!("{key} = {value}\n"));
        }
    }
    print!("{out}");
    Ok(())
}

fn stats(config: &Config, args: &Args) -> Result<(), String> {
    let path = args
        .socket
        .clone()
        .unwrap_or_else(|| config.control_socket_path());
    let json = control::query_stats(&path).map_err(|e| e.to_string())?;
    if args.json {
        println!("{json}");
    } else {
        print!("{}", render_table(&json));
    }
    Ok(())
}

fn run(config: Config) -> Result<(), String> {
    let filter = tracing_subscriber::filter::LevelFilter::from_level(config.log_level.as_tracing());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(filter)
        .with_ansi(false)
        .init();

    let count = config.workers.resolve();
    let cache = if config.cache_enabled {
        let path = config.cache_path();
        let (cache, opened) = SessionCache::open(
            &path,
            config.cache_size.0,
            config.cache_timeout.0.as_secs(),
            count,
        )
        .map_err(|e| format!("session cache {e}"))?;
        match &opened {
            Opened::Reused => {
                tracing::info!("session cache {}: reusing its sessions", path.display())
            }
            Opened::Created => tracing::info!("session cache {}: created", path.display()),
            Opened::Rebuilt(why) => tracing::warn!(
                "session cache {}: rebuilt, its sessions are lost: {why}",
                path.display()
            ),
        }
        Some((Arc::new(cache), opened))
    } else {
        None
    };
    let sessions = cache.as_ref().map(|(c, _)| Arc::clone(c));
    let ring = if config.tickets_enabled && config.tls13_mode == Tls13Mode::Stateless {
        let source = match &config.ticket_source {
            KeySourceSpec::Random => KeySource::Random,
            KeySourceSpec::File(p) => KeySource::from_file(p).map_err(|e| e.to_string())?,
        };
        let path = config.tickets_path();
        let (ring, opened) = TicketKeyRing::open(
            &path,
            config.ticket_keys as usize,
            config.ticket_rotate.0.as_secs(),
            source,
            count,
        )
        .map_err(|e| e.to_string())?;
        if let Opened::Rebuilt(why) = &opened {
            tracing::warn!(
                "ticket ring {}: rebuilt, earlier tickets are lost: {why}",
                path.display()
            );
        }
        Some((Arc::new(ring), opened))
    } else {
        None
    };
    let tickets = ring.as_ref().map(|(r, _)| Arc::clone(r));
    let (server_config, cert_source) =
        tls::server_config(&config, sessions.clone(), tickets.clone())
            .map_err(|e| e.to_string())?;
    let upstream_addr = match config.upstream {
        Upstream::Addr(addr) => addr,
        Upstream::Builtin => upstream::start_builtin()
            .map_err(|e| format!("starting the built-in upstream on 127.0.0.1: {e}"))?,
    };
    let listeners =
        worker::bind_listeners(config.listen, count, config.backlog).map_err(|e| e.to_string())?;
    let cpus = worker::plan_cpus(count, config.pin_cpus);
    let mut sources: Vec<Arc<dyn PerWorkerCounters>> = Vec::new();
    if let Some(c) = &sessions {
        sources.push(Arc::clone(c) as Arc<dyn PerWorkerCounters>);
    }
    if let Some(r) = &tickets {
        sources.push(Arc::clone(r) as Arc<dyn PerWorkerCounters>);
    }
    let stats = Arc::new(Stats::new(&cpus, sources));
    let socket = config.control_socket_path();
    control::serve(&socket, Arc::clone(&stats), config.clone()).map_err(|e| e.to_string())?;

    let settings = worker::WorkerSettings {
        tls: server_config,
        upstream: upstream_addr,
        connect_timeout: config.connect_timeout.0,
        buffer_size: usize::try_from(config.buffer_size.0).unwrap_or(usize::MAX),
    };
    let handles =
        worker::start(listeners, settings, Arc::clone(&stats)).map_err(|e| e.to_string())?;

    let cache_line = match &cache {
        Some((c, opened)) => format!(
            "{} ({} sessions, {}s; {})",
            c.path().display(),
            c.capacity(),
            config.cache_timeout.0.as_secs(),
            match opened {
                Opened::Reused => "sessions kept from before",
                Opened::Created => "new",
                Opened::Rebuilt(_) => "rebuilt",
            }
        ),
        None => "off".to_string(),
    };
    let tickets_line = match &ring {
        Some((r, opened)) => format!(
            "{} keys, rotated every {}s, {}, shared ring {} ({}); ticket lifetime {}s",
            config.ticket_keys,
            r.rotate_secs(),
            config.ticket_source.render(),
            r.path().display(),
            match opened {
                Opened::Reused => "keys kept from before",
                Opened::Created => "new",
                Opened::Rebuilt(_) => "rebuilt",
            },
            r.lifetime_secs()
        ),
        None if config.tls13_mode == Tls13Mode::Stateful => {
            "off: TLS 1.3 resumes statefully through the session cache, TLS 1.2 by session ID"
                .to_string()
        }
        None => "off".to_string(),
    };
    print_summary(
        &config,
        &cpus,
        &cert_source,
        upstream_addr,
        &socket,
        &[("session cache", cache_line), ("tickets", tickets_line)],
    );
    for handle in handles {
        if handle.join().is_err() {
            return Err("a worker thread panicked".into());
        }
    }
    Ok(())
}

fn print_summary(
    config: &Config,
    cpus: &[Option<usize>],
    cert: &CertSource,
    upstream_addr: std::net::SocketAddr,
    socket: &std::path::Path,
    resumption: &[(&str, String)],
) {
    let addr = config.listen;
    let versions = config.protocols.render().replace(',', ", ");
    let pinned: Vec<String> = cpus.iter().flatten().map(|c| c.to_string()).collect();
    let pinning = if pinned.is_empty() {
        "not pinned".to_string()
    } else {
        format!("pinned to CPUs {}", pinned.join(","))
    };
    let cert = match cert {
        CertSource::Files(p) => p.display().to_string(),
        CertSource::SelfSigned => "self-signed for localhost (generated at start)".to_string(),
    };
    let upstream = match config.upstream {
        Upstream::Builtin => format!("built-in HTTP responder on {upstream_addr}"),
        Upstream::Addr(a) => a.to_string(),
    };
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    let port = addr.port();
    let summary = format!(
        "tlsfront {version}
  listening on   {addr} (TLS {versions})
  workers        {count} ({pinning})
  steering       {steering} (kernel SO_REUSEPORT hash over the workers' listeners)
  certificate    {cert}
  upstream       {upstream}
{resumption}  control socket {socket}  (tlsfront stats -o control.socket={socket})
  {keys} keys in effect: tlsfront sysctl -a
try:
  curl -k https://{host}:{port}/
  openssl s_client -connect {host}:{port} -reconnect </dev/null
tlsfront: ready
",
        version = env!("CARGO_PKG_VERSION"),
        count = cpus.len(),
        steering = config.steering.render(),
        socket = socket.display(),
        keys = KEYS.len(),
        resumption = resumption
            .iter()
            .map(|(k, v)| format!("  {k:<14} {v}\n"))
            .collect::<String>(),
    );
    let mut stdout = std::io::stdout().lock();
    // stdout going away (a closed pipe) must not stop the server.
    let _ = stdout.write_all(summary.as_bytes());
    let _ = stdout.flush();
}
