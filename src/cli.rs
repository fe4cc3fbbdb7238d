//! The command line: `tern [--config FILE]` serves, `tern check-config FILE`
//! validates, `tern credentials` mints a REST credential.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat};
use crate::credentials;
use crate::io::net;

/// tern: a STUN/TURN relay server.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Configuration file (TOML). Without one, tern serves its embedded
    /// default on port 3478 with a generated REST secret.
    #[arg(long, short = 'c', global = true)]
    pub config: Option<PathBuf>,
    /// Log filter ("info", "tern=debug"); overrides RUST_LOG and the config.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// Log format; overrides the config.
    #[arg(long, value_enum, global = true)]
    pub log_format: Option<LogFormat>,
    /// What to do; serving when absent.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a configuration file: exit 0, or print FILE:LINE: key: problem
    /// and exit 1.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Print a time-limited TURN REST credential made with the first secret.
    Credentials {
        /// User name part of the credential (`<expiry>:<user>`).
        #[arg(long, default_value = "")]
        user: String,
        /// Validity in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
        /// Print {"username","password","ttl","uris"}.
        #[arg(long)]
        json: bool,
    },
    /// Diagnose a TURN server stage by stage, as a client sees it: exit 0
    /// only when every stage passes.
    Probe(ProbeArgs),
    /// Ask a running tern through its admin API (needs [admin] token-file).
    Ctl(CtlArgs),
}

/// `tern ctl` arguments.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The admin listener, HOST:PORT (default: the config's [admin] listen,
    /// else 127.0.0.1:9641).
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// A file whose first line is a token of [admin] token-file (default:
    /// the config's token file).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Print the API's JSON.
    #[arg(long)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub what: CtlCommand,
}

/// `tern ctl` subcommands.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Version, uptime, listeners, relays, allocations.
    Info,
    /// Live allocations.
    Sessions {
        /// Only this user's (a REST credential's name part, or a static user).
        #[arg(long)]
        user: Option<String>,
    },
    /// End every allocation of a user at once, optionally refusing it for a
    /// while.
    Disconnect {
        /// The user.
        user: String,
        /// Refuse the user's Allocates (403) for this many seconds.
        #[arg(long, default_value_t = 0)]
        block_seconds: u64,
    },
    /// Lift a user's block.
    Unblock {
        /// The user.
        user: String,
    },
    /// The blocks in force.
    Blocks,
    /// Drain as on SIGTERM: stop taking allocations, let live ones end,
    /// then exit.
    Drain {
        /// Return only once tern has exited (e.g. as a Kubernetes preStop
        /// hook).
        #[arg(long)]
        wait: bool,
    },
}

