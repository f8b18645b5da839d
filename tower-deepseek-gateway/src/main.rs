//! `deepseek-gateway`: an OpenAI-compatible gateway in front of DeepSeek.
//!
//! ```text
//! deepseek-gateway [--listen 127.0.0.1:8080] [--upstream https://api.deepseek.com]
//!                 [--config gateway.toml] [--redis redis://127.0.0.1:6379] [--audit-log audit.jsonl]
//! deepseek-gateway audit verify FILE...
//! ```
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
use tower_deepseek_gateway::{Gateway, GatewayConfig, Options, shutdown_signal};
use tracing_subscriber::EnvFilter;

/// An OpenAI-compatible gateway in front of DeepSeek, built from tower-deepseek layers.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Base URL of the upstream API.
    #[arg(long, default_value = "https://api.deepseek.com")]
    upstream: String,
    /// TOML configuration file (client keys and every layer's settings).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Redis URL for the L2 cache and the shared OAuth2 token.
    #[arg(long)]
    redis: Option<String>,
    /// Audit log file (JSON Lines).
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// A tool instead of the server.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
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
    if let Some(Command::Audit {
        command: AuditCommand::Verify { files },
    }) = cli.command.take()
    {
        return audit_verify(&files);
    }
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
    match runtime.block_on(start(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn start(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let config = match &cli.config {
        Some(path) => GatewayConfig::load(path)?,
        None => GatewayConfig::default(),
    };
    let mut options = Options::new()
        .listen(cli.listen)
        .upstream(cli.upstream)
        .config(config);
    if let Some(url) = cli.redis {
        options = options.redis(url);
    }
    if let Some(path) = cli.audit_log {
        options = options.audit_log(path);
    }
    if let Ok(key) = std::env::var("DEEPSEEK_API_KEY") {
        if !key.is_empty() {
            options = options.api_key(key);
        }
    }
    let gateway = Gateway::new(options)?;
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(target: "tower_deepseek_gateway", layers = ?gateway.layers(), %addr, "gateway ready");
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
    }
    gateway.serve(listener, shutdown_signal()).await?;
    Ok(())
}
