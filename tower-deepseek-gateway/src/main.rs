//! `deepseek-gateway`: an OpenAI-compatible gateway in front of DeepSeek.
//!
//! ```text
//! deepseek-gateway [--listen 127.0.0.1:8080] [--upstream https://api.deepseek.com]
//!                 [--config gateway.toml] [--redis redis://127.0.0.1:6379] [--audit-log audit.jsonl]
//!                 [--set PATH=VALUE]...
//! deepseek-gateway check-config [FILE]
//! deepseek-gateway audit verify FILE...
//! ```
//!
//! Settings: flags over `DEEPSEEK_GATEWAY_*` variables over the file (see the library's
//! `sources` module). SIGHUP reloads the client keys, limits and upstream weights.
//!
//! The upstream credential comes from `DEEPSEEK_API_KEY` or the `[oauth2]` table of the
//! config. Logs go to stderr (`RUST_LOG`, default `info`); when ready, one line goes to
//! stdout: `listening on http://ADDR`.
//!
//! `audit verify` checks the hash chain of an audit log across the files given, oldest first
//! (`audit.jsonl.2 audit.jsonl.1 audit.jsonl`): it prints `ok N records` and exits 0, or
//! prints the first broken link (`FILE:LINE: reason`) and exits 1 (2 when a file cannot be
//! read).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tower_deepseek_gateway::{
    Gateway, Options, Overrides, StartError, reload_on_sighup, shutdown_signal, sources,
};
use tracing_subscriber::EnvFilter;

/// An OpenAI-compatible gateway in front of DeepSeek, built from tower-deepseek layers.
///
/// Every setting comes from the TOML file, the environment (`DEEPSEEK_GATEWAY_<PATH>`, tables
/// separated by `__`) or the command line (`--set PATH=VALUE` and the flags below), in that
/// order of precedence, lowest first: a flag wins over the environment, which wins over the file.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Address to listen on (`server.listen`; default 127.0.0.1:8080).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Base URL of an upstream API; repeat for active-active upstreams (`upstreams`: they
    /// replace the file's `[[upstreams]]`). Default `https://api.deepseek.com` when none is named.
    #[arg(long)]
    upstream: Vec<String>,
    /// TOML configuration file (client keys and every layer's settings).
    #[arg(long, env = "DEEPSEEK_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Redis URL for the L2 cache and the shared OAuth2 token (`cache.redis_url`).
    #[arg(long)]
    redis: Option<String>,
    /// Audit log file, JSON Lines (`audit.path`).
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// Any setting by its path, such as `--set retry.max_attempts=3` (repeatable; the value
    /// is read as a TOML value, else as a string).
    #[arg(long = "set", value_name = "PATH=VALUE", value_parser = Overrides::parse_set)]
    set: Vec<(String, String)>,
    /// A tool instead of the server.
    #[command(subcommand)]
    command: Option<Command>,
}

impl Cli {
    fn overrides(&self) -> Overrides {
        let mut o = Overrides::new();
        o.listen = self.listen;
        o.upstreams = self.upstream.clone();
        o.redis = self.redis.clone();
        o.audit_log = self.audit_log.clone();
        o.set = self.set.clone();
        o
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Validates a configuration file (merged with the environment and the flags, as at
    /// start, and checked by every layer's builder) without starting; prints `ok` and the
    /// layers, or the error with the file's line and field, and exits 1.
    CheckConfig {
        /// The TOML file (default: `--config`).
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verifies the hash chain across FILEs, oldest first; prints `ok N records` or the first
    /// broken link, and exits non-zero on a break.
    Verify {
        /// The log files, oldest first (`audit.jsonl.2 audit.jsonl.1 audit.jsonl`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn audit_verify(files: &[PathBuf]) -> ExitCode {
    use tower_deepseek::redact::audit::{VerifyFilesError, verify_chain_files};
    match verify_chain_files(files) {
        Ok(n) => {
            println!("ok {n} records");
            ExitCode::SUCCESS
        }
        Err(VerifyFilesError::Broken(e)) => {
            let file = e.file.as_deref().unwrap_or(std::path::Path::new("-"));
            println!("{}:{}: {}", file.display(), e.line, e.reason);
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    let check = match cli.command.take() {
        Some(Command::Audit {
            command: AuditCommand::Verify { files },
        }) => return audit_verify(&files),
        Some(Command::CheckConfig { file }) => Some(file.or_else(|| cli.config.clone())),
        None => None,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(file) = check {
        return runtime.block_on(check_config(file, &cli.overrides()));
    }
    match runtime.block_on(start(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `check-config`: the start-up checks, without starting.
async fn check_config(file: Option<PathBuf>, flags: &Overrides) -> ExitCode {
    let config = match sources::load(file.as_deref(), flags) {
        Ok(c) => c,
        Err(e) => {
            println!("{}", e.report());
            return ExitCode::from(1);
        }
    };
    match Gateway::check(options(config)) {
        Ok(layers) => {
            println!("ok: layers {}", layers.join(", "));
            ExitCode::SUCCESS
        }
        Err(e) => {
            // The table's line, when the error is a layer's and the file has its table.
            let at = match (&e, &file) {
                (StartError::Layer { layer, .. }, Some(path)) => std::fs::read_to_string(path)
                    .ok()
                    .and_then(|text| sources::table_line(&text, layer))
                    .map(|line| format!("{}:{line}: ", path.display())),
                (_, Some(path)) => Some(format!("{}: ", path.display())),
                _ => None,
            };
            println!("{}{e}", at.unwrap_or_default());
            ExitCode::from(1)
        }
    }
}

/// The options of a merged configuration, with the upstream key from `DEEPSEEK_API_KEY`.
fn options(config: tower_deepseek_gateway::GatewayConfig) -> Options {
    let mut options = Options::from_config(config);
    if let Ok(key) = std::env::var("DEEPSEEK_API_KEY") {
        if !key.is_empty() {
            options = options.api_key(key);
        }
    }
    options
}

async fn start(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let flags = cli.overrides();
    let file = cli.config.clone();
    let config = sources::load(file.as_deref(), &flags).map_err(|e| e.report())?;
    let listen = config.server.listen;
    let gateway = Gateway::new(options(config))?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(target: "tower_deepseek_gateway", layers = ?gateway.layers(), %addr, "gateway ready");
    tokio::spawn(reload_on_sighup(gateway.reloader(), move || {
        sources::load(file.as_deref(), &flags)
    }));
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
    }
    gateway.serve(listener, shutdown_signal()).await?;
    Ok(())
}
