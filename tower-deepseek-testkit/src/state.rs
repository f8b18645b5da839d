//! State shared by the server's tasks and every clone of the handle.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::fault::{Fault, Match};
use crate::record::RecordedRequest;

/// The server's life cycle, observed by every task through a `watch` channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Running,
    /// `shutdown` was called: stop accepting, finish what is in flight, end hangs.
    Draining,
    /// Drop everything now.
    Stopped,
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) api_keys: Vec<String>,
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
    pub(crate) token_lifetime: Duration,
    pub(crate) omit_expires_in: bool,
    pub(crate) require_auth: bool,
    pub(crate) stream_chunk_delay: Duration,
}

#[derive(Debug, Default)]
struct FaultBook {
    queue: VecDeque<Fault>,
    once: Vec<(Match, Fault)>,
    always: Vec<(Match, Fault)>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    faults: Mutex<FaultBook>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// Valid tokens and their expiry.
    tokens: Mutex<HashMap<String, Instant>>,
    /// Hashes of every message prefix answered so far (for prompt-cache figures).
    prefixes: Mutex<HashSet<[u8; 32]>>,
    pub(crate) token_fetches: AtomicUsize,
    pub(crate) tokens_issued: AtomicUsize,
    pub(crate) connections: AtomicUsize,
    seq: AtomicU64,
    seed: [u8; 32],
    pub(crate) phase: watch::Sender<Phase>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not make every later assertion panic too.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new(config: Config, seed_material: &[u8]) -> Shared {
        let mut h = Sha256::new();
        h.update(seed_material);
        if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            h.update(now.as_nanos().to_le_bytes());
        }
        Shared {
            config,
            faults: Mutex::default(),
            requests: Mutex::default(),
            tokens: Mutex::default(),
            prefixes: Mutex::default(),
            token_fetches: AtomicUsize::new(0),
            tokens_issued: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            seq: AtomicU64::new(0),
            seed: h.finalize().into(),
            phase: watch::Sender::new(Phase::Running),
        }
    }

    /// A fresh, unique, random-looking hex string of `len` (at most 64) characters.
    pub(crate) fn unique_hex(&self, len: usize) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut h = Sha256::new();
        h.update(self.seed);
        h.update(n.to_le_bytes());
        let mut s = hex::encode(h.finalize());
        s.truncate(len);
        s
    }

    // ---- faults

    pub(crate) fn enqueue(&self, fault: Fault) {
        lock(&self.faults).queue.push_back(fault);
    }

    pub(crate) fn enqueue_when(&self, matcher: Match, fault: Fault) {
        lock(&self.faults).once.push((matcher, fault));
    }

    pub(crate) fn always(&self, matcher: Match, fault: Fault) {
        lock(&self.faults).always.push((matcher, fault));
    }

    pub(crate) fn clear_faults(&self) {
        *lock(&self.faults) = FaultBook::default();
    }

    /// The fault for this request: first matching one-shot rule, else the FIFO queue (not
    /// for the token endpoint), else the first matching `always` rule.
    pub(crate) fn take_fault(&self, req: &RecordedRequest, is_token: bool) -> Option<Fault> {
        let mut book = lock(&self.faults);
        if let Some(i) = book.once.iter().position(|(m, _)| m.matches(req)) {
            return Some(book.once.remove(i).1);
        }
        if !is_token {
            if let Some(fault) = book.queue.pop_front() {
                return Some(fault);
            }
        }
        book.always
            .iter()
            .find(|(m, _)| m.matches(req))
            .map(|(_, f)| f.clone())
    }

    // ---- requests

    pub(crate) fn record(&self, req: RecordedRequest) {
        lock(&self.requests).push(req);
    }

    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.requests).clone()
    }

    pub(crate) fn count_requests(&self, pred: impl Fn(&RecordedRequest) -> bool) -> usize {
        lock(&self.requests).iter().filter(|r| pred(r)).count()
    }

    pub(crate) fn clear_requests(&self) {
        lock(&self.requests).clear();
    }

    // ---- tokens

    pub(crate) fn issue_token(&self) -> String {
        let token = format!("mock_at_{}", self.unique_hex(40));
        let expiry = Instant::now() + self.config.token_lifetime;
        lock(&self.tokens).insert(token.clone(), expiry);
        self.tokens_issued.fetch_add(1, Ordering::SeqCst);
        token
    }

    pub(crate) fn token_valid(&self, token: &str) -> bool {
        lock(&self.tokens)
            .get(token)
            .is_some_and(|expiry| Instant::now() < *expiry)
    }

    pub(crate) fn revoke_tokens(&self) {
        lock(&self.tokens).clear();
    }

    // ---- prompt cache

    /// Records every prefix in `hashes` and returns how many leading ones were seen before.
    pub(crate) fn seen_prefix(&self, hashes: &[[u8; 32]]) -> usize {
        let mut seen = lock(&self.prefixes);
        let hit = hashes.iter().take_while(|h| seen.contains(*h)).count();
        seen.extend(hashes.iter().copied());
        hit
    }
}