/// `tern ctl`.
pub fn ctl(args: &CtlArgs, config: Option<&Config>) -> ExitCode {
    let admin = args
        .admin
        .or(config.map(|c| c.admin_listen))
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9641)));
    let token = match &args.token_file {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|e| format!("{}: {e}", f.display()))
            .and_then(|t| {
                let first = t.lines().map(str::trim).find(|l| !l.is_empty());
                first
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{}: no token", f.display()))
            }),
        None => config
            .and_then(|c| c.admin_tokens.first().cloned())
            .ok_or_else(|| {
                "no token: pass --token-file, or --config with [admin] token-file".into()
            }),
    };
    let token = match token {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tern ctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let call = match &args.what {
        CtlCommand::Info => crate::ctl::Call::Info,
        CtlCommand::Sessions { user } => crate::ctl::Call::Sessions(user.clone()),
        CtlCommand::Disconnect {
            user,
            block_seconds,
        } => crate::ctl::Call::Disconnect(user.clone(), *block_seconds),
        CtlCommand::Unblock { user } => crate::ctl::Call::Unblock(user.clone()),
        CtlCommand::Blocks => crate::ctl::Call::Blocks,
        CtlCommand::Drain { .. } => crate::ctl::Call::Drain,
    };
    match crate::ctl::call(admin, &token, &call) {
        Ok((status, v)) if status.is_success() => {
            if args.json {
                println!("{v}");
            } else {
                print!("{}", crate::ctl::table(&call, &v));
            }
            if let CtlCommand::Drain { wait: true } = args.what {
                crate::ctl::wait_for_exit(admin, &token);
            }
            ExitCode::SUCCESS
        }
        Ok((status, v)) => {
            eprintln!(
                "tern ctl: {status}: {}",
                v["error"].as_str().unwrap_or("(no message)")
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tern ctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `tern probe` arguments.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// turn:HOST[:PORT][?transport=udp|tcp]; without a transport both are
    /// checked.
    pub url: String,
    /// A TURN REST API secret: the probe mints a one-hour credential.
    #[arg(long, conflicts_with_all = ["password", "secret_file"])]
    pub secret: Option<String>,
    /// Read the REST secret from the first line of this file (keeps it out
    /// of the process list).
    #[arg(long, conflicts_with = "password")]
    pub secret_file: Option<PathBuf>,
    /// The user: with a secret, the REST user part; with --password, the
    /// static user name or a ready REST username.
    #[arg(long)]
    pub user: Option<String>,
    /// The password for --user.
    #[arg(long, requires = "user")]
    pub password: Option<String>,
    /// The realm the server should announce.
    #[arg(long)]
    pub realm: Option<String>,
    /// The public IP relayed addresses should carry.
    #[arg(long)]
    pub expect_ip: Option<std::net::IpAddr>,
    /// How long each exchange may take, in seconds.
    #[arg(long, default_value_t = 5)]
    pub timeout_seconds: u64,
    /// The server's admin listener (HOST:PORT), if reachable from here: its
    /// metrics tell a server clock ahead from a wrong secret or password.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// For turns:, PEM certificates to trust besides the system's (a
    /// private CA).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Print {"ok": bool, "stages": [{"name", "ok", "detail"}]}.
    #[arg(long)]
    pub json: bool,
}

/// `tern probe`.
pub fn probe(args: &ProbeArgs) -> ExitCode {
    let secret = match &args.secret_file {
        Some(f) => match std::fs::read_to_string(f) {
            Ok(text) => text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_owned),
            Err(e) => {
                eprintln!("{}: {e}", f.display());
                return ExitCode::FAILURE;
            }
        },
        None => args.secret.clone(),
    };
    let opts = crate::probe::Options {
        url: args.url.clone(),
        secret,
        user: args.user.clone(),
        password: args.password.clone(),
        realm: args.realm.clone(),
        expect_ip: args.expect_ip,
        timeout: std::time::Duration::from_secs(args.timeout_seconds.max(1)),
        admin: args.admin,
        ca_file: args.ca_file.clone(),
    };
    let report = crate::probe::run(&opts);
    if args.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        print!("{}", report.text());
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Seconds since the Unix epoch ([`crate::unix::now`]).
pub use crate::unix::now as unix_now;

/// `tern check-config FILE`.
pub fn check_config(file: &std::path::Path) -> ExitCode {
    match Config::load(file) {
        Ok(config) => {
            if let Some(t) = &config.tls {
                let c = &t.certificate;
                let now = crate::tls::now_unix();
                println!(
                    "{}: tls certificate serial {}, expires {} ({} days left), names {:?}",
                    t.certificate_file.display(),
                    c.serial,
                    c.expiry(),
                    (c.not_after - now) / 86_400,
                    c.names
                );
                for warning in c.warnings(config.host.as_deref(), now) {
                    eprintln!("warning: {}: {warning}", t.certificate_file.display());
                }
            }
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `tern credentials`.
pub fn print_credentials(config: &Config, user: &str, ttl: u64, json: bool) -> ExitCode {
    if config.stun_only {
        eprintln!(
            "{}: stun-only: this server relays nothing; STUN needs no credential",
            config.source
        );
        return ExitCode::FAILURE;
    }
    let Some(secret) = config.secrets.first() else {
        eprintln!("{}: auth.secrets: no REST secret configured", config.source);
        return ExitCode::FAILURE;
    };
    let v4 = net::resolve_relay(config.relay_ipv4, true);
    let v6 = net::resolve_relay(config.relay_ipv6, false);
    let host = credentials::public_host(config, v4, v6);
    let tls: &[_] = if config.tls.is_some() {
        &config.listen_tls
    } else {
        &[]
    };
    let uris = credentials::turn_uris(&host, &config.listen_udp, &config.listen_tcp, tls);
    let cred = credentials::mint(secret, user, ttl, unix_now(), uris);
    if json {
        match serde_json::to_string(&cred) {
            Ok(s) => println!("{s}"),
            Err(_) => return ExitCode::FAILURE,
        }
    } else {
        println!("username: {}\npassword: {}", cred.username, cred.password);
    }
    ExitCode::SUCCESS
}

/// Handle to change the log filter on reload.
pub type LogHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// Whether the log level is pinned by the command line or `RUST_LOG`
/// (then a reload leaves it alone).
pub fn log_level_pinned(cli: &Cli) -> bool {
    cli.log_level.is_some() || std::env::var_os("RUST_LOG").is_some()
}

/// Set up `tracing`: flag, then RUST_LOG, then the config's level.
pub fn init_logging(cli: &Cli, config: Option<&Config>) -> Option<LogHandle> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let level = cli
        .log_level
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .or_else(|| config.map(|c| c.log_level.clone()))
        .unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let format = cli
        .log_format
        .or(config.map(|c| c.log_format))
        .unwrap_or(LogFormat::Text);
    let registry = tracing_subscriber::registry().with(filter);
    // Colour only on a terminal: under systemd, in files and pipes, escape
    // codes would be stored as text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(colour);
    let done = match format {
        LogFormat::Json => registry.with(fmt.json()).try_init(),
        LogFormat::Text => registry.with(fmt).try_init(),
    };
    done.is_ok().then_some(handle)
}

/// Serve `config` until a signal stops it: SIGHUP reloads `cli.config`,
/// SIGTERM drains, SIGINT stops.
pub fn serve(cli: &Cli, config: Config, log: Option<LogHandle>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let pinned = log_level_pinned(cli);
        let controls = crate::shutdown::controls(cli.config.clone(), move |c: &Config| {
            if let (false, Some(h)) = (pinned, &log) {
                if let Ok(f) = tracing_subscriber::EnvFilter::try_new(&c.log_level) {
                    let _ = h.reload(f);
                }
            }
        })?;
        let embedded = config.generated_secret;
        let server = crate::server::Server::bind(config)?;
        if embedded {
            print_startup_credentials(&server);
        }
        server.run_with(controls).await?;
        Ok(())
    })
}

/// What `cargo run` prints with no config: the secret, a one-hour
/// credential and a ready `iceServers` array.
pub fn print_startup_credentials(server: &crate::server::Server) {
    let config = server.config();
    let Some(secret) = config.secrets.first() else {
        return;
    };
    let (v4, v6) = server.relay_addresses();
    let host = credentials::public_host(config, v4, v6);
    let uris = credentials::turn_uris(
        &host,
        server.udp_addrs(),
        server.tcp_addrs(),
        server.tls_addrs(),
    );
    let cred = credentials::mint(secret, "user", 3600, unix_now(), uris);
    let ice = credentials::ice_servers_json(&host, server.udp_addrs(), server.tcp_addrs(), &cred);
    println!(
        "tern: no --config given; serving the embedded default.\n\
         REST secret (generated for this run): {secret}\n\
         One-hour credential: username {} password {}\n\
         iceServers for RTCPeerConnection:\n{ice}",
        cred.username, cred.password
    );
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand and long option, with the path of subcommands
    /// that leads to it.
    fn walk(cmd: &clap::Command, path: &str, into: &mut Vec<(String, String)>) {
        for arg in cmd.get_arguments() {
            if let Some(long) = arg.get_long().filter(|l| *l != "help" && *l != "version") {
                into.push((path.to_owned(), format!("--{long}")));
            }
        }
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let path = format!("{path} {}", sub.get_name());
            into.push((path.clone(), path.clone()));
            walk(sub, &path, into);
        }
    }

    #[test]
    fn readme_shows_every_subcommand_and_option() {
        let readme = include_str!("../README.md");
        let mut items = Vec::new();
        walk(&super::Cli::command(), "tern", &mut items);
        assert!(items.len() > 20, "{items:?}");
        // A subcommand as it is typed ("tern ctl drain" may come with
        // options between: "tern ctl --config F drain"), an option as it is.
        let shown = |item: &str| {
            let words: Vec<&str> = item.split(' ').collect();
            match words.as_slice() {
                // The option whole: not the start of a longer one.
                [w] => readme.match_indices(w).any(|(i, _)| {
                    let next = readme[i + w.len()..].chars().next();
                    !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
                }),
                [.., parent, last] => readme.lines().any(|l| {
                    l.split_once(&format!("{parent} "))
                        .is_some_and(|(_, rest)| {
                            rest.contains(&format!(" {last}")) || rest.starts_with(last)
                        })
                }),
                [] => false,
            }
        };
        let missing: Vec<_> = items.iter().filter(|(_, item)| !shown(item)).collect();
        assert!(missing.is_empty(), "README never shows {missing:?}");
    }
}
