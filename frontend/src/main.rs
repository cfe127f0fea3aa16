//! The `tlsfront` command: parses the command line for `run`, `check`,
//! `sysctl`, `stats` and `reload`; `run` is [`tlsfront::server::run`].
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use tlsfront::config::Config;
use tlsfront::control;
use tlsfront::metrics::render_table;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
usage:
  tlsfront run    [-c FILE] [-o key=value]... [--takeover]
                                                   start the frontend (--takeover: replace a
                                                   running one on the same control socket)
  tlsfront check  [-c FILE] [-o key=value]...      verify what `run` would load, start nothing
  tlsfront sysctl -a [-c FILE] [-o key=value]...   every key with its value
  tlsfront sysctl [-c FILE] [-o key=value]... KEY...
  tlsfront sysctl [--socket PATH] -w KEY=VALUE...  change live keys of the running process
  tlsfront reload [-c FILE] [--socket PATH]        re-read config and certificates (as SIGHUP)
  tlsfront stats  [-c FILE] [--socket PATH] [--json]  counters of the running process
  tlsfront stats  [-c FILE] [--socket PATH] --flow CLIENT_IP:PORT[=SERVER_IP[:PORT]]
                                                   the worker net.steering = xdp sends that
                                                   client's connection to
  tlsfront --version
  tlsfront COMMAND --help

sysctl reads the running process (its control socket) when --socket is
given, or when neither -c nor -o is; otherwise it shows what the file and
overrides say. With no -c, `run` starts the embedded default: 127.0.0.1:8443,
a self-signed certificate for localhost, a built-in HTTP responder as
upstream. Every key is listed by `tlsfront sysctl -a` and in docs/config.md.";

/// The options every command that reads a configuration takes.
const CONFIG_OPTIONS: &str = concat!(
    "  -c, --config FILE   the config file (default: none, the built-in defaults)\n",
    "  -o KEY=VALUE        set a key after the file; repeatable, applied in order",
);

/// Exit code for a bad command line or configuration.
const EXIT_USAGE: u8 = 2;

/// A subcommand: its name, what it takes, what it does.
struct CommandSpec {
    name: &'static str,
    synopsis: &'static str,
    about: &'static str,
    /// Options beyond -c and -o, for its help.
    options: &'static str,
    /// Long options it accepts beyond --config (and --help).
    flags: &'static [&'static str],
    /// Short options it accepts beyond -c and -o.
    shorts: &'static [char],
    /// Takes KEY or KEY=VALUE arguments.
    positional: bool,
}

const COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        name: "run",
        synopsis: "tlsfront run [-c FILE] [-o KEY=VALUE]... [--takeover]",
        about: "Start the frontend.",
        options: "  --takeover          share the port with a running tlsfront and take over from it\n                      (an upgrade, see scripts/upgrade.sh; with net.steering = xdp,\n                      its XDP link too)",
        flags: &["takeover"],
        shorts: &[],
        positional: false,
    },
    CommandSpec {
        name: "check",
        synopsis: "tlsfront check [-c FILE] [-o KEY=VALUE]...",
        about: "Load and verify everything `run` would (keys and values, certificates and their\nkeys, CA and secret files, shared paths writable, process.user) without binding a\nport or touching a shared file. Exit 0 with a one-line summary, or 2 with every\nproblem named by file:line (or -o) and key.",
        options: "",
        flags: &[],
        shorts: &[],
        positional: false,
    },
    CommandSpec {
        name: "sysctl",
        synopsis: "tlsfront sysctl [-c FILE] [-o KEY=VALUE]... [--socket PATH] (-a | KEY... | -w KEY=VALUE...)",
        about: "Show keys and values (of the running process when --socket is given or neither\n-c nor -o is; else of the file and overrides), or change live keys (-w).",
        options: "  -a, --all           every key\n  -w, --write         set live keys of the running process (all or none)\n  --socket PATH       the running process's control socket",
        flags: &["all", "write", "socket"],
        shorts: &['a', 'w'],
        positional: true,
    },
    CommandSpec {
        name: "reload",
        synopsis: "tlsfront reload [-c FILE] [-o KEY=VALUE]... [--socket PATH]",
        about: "Make the running process re-read its config file and certificates (as SIGHUP).",
        options: "  --socket PATH       the running process's control socket",
        flags: &["socket"],
        shorts: &[],
        positional: false,
    },
    CommandSpec {
        name: "stats",
        synopsis: "tlsfront stats [-c FILE] [-o KEY=VALUE]... [--socket PATH] [--json | --flow CLIENT_IP:PORT[=SERVER_IP[:PORT]]]",
        about: "Print the counters of the running process, or (--flow) the worker net.steering = xdp\nsends that client's connection to (the server address defaults to the first\nnet.listen address; another port must be a net.listen port).",
        options: "  --socket PATH       the running process's control socket\n  --json              as JSON\n  --flow CLIENT_IP:PORT[=SERVER_IP[:PORT]]\n                      the worker of that connection, from the running process's hash key",
        flags: &["socket", "json", "flow"],
        shorts: &[],
        positional: false,
    },
];

