//! Where the configuration comes from: the TOML file, the environment and the command line,
//! merged by the `figment` crate with one precedence for every setting:
//!
//! **command line > environment > file > built-in default.**
//!
//! | source | how a setting is named | example |
//! |---|---|---|
//! | file | its TOML path | `[retry]` `max_attempts = 3` |
//! | environment | [`ENV_PREFIX`], then the path in upper case, tables separated by [`ENV_SEPARATOR`] | `DEEPSEEK_GATEWAY_RETRY__MAX_ATTEMPTS=3` |
//! | command line | `--set PATH=VALUE` (repeatable), or a dedicated flag | `--set retry.max_attempts=3` |
//!
//! The dedicated flags are shorthands for a path: `--listen` is `server.listen`, `--upstream`
//! (repeatable) is `upstreams` (`[{ url = "…" }, …]`, weight 1 each), `--redis` is
//! `cache.redis_url`, `--audit-log` is `audit.path`. Values from the
//! environment and `--set` are read like TOML values (`3`, `true`, `[1, 2]`,
//! `{ sha256 = "…", tenant = "acme" }`), and anything that does not parse is a string. A
//! table given by a higher source is merged key by key into the lower ones; an array
//! (`keys`) replaces the lower one whole.
//!
//! Variables outside this scheme keep working: `DEEPSEEK_API_KEY` (the upstream key),
//! `GATEWAY_AUDIT_HMAC_KEY` (or the variable named by `audit.hmac_key_env`), `RUST_LOG`, and
//! `DEEPSEEK_GATEWAY_CONFIG` (the file, as `--config`).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::Value;

use crate::config::GatewayConfig;

/// The prefix of the environment variables that carry settings.
pub const ENV_PREFIX: &str = "DEEPSEEK_GATEWAY_";
/// The separator of nested tables in an environment variable's name
/// (`DEEPSEEK_GATEWAY_SERVER__MAX_CONNECTIONS` is `server.max_connections`).
pub const ENV_SEPARATOR: &str = "__";
/// The environment variable naming the configuration file (as `--config`).
pub const ENV_CONFIG_FILE: &str = "DEEPSEEK_GATEWAY_CONFIG";

/// The settings given on the command line: the highest-precedence source.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Overrides {
    /// `--listen` (`server.listen`).
    pub listen: Option<SocketAddr>,
    /// `--upstream`, repeated (`upstreams`: `[{ url = … }, …]`, replacing the lower sources'
    /// `[[upstreams]]` whole).
    pub upstreams: Vec<String>,
    /// `--redis` (`cache.redis_url`).
    pub redis: Option<String>,
    /// `--audit-log` (`audit.path`).
    pub audit_log: Option<PathBuf>,
    /// `--set PATH=VALUE`, in order (a later one wins over an earlier one for the same path,
    /// and every one over the dedicated flags).
    pub set: Vec<(String, String)>,
}

impl Overrides {
    /// No settings from the command line.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one `PATH=VALUE` of `--set`.
    ///
    /// # Errors
    ///
    /// The text has no `=` or an empty path.
    pub fn parse_set(text: &str) -> Result<(String, String), String> {
        match text.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
            _ => Err(format!(
                "expected PATH=VALUE (such as retry.max_attempts=3), got {text:?}"
            )),
        }
    }
}

/// The configuration could not be loaded from its sources.
///
/// Its `Display` never quotes a value (it may be a secret): it names the file, line and field,
/// or the setting's path and its source. [`LoadError::report`] adds toml's full report, which
/// quotes the offending line (for an operator at a terminal: `check-config`, a failed start).
#[derive(Debug)]
#[non_exhaustive]
pub enum LoadError {
    /// The file cannot be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not valid TOML for the configuration.
    File {
        /// The file.
        path: PathBuf,
        /// The 1-based line of the error, when known.
        line: Option<usize>,
        /// The setting's path at that line (`retry.max_attempts`), when known.
        field: Option<String>,
        /// toml's report (quotes the line).
        report: String,
    },
    /// A value from the environment or the command line does not fit its setting.
    Value {
        /// The setting's path (`retry.max_attempts`).
        field: String,
        /// Where the value came from (`DEEPSEEK_GATEWAY_RETRY__MAX_ATTEMPTS environment
        /// variable`, `--set`).
        source: String,
        /// What is wrong (without the value).
        message: String,
    },
}

impl LoadError {
    /// The error with toml's full report (which quotes the offending line of the file).
    pub fn report(&self) -> String {
        match self {
            LoadError::File { report, .. } => format!("{self}\n{report}"),
            _ => self.to_string(),
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Read { path, error } => write!(f, "{}: {error}", path.display()),
            LoadError::File {
                path, line, field, ..
            } => {
                write!(f, "{}", path.display())?;
                if let Some(line) = line {
                    write!(f, ":{line}")?;
                }
                f.write_str(": invalid configuration")?;
                if let Some(field) = field {
                    write!(f, " at field `{field}`")?;
                }
                Ok(())
            }
            LoadError::Value {
                field,
                source,
                message,
            } => write!(f, "{source}: `{field}`: {message}"),
        }
    }
}

impl std::error::Error for LoadError {}

