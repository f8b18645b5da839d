//! Verifying the hash chain: [`verify_chain`] for one reader, [`verify_chain_files`] for a
//! log that spans rotated files (and restarts).

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::json::hex_lower;

/// A broken hash chain: the first line (1-based) that does not verify, and its file when the
/// log was read from files.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChainError {
    /// The file of the broken record ([`verify_chain_files`] only).
    pub file: Option<PathBuf>,
    /// 1-based line number of the first broken record (in its file).
    pub line: usize,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(
                f,
                "audit hash chain broken at {}:{}: {}",
                file.display(),
                self.line,
                self.reason
            ),
            None => write!(
                f,
                "audit hash chain broken at line {}: {}",
                self.line, self.reason
            ),
        }
    }
}

impl std::error::Error for ChainError {}

/// The length of `,"hash":"<64 hex>"}`.
const TAIL: usize = ",\"hash\":\"".len() + 64 + 2;

/// Splits a chained record into its canonical form (the line without its `hash` member) and
/// its stated hash.
fn split(line: &[u8]) -> Option<(Vec<u8>, &str)> {
    if line.len() < TAIL || !line.ends_with(b"\"}") {
        return None;
    }
    let (head, tail) = line.split_at(line.len() - TAIL);
    let hash = tail
        .strip_prefix(b",\"hash\":\"")
        .and_then(|t| t.strip_suffix(b"\"}"))?;
    let hash = std::str::from_utf8(hash).ok()?;
    let mut canonical = head.to_vec();
    canonical.push(b'}');
    Some((canonical, hash))
}

/// The `hash` a record states (for the chain to go on from it), if it has one.
pub(super) fn parse_hash(line: &[u8]) -> Option<[u8; 32]> {
    let (_, hash) = split(line)?;
    let mut out = [0; 32];
    hex::decode_to_slice(hash, &mut out).ok()?;
    Some(out)
}

/// Checks records one after another; the state carries over from file to file.
#[derive(Default)]
struct Verifier {
    prev: Option<String>,
    count: usize,
}

impl Verifier {
    fn line(&mut self, line: &[u8]) -> Result<(), &'static str> {
        if line.is_empty() {
            return Ok(());
        }
        let Some((canonical, hash)) = split(line) else {
            return Err("no hash");
        };
        if hex_lower(&Sha256::digest(&canonical)) != hash {
            return Err("record does not match its hash");
        }
        #[derive(serde::Deserialize)]
        struct Link {
            prev_hash: Option<String>,
        }
        let link: Link = serde_json::from_slice(&canonical).map_err(|_| "not a record")?;
        let Some(p) = link.prev_hash else {
            return Err("no prev_hash");
        };
        if let Some(expected) = &self.prev
            && *expected != p
        {
            return Err("prev_hash does not match the previous record");
        }
        self.prev = Some(hash.to_owned());
        self.count += 1;
        Ok(())
    }

    fn reader(&mut self, mut reader: impl BufRead, file: Option<&Path>) -> Result<(), ChainError> {
        let mut buf = Vec::new();
        let mut n = 0;
        loop {
            buf.clear();
            n += 1;
            let err = |reason| ChainError {
                file: file.map(Path::to_path_buf),
                line: n,
                reason,
            };
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(_) => return Err(err("unreadable")),
            }
            let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            self.line(line).map_err(err)?;
        }
    }
}

/// Verifies a hash-chained audit log; returns the number of records. The first record's
/// `prev_hash` is taken as given (a rotated file starts mid-chain); every other record must
/// link to the one before it, and every record's `hash` must match its content.
///
/// # Errors
///
/// [`ChainError`] with the first line that fails (unreadable lines included).
pub fn verify_chain(reader: impl BufRead) -> Result<usize, ChainError> {
    let mut v = Verifier::default();
    v.reader(reader, None)?;
    Ok(v.count)
}

/// Verifies one chain across several files given oldest first (`audit.jsonl.2`,
/// `audit.jsonl.1`, `audit.jsonl`): the first record of each file must link to the last record
/// of the file before it. Returns the number of records.
///
/// # Errors
///
/// [`VerifyFilesError::Broken`] with the file and line of the first record that fails, or
/// [`VerifyFilesError::Io`] when a file cannot be opened.
pub fn verify_chain_files<P: AsRef<Path>>(
    paths: impl IntoIterator<Item = P>,
) -> Result<usize, VerifyFilesError> {
    let mut v = Verifier::default();
    for p in paths {
        let p = p.as_ref();
        let f = File::open(p).map_err(|e| VerifyFilesError::Io {
            file: p.to_path_buf(),
            source: e,
        })?;
        v.reader(BufReader::new(f), Some(p))
            .map_err(VerifyFilesError::Broken)?;
    }
    Ok(v.count)
}

/// Why [`verify_chain_files`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum VerifyFilesError {
    /// The chain is broken.
    Broken(ChainError),
    /// A file could not be opened.
    Io {
        /// The file.
        file: PathBuf,
        /// The error.
        source: io::Error,
    },
}

impl fmt::Display for VerifyFilesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyFilesError::Broken(e) => e.fmt(f),
            VerifyFilesError::Io { file, source } => {
                write!(f, "cannot read {}: {source}", file.display())
            }
        }
    }
}

impl std::error::Error for VerifyFilesError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            VerifyFilesError::Broken(e) => Some(e),
            VerifyFilesError::Io { source, .. } => Some(source),
        }
    }
}
