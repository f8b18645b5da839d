//! [`AuditLayer`] and [`AuditLayerBuilder`]; the state they share with every call
//! (`AuditShared`: the sinks, the key, the chains) and [`AuditHandle`].

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::{Digest, Sha256};
use tower_deepseek_core::classify::Classifier;
use tower_layer::Layer;

use super::config::SinkFailurePolicy;
use super::json::{hex_into, to_json};
use super::record::Facts;
use super::service::Audit;
use super::sink::{AuditSink, TracingSink};
use crate::ConfigError;

pub(super) struct AuditShared {
    pub(super) sinks: Vec<Arc<dyn AuditSink>>,
    /// The HMAC keyed once (its pads computed); cloned per use.
    pub(super) mac: Hmac<Sha256>,
    pub(super) chain: bool,
    pub(super) policy: SinkFailurePolicy,
    pub(super) failed: AtomicBool,
    /// Records a sink could not take.
    pub(super) failed_writes: AtomicU64,
    /// Held while the sinks are probed after a failure.
    pub(super) probing: Mutex<()>,
    /// The hash of the last record written to each sink (one chain per sink); the lock
    /// also keeps records in the same order in every sink.
    pub(super) writer: Mutex<Vec<[u8; 32]>>,
    pub(super) classifier: Classifier,
}

impl AuditShared {
    pub(super) fn mac(&self) -> Hmac<Sha256> {
        self.mac.clone()
    }

    /// A keyed hash's first 8 bytes (16 hex digits in the record).
    pub(super) fn short_hash(&self, domain: &[u8], value: &[u8]) -> [u8; 8] {
        let mut m = self.mac();
        m.update(domain);
        m.update(value);
        let mut h = [0; 8];
        h.copy_from_slice(&m.finalize().into_bytes()[..8]);
        h
    }

    /// Writes the record to every sink; whether every sink took it. A sink's chain moves on
    /// only when it took the record, so a failed write leaves no gap in the chain.
    pub(super) fn write(&self, facts: &Facts) -> bool {
        let mut prevs = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut ok = true;
        let plain = (!self.chain).then(|| to_json(facts, None));
        for (s, prev) in self.sinks.iter().zip(prevs.iter_mut()) {
            let result = match &plain {
                Some(line) => s.write(line),
                None => {
                    let mut line = to_json(facts, Some(prev));
                    let h: [u8; 32] = Sha256::digest(&line).into();
                    line.pop();
                    line.extend_from_slice(b",\"hash\":\"");
                    hex_into(&mut line, &h);
                    line.extend_from_slice(b"\"}");
                    let r = s.write(&line);
                    if r.is_ok() {
                        *prev = h;
                    }
                    r
                }
            };
            if let Err(e) = result {
                ok = false;
                self.failed_writes.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("deepseek_audit_sink_errors_total").increment(1);
                match self.policy {
                    SinkFailurePolicy::FailOpen => {
                        tracing::error!(target: "tower_deepseek_redact", error_kind = ?e.kind(), policy = ?self.policy, "audit record could not be written; the call is served without it (fail open)");
                    }
                    _ => {
                        tracing::error!(target: "tower_deepseek_redact", error_kind = ?e.kind(), policy = ?self.policy, "audit record could not be written; the call fails and new calls are refused until the sink recovers (fail closed)");
                    }
                }
            }
        }
        drop(prevs);
        if ok {
            metrics::counter!("deepseek_audit_records_total").increment(1);
        } else {
            self.failed.store(true, Ordering::Release);
        }
        ok
    }

    /// Whether a call whose record was not written must fail.
    pub(super) fn fail_closed(&self) -> bool {
        self.policy != SinkFailurePolicy::FailOpen
    }

