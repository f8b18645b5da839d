//! [`PromptRecorder`]: how [`RedactLayer`](crate::RedactLayer) hands the body it sent and its
//! PII counts to the audit layer above it; [`RequestTap`], which sees the request body as the
//! inner service reads it.

use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tower_deepseek_core::body::{BodyEnd, BodyObserver, ObservedBody};

#[cfg(doc)]
use super::{Audit, AuditLayer};
use crate::redactor::PiiCounts;

/// A slot in the request's extensions through which [`crate::RedactLayer`] hands the body it
/// sent upstream (masked) and its PII counts to [`AuditLayer`] above it.
#[derive(Clone, Default)]
pub struct PromptRecorder {
    inner: Arc<Mutex<Recorded>>,
}

#[derive(Default)]
pub(super) struct Recorded {
    pub(super) upstream: Option<Bytes>,
    pub(super) pii: Option<PiiCounts>,
    /// The record of the call could not be written (fail closed: the answer must not
    /// complete).
    pub(super) unwritten: bool,
    /// The body as this layer's inner service read it: its first chunk (most bodies are
    /// one), then the others; kept as shared handles, never copied.
    pub(super) seen_first: Option<Bytes>,
    pub(super) seen_more: Vec<Bytes>,
    pub(super) seen_len: usize,
    pub(super) overflow: bool,
}

const MAX_SEEN: usize = 8 * 1024 * 1024;

impl fmt::Debug for PromptRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PromptRecorder").finish_non_exhaustive()
    }
}

impl PromptRecorder {
    /// Records the body as sent upstream.
    pub fn record(&self, body: Bytes) {
        self.lock().upstream = Some(body);
    }

    /// Records the PII counts of the request.
    pub fn record_pii(&self, counts: &PiiCounts) {
        self.lock().pii = Some(counts.clone());
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Observes the request body as the inner service reads it (no copy: `Bytes` handles).
#[derive(Debug)]
pub struct RequestTap {
    pub(super) recorder: PromptRecorder,
}

impl BodyObserver for RequestTap {
    fn on_data(&mut self, chunk: &Bytes) {
        let mut g = self.recorder.lock();
        if g.overflow {
            return;
        }
        g.seen_len += chunk.len();
        if g.seen_len > MAX_SEEN {
            g.overflow = true;
            g.seen_first = None;
            g.seen_more = Vec::new();
        } else if g.seen_first.is_none() {
            g.seen_first = Some(chunk.clone());
        } else {
            g.seen_more.push(chunk.clone());
        }
    }

    fn on_end(&mut self, _end: BodyEnd<'_>) {}
}

/// The request body the inner service of [`Audit`] receives.
pub type AuditRequestBody<B> = ObservedBody<B, RequestTap>;