impl CommandSpec {
    fn help(&self) -> String {
        let mut text = format!(
            "usage: {}\n\n{}\n\noptions:\n{CONFIG_OPTIONS}\n",
            self.synopsis, self.about
        );
        if !self.options.is_empty() {
            text.push_str(self.options);
            text.push('\n');
        }
        text.push_str("  -h, --help          this help\n");
        text
    }
}

struct Args {
    command: &'static str,
    file: Option<PathBuf>,
    overrides: Vec<String>,
    all: bool,
    write: bool,
    json: bool,
    takeover: bool,
    socket: Option<PathBuf>,
    flow: Option<String>,
    keys: Vec<String>,
}

/// What the command line asks for.
enum Parsed {
    Command(Args),
    /// Print this on stdout and exit 0.
    Print(String),
}

fn parse_args(raw: Vec<std::ffi::OsString>) -> Result<Parsed, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(raw);
    let spec = match parser.next().map_err(|e| e.to_string())? {
        Some(Long("version") | Short('V')) => {
            return Ok(Parsed::Print(format!(
                "tlsfront {}",
                env!("CARGO_PKG_VERSION")
            )))
        }
        Some(Long("help") | Short('h')) => return Ok(Parsed::Print(USAGE.to_string())),
        Some(Value(v)) if v == "help" => return Ok(Parsed::Print(USAGE.to_string())),
        Some(Value(v)) => {
            let name = v.string().map_err(|e| e.to_string())?;
            COMMANDS
                .iter()
                .find(|c| c.name == name)
                .ok_or_else(|| format!("unknown command {name:?}"))?
        }
        Some(other) => return Err(format!("expected a command, found {}", other.unexpected())),
        None => return Err("no command given".to_string()),
    };
    let mut args = Args {
        command: spec.name,
        file: None,
        overrides: Vec::new(),
        all: false,
        write: false,
        json: false,
        takeover: false,
        socket: None,
        flow: None,
        keys: Vec::new(),
    };
    let err = |e: lexopt::Error| format!("{}: {e}", spec.name);
    while let Some(arg) = parser.next().map_err(err)? {
        let allowed = match &arg {
            Short('c' | 'o' | 'h') | Long("config" | "help") => true,
            Short(c) => spec.shorts.contains(c),
            Long(l) => spec.flags.contains(l),
            Value(_) => spec.positional,
        };
        if !allowed {
            return Err(err(arg.unexpected()));
        }
        match arg {
            Short('h') | Long("help") => return Ok(Parsed::Print(spec.help())),
            Short('c') | Long("config") => args.file = Some(parser.value().map_err(err)?.into()),
            Short('o') => args
                .overrides
                .push(parser.value().map_err(err)?.string().map_err(err)?),
            Short('a') | Long("all") => args.all = true,
            Short('w') | Long("write") => args.write = true,
            Long("json") => args.json = true,
            Long("takeover") => args.takeover = true,
            Long("socket") => args.socket = Some(parser.value().map_err(err)?.into()),
            Long("flow") => args.flow = Some(parser.value().map_err(err)?.string().map_err(err)?),
            Value(v) => args.keys.push(v.string().map_err(err)?),
            other => return Err(err(other.unexpected())),
        }
    }
    Ok(Parsed::Command(args))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args_os().skip(1).collect()) {
        Ok(Parsed::Command(a)) => a,
        Ok(Parsed::Print(text)) => {
            println!("{}", text.trim_end());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tlsfront: {e}\n(tlsfront --help lists the commands; tlsfront COMMAND --help their options)");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if args.command == "check" {
        return check(&args);
    }
    let config = match Config::load_warned(args.file.as_deref(), &args.overrides) {
        Ok((c, warnings)) => {
            // Before `run` sets up logging, so on stderr as it is.
            for w in warnings {
                eprintln!("tlsfront: warning: {w}");
            }
            c
        }
        Err(e) => {
            eprintln!("tlsfront: error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let outcome = match args.command {
        "run" => tlsfront::server::run(
            config,
            &tlsfront::server::RunOptions {
                file: args.file.clone(),
                overrides: args.overrides.clone(),
                takeover: args.takeover,
            },
        )
        .map_err(|e| e.to_string()),
        "sysctl" => sysctl(&config, &args),
        "stats" => stats(&config, &args),
        _ => reload(&config, &args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tlsfront: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tlsfront check`: the summary on stdout and 0, or every problem on
/// stderr and 2; warnings (renamed keys) on stderr either way.
fn check(args: &Args) -> ExitCode {
    let checked = tlsfront::check::check(args.file.as_deref(), &args.overrides);
    for w in &checked.warnings {
        eprintln!("tlsfront: warning: {w}");
    }
    match checked.outcome {
        Ok(summary) => {
            println!("tlsfront check: {summary}");
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("tlsfront: error: {p}");
            }
            eprintln!("tlsfront check: {} problem(s)", problems.len());
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn control_socket(config: &Config, args: &Args) -> PathBuf {
    if let Some(socket) = &args.socket {
        return socket.clone();
    }
    let path = config.control_socket_path();
    if path.exists() || config.control_socket != tlsfront::config::AutoPath::Auto {
        return path;
    }
    // An `auto` socket lives in the private directory of the user the
    // server runs as, which need not be ours: root querying a service run
    // with systemd `User=tlsfront`. Look in the other tlsfront directories
    // we can read for this port's socket.
    let name = path.file_name().map(|n| n.to_os_string());
    let found = std::fs::read_dir("/dev/shm").ok().and_then(|dirs| {
        dirs.flatten()
            .filter(|d| d.file_name().to_string_lossy().starts_with("tlsfront-"))
            .filter_map(|d| Some(d.path().join(name.as_ref()?)))
            .find(|candidate| candidate.exists())
    });
    found.unwrap_or(path)
}

fn sysctl(config: &Config, args: &Args) -> Result<(), String> {
    let socket = control_socket(config, args);
    for key in &args.keys {
        let name = key.split_once('=').map_or(key.as_str(), |(k, _)| k);
        if let Some(renamed) = tlsfront::config::renamed_key(name.trim()) {
            eprintln!("tlsfront: warning: {}", renamed.warning());
        }
    }
    if args.write {
        let reply = control::set_live(&socket, &args.keys).map_err(|e| e.to_string())?;
        print!("{reply}");
        return Ok(());
    }
    let offline = args.socket.is_none() && (args.file.is_some() || !args.overrides.is_empty());
    let live = if offline {
        None
    } else {
        match control::query(&socket, "sysctl") {
            Ok(text) => Some(text),
            Err(e) if args.socket.is_some() => return Err(e.to_string()),
            // No process there: show the defaults.
            Err(_) => None,
        }
    };
    let entries: Vec<(String, String)> = match live {
        Some(text) => text
            .lines()
            .filter_map(|l| l.split_once(" = "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        None => config.entries(),
    };
    let mut out = String::new();
    if args.all {
        for (k, v) in &entries {
            out.push_str(&format!("{k} = {v}\n"));
        }
    } else if args.keys.is_empty() {
        return Err(format!("sysctl needs -a, -w or a key\n{USAGE}"));
    } else {
        for key in &args.keys {
            // An old name reads its new key, shown as the old name showed it.
            let renamed = tlsfront::config::renamed_key(key);
            let name = renamed.map_or(key.as_str(), |r| r.new);
            let value = entries
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| renamed.map_or_else(|| v.clone(), |r| r.old_value(v)))
                .ok_or_else(|| {
                    format!("unknown key '{key}' (see `tlsfront sysctl -a` or docs/config.md)")
                })?;
            out.push_str(&format!("{key} = {value}\n"));
        }
    }
    print!("{out}");
    Ok(())
}

fn stats(config: &Config, args: &Args) -> Result<(), String> {
    if let Some(flow) = &args.flow {
        let reply = control::query(&control_socket(config, args), &format!("flow {flow}"))
            .map_err(|e| e.to_string())?;
        print!("{reply}");
        return Ok(());
    }
    let json = control::query_stats(&control_socket(config, args)).map_err(|e| e.to_string())?;
    if args.json {
        println!("{json}");
    } else {
        print!("{}", render_table(&json));
    }
    Ok(())
}

fn reload(config: &Config, args: &Args) -> Result<(), String> {
    let reply =
        control::query(&control_socket(config, args), "reload").map_err(|e| e.to_string())?;
    print!("{reply}");
    Ok(())
}