    pub(super) fn flush(&self) -> io::Result<()> {
        let mut first_err = None;
        for s in &self.sinks {
            if let Err(e) = s.flush() {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => {
                self.failed.store(true, Ordering::Release);
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Fail closed: whether calls must be refused now.
    pub(super) fn refuse(&self) -> bool {
        if self.policy == SinkFailurePolicy::FailOpen || !self.failed.load(Ordering::Acquire) {
            return false;
        }
        // Probe: a sink that can take records again is back. One probe at a time: calls that
        // arrive meanwhile are refused rather than each paying for a probe.
        let recovered = match self.probing.try_lock() {
            Ok(_probing) => self.sinks.iter().all(|s| s.probe().is_ok()),
            Err(_) => false,
        };
        if recovered {
            self.failed.store(false, Ordering::Release);
            false
        } else {
            metrics::counter!("deepseek_audit_refused_total").increment(1);
            true
        }
    }
}

/// Flushes the audit sinks; get it from [`AuditLayer::handle`] and call it on shutdown.
#[derive(Clone)]
pub struct AuditHandle {
    pub(super) shared: Arc<AuditShared>,
}

impl fmt::Debug for AuditHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditHandle").finish_non_exhaustive()
    }
}

impl AuditHandle {
    /// Flushes every sink.
    ///
    /// # Errors
    ///
    /// The first sink error.
    pub fn flush(&self) -> io::Result<()> {
        self.shared.flush()
    }

    /// Flushes every sink before shutdown (same as [`flush`](Self::flush)).
    ///
    /// # Errors
    ///
    /// The first sink error.
    pub fn shutdown(&self) -> io::Result<()> {
        self.shared.flush()
    }

    /// Whether the sinks take records now (for a readiness check): after a failed write, each
    /// sink is probed as a fail-closed layer does before it serves again (a sink that passes is
    /// back for the layer too); then every sink is flushed. Never writes a record.
    ///
    /// # Errors
    ///
    /// The first probe or flush error.
    pub fn check(&self) -> io::Result<()> {
        let s = &self.shared;
        if s.failed.load(Ordering::Acquire) {
            let _probing = s.probing.lock().unwrap_or_else(|e| e.into_inner());
            for sink in &s.sinks {
                sink.probe()?;
            }
            s.failed.store(false, Ordering::Release);
        }
        s.flush()
    }

    /// Records that a sink could not take, since the layer was built (under either policy).
    pub fn failed_writes(&self) -> u64 {
        self.shared.failed_writes.load(Ordering::Relaxed)
    }
}

/// Writes one audit record per call. See the [module docs](super).
#[derive(Clone)]
pub struct AuditLayer {
    shared: Arc<AuditShared>,
}

impl fmt::Debug for AuditLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLayer")
            .field("sinks", &self.shared.sinks.len())
            .field("chain", &self.shared.chain)
            .field("policy", &self.shared.policy)
            .finish_non_exhaustive()
    }
}

/// Builds an [`AuditLayer`]. Defaults: a [`TracingSink`], no hash chain, fail closed.
#[must_use]
pub struct AuditLayerBuilder {
    sinks: Vec<Arc<dyn AuditSink>>,
    key: Option<SecretSlice<u8>>,
    chain: bool,
    policy: SinkFailurePolicy,
}

impl fmt::Debug for AuditLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLayerBuilder").finish_non_exhaustive()
    }
}

impl AuditLayerBuilder {
    /// Adds a sink (records go to every sink).
    pub fn sink(mut self, sink: impl AuditSink) -> Self {
        self.sinks.push(Arc::new(sink));
        self
    }

    /// The secret (at least 16 bytes) that keys the prompt, tenant and key hashes. Required.
    pub fn hmac_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(SecretSlice::from(key.into()));
        self
    }

    /// Chains records with `prev_hash`/`hash`.
    pub fn hash_chain(mut self, on: bool) -> Self {
        self.chain = on;
        self
    }

    /// What to do when a sink fails.
    pub fn on_sink_failure(mut self, policy: SinkFailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] without an HMAC key of at least 16 bytes.
    pub fn build(mut self) -> Result<AuditLayer, ConfigError> {
        let key = self
            .key
            .filter(|k| k.expose_secret().len() >= 16)
            .ok_or_else(|| ConfigError::new("hmac_key", "must be at least 16 bytes"))?;
        if self.sinks.is_empty() {
            self.sinks.push(Arc::new(TracingSink));
        }
        // Each sink's chain goes on from the last record it already holds.
        let tails = self
            .sinks
            .iter()
            .map(|s| s.chain_tail().unwrap_or([0; 32]))
            .collect();
        Ok(AuditLayer {
            shared: Arc::new(AuditShared {
                sinks: self.sinks,
                mac: Hmac::<Sha256>::new_from_slice(key.expose_secret()).expect("any key length"),
                chain: self.chain,
                policy: self.policy,
                failed: AtomicBool::new(false),
                failed_writes: AtomicU64::new(0),
                probing: Mutex::new(()),
                writer: Mutex::new(tails),
                classifier: Classifier::new(),
            }),
        })
    }
}

impl AuditLayer {
    /// A builder.
    pub fn builder() -> AuditLayerBuilder {
        AuditLayerBuilder {
            sinks: Vec::new(),
            key: None,
            chain: false,
            policy: SinkFailurePolicy::FailClosed,
        }
    }

    /// A handle to flush the sinks on shutdown.
    pub fn handle(&self) -> AuditHandle {
        AuditHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;

    fn layer(&self, inner: S) -> Audit<S> {
        Audit {
            inner,
            shared: self.shared.clone(),
        }
    }
}