/// The dotted path of the setting on `line` (1-based) of a TOML text: the table header above
/// it and the key before its `=` (or the header itself on a header line).
fn field_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let here = lines.get(line.checked_sub(1)?)?.trim();
    let header = |l: &str| {
        let l = l.trim();
        l.starts_with('[').then(|| {
            l.trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
    };
    if let Some(h) = header(here) {
        return Some(h);
    }
    let key = here.split('=').next()?.trim();
    if key.is_empty() || key.starts_with('#') {
        return None;
    }
    let table = lines[..line - 1].iter().rev().find_map(|l| header(l));
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_owned(),
    })
}

/// The 1-based line of `[table]` (or `[[table]]`) in a TOML text.
pub fn table_line(text: &str, table: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim();
            l == format!("[{table}]")
                || l == format!("[[{table}]]")
                || l.starts_with(&format!("[{table}."))
        })
        .map(|i| i + 1)
}

/// The 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Checks the file's text alone, with toml's spans: a syntax error, an unknown key or a value
/// of the wrong type is reported with its line and field.
fn check_file(path: &Path, text: &str) -> Result<(), LoadError> {
    toml::from_str::<GatewayConfig>(text)
        .map(drop)
        .map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            LoadError::File {
                path: path.to_owned(),
                line,
                field: line.and_then(|l| field_at(text, l)),
                report: e.to_string().trim_end().to_owned(),
            }
        })
}

/// The merged configuration of `file` (if any), the process environment and `flags`.
///
/// # Errors
///
/// [`LoadError`]: the file cannot be read or parsed (with its line and field), or a value from
/// the environment or the command line does not fit its setting.
pub fn load(file: Option<&Path>, flags: &Overrides) -> Result<GatewayConfig, LoadError> {
    figment(file, flags)?.extract().map_err(describe)
}

/// The [`Figment`] of the three sources, lowest first (for callers that want to inspect
/// where a value came from).
///
/// # Errors
///
/// The file cannot be read or parsed.
pub fn figment(file: Option<&Path>, flags: &Overrides) -> Result<Figment, LoadError> {
    let mut fig = Figment::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|error| LoadError::Read {
            path: path.to_owned(),
            error,
        })?;
        check_file(path, &text)?;
        fig = fig.merge(Toml::string(&text));
    }
    fig = fig.merge(
        Env::prefixed(ENV_PREFIX)
            .ignore(&["config"])
            .split(ENV_SEPARATOR),
    );
    if let Some(addr) = flags.listen {
        fig = fig.merge(Serialized::default("server.listen", addr.to_string()));
    }
    if !flags.upstreams.is_empty() {
        let list: Vec<std::collections::BTreeMap<&str, &str>> = flags
            .upstreams
            .iter()
            .map(|url| [("url", url.as_str())].into())
            .collect();
        fig = fig.merge(Serialized::default("upstreams", list));
    }
    if let Some(url) = &flags.redis {
        fig = fig.merge(Serialized::default("cache.redis_url", url));
    }
    if let Some(path) = &flags.audit_log {
        fig = fig.merge(Serialized::default("audit.path", path));
    }
    for (key, value) in &flags.set {
        let value: Value = value.parse().unwrap_or_else(|e| match e {});
        fig = fig.merge(Serialized::default(key, value));
    }
    Ok(fig)
}

/// figment's (first) error, without the value it found.
fn describe(e: figment::Error) -> LoadError {
    use figment::error::Kind;
    let field = e.path.join(".");
    let source = match &e.metadata {
        Some(md) if md.name.contains("environment") => format!(
            "environment variable {ENV_PREFIX}{}",
            e.path.join(ENV_SEPARATOR).to_ascii_uppercase()
        ),
        Some(md) if md.name.contains("TOML") => "the configuration file".to_owned(),
        Some(_) => "the command line (--set or a flag)".to_owned(),
        None => "the configuration".to_owned(),
    };
    let message = match &e.kind {
        Kind::InvalidType(_, expected) => format!("invalid type: expected {expected}"),
        Kind::InvalidValue(_, expected) => format!("invalid value: expected {expected}"),
        Kind::InvalidLength(n, expected) => format!("invalid length {n}: expected {expected}"),
        Kind::Message(_) => "invalid value".to_owned(),
        other => other.to_string(),
    };
    LoadError::Value {
        field,
        source,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_needs_a_path_and_a_value() {
        assert_eq!(
            Overrides::parse_set("retry.max_attempts=3").unwrap(),
            ("retry.max_attempts".to_owned(), "3".to_owned())
        );
        assert_eq!(Overrides::parse_set("a=b=c").unwrap().1, "b=c");
        assert!(Overrides::parse_set("novalue").is_err());
        assert!(Overrides::parse_set("=3").is_err());
    }

    #[test]
    fn the_field_at_a_line() {
        let text = "upstream = 1\n[retry]\n# note\nmax_attempts = 3\n[[keys]]\nsha256 = 'x'\n";
        assert_eq!(field_at(text, 1).as_deref(), Some("upstream"));
        assert_eq!(field_at(text, 2).as_deref(), Some("retry"));
        assert_eq!(field_at(text, 3), None);
        assert_eq!(field_at(text, 4).as_deref(), Some("retry.max_attempts"));
        assert_eq!(field_at(text, 6).as_deref(), Some("keys.sha256"));
        assert_eq!(table_line(text, "retry"), Some(2));
        assert_eq!(table_line(text, "keys"), Some(5));
        assert_eq!(table_line(text, "cache"), None);
    }

    #[test]
    fn line_numbers_are_one_based() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
    }
}
