//! The record: [`AuditRecord`] (its schema), `Facts` (a record as the call gathers it), and
//! `Pending` (what is known when the call starts, finished into a record when it ends).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use hmac::Mac;
use tower_deepseek_core::classify::{FailureClass, ResponseSummary};
use tower_deepseek_core::meta::RequestId;
use tower_deepseek_core::protocol::{CallCost, Money};
use tower_deepseek_core::view::{ChatView, ViewSlot};

use super::layer::AuditShared;
use super::recorder::PromptRecorder;
use crate::redactor::PiiCounts;

/// One audit record: the schema of the JSON lines the layer writes (it writes them directly,
/// byte for byte what serde writes for this type), and the type to read them back into. See the
/// [module docs](super) for where each field comes from.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct AuditRecord {
    /// RFC 3339 UTC time the call started.
    pub timestamp: String,
    /// The request id.
    pub request_id: Option<String>,
    /// The client's IP address.
    pub client_ip: Option<String>,
    /// Keyed hash (16 hex digits) of the tenant id.
    pub tenant: Option<String>,
    /// Keyed hash (16 hex digits) of the `Authorization` header.
    pub key_id: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Request path (without query).
    pub endpoint: String,
    /// The model that answered (or was asked for).
    pub model: Option<String>,
    /// HMAC-SHA-256 (hex) of the request body sent upstream.
    pub prompt_hash: Option<String>,
    /// Response status, if a response came.
    pub status: Option<u16>,
    /// `ok`, a failure class label, or `cancelled`.
    pub outcome: String,
    /// Milliseconds from the call to the end of the response.
    pub latency_ms: u64,
    /// Prompt tokens.
    pub prompt_tokens: Option<u64>,
    /// Completion tokens.
    pub completion_tokens: Option<u64>,
    /// Prompt tokens served from DeepSeek's cache.
    pub cache_hit_tokens: Option<u64>,
    /// PII entities masked, by type.
    pub pii: BTreeMap<String, u32>,
    /// The `x-cache` response header (`hit`, `miss`, ...).
    pub cache: Option<String>,
    /// The `x-retry-attempts` response header.
    pub retries: Option<u32>,
    /// The `x-breaker-state` response header.
    pub breaker: Option<String>,
    /// What the call cost, an exact decimal (`"0.000798"`), when a cost layer below priced it
    /// (core's [`CallCost`](tower_deepseek_core::protocol::CallCost)); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<String>,
    /// The currency of `cost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Hash of the previous record (hash chain only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev_hash: Option<String>,
    /// Hash of this record (hash chain only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// A record as it is gathered during the call, in the forms the call has its facts (the
/// request id shared, the method, the time and the hashes as bytes, the outcome as a static
/// label): no owned copy of each value per call. [`to_json`](super::json::to_json) writes it once as the JSON line of
/// the equivalent [`AuditRecord`].
pub(super) struct Facts {
    pub(super) timestamp: [u8; 24],
    pub(super) request_id: Option<RequestId>,
    pub(super) client_ip: Option<IpAddr>,
    pub(super) tenant: Option<[u8; 8]>,
    pub(super) key_id: Option<[u8; 8]>,
    pub(super) method: http::Method,
    pub(super) endpoint: String,
    pub(super) model: Option<String>,
    pub(super) prompt_hash: Option<[u8; 32]>,
    pub(super) status: Option<u16>,
    pub(super) outcome: &'static str,
    pub(super) latency_ms: u64,
    pub(super) prompt_tokens: Option<u64>,
    pub(super) completion_tokens: Option<u64>,
    pub(super) cache_hit_tokens: Option<u64>,
    pub(super) pii: Option<PiiCounts>,
    pub(super) cache: Option<String>,
    pub(super) retries: Option<u32>,
    pub(super) breaker: Option<Cow<'static, str>>,
    pub(super) cost: Option<(Money, Arc<str>)>,
}

/// What is known when the call starts.
pub(super) struct Pending {
    pub(super) shared: Arc<AuditShared>,
    pub(super) record: Facts,
    pub(super) started: Instant,
    pub(super) recorder: PromptRecorder,
    /// The cost slot a cost layer below put on the response head.
    pub(super) cost: Option<CallCost>,
    /// The view of the body sent, left by a layer below that parsed it.
    pub(super) views: ViewSlot,
}

impl Pending {
    /// Writes the record; `false` when it could not be written and the policy is fail closed
    /// (the call must fail).
    pub(super) fn finish(
        mut self: Box<Self>,
        status: Option<u16>,
        outcome: &'static str,
        summary: Option<Cow<'_, ResponseSummary>>,
    ) -> bool {
        // Borrowed in place: moving the record out of the box would copy it.
        let Pending {
            shared,
            record,
            started,
            recorder,
            cost,
            views,
        } = &mut *self;
        let r = &mut *record;
        // Filled by the cost layer below before the body's end came up to this layer.
        r.cost = cost
            .as_ref()
            .and_then(CallCost::get)
            .map(|c| (c.amount, c.currency.clone()));
        r.status = status;
        r.outcome = outcome;
        r.latency_ms = started.elapsed().as_millis() as u64;
        if let Some(s) = summary {
            if let Some(u) = &s.usage {
                r.prompt_tokens = Some(u.prompt_tokens);
                r.completion_tokens = Some(u.completion_tokens);
                r.cache_hit_tokens = u.prompt_cache_hit_tokens.or_else(|| {
                    u.prompt_tokens_details
                        .as_ref()
                        .and_then(|d| d.cached_tokens)
                });
            }
            if s.model.is_some() {
                // Moved when this layer classified the body itself; copied from a shared one.
                r.model = match s {
                    Cow::Owned(s) => s.model,
                    Cow::Borrowed(s) => s.model.clone(),
                };
            }
        }
        let (upstream, seen, pii) = {
            let mut g = recorder.lock();
            let upstream = g.upstream.take();
            let seen = match (&upstream, g.overflow) {
                (None, false) => g
                    .seen_first
                    .take()
                    .map(|first| (first, std::mem::take(&mut g.seen_more))),
                _ => None,
            };
            (upstream, seen, g.pii.take())
        };
        // The body sent upstream (recorded by the redact layer), else the chunks this layer's
        // inner service read: hashed chunk by chunk, joined only for the model fallback.
        let body: Option<(Bytes, Vec<Bytes>)> = upstream.map(|b| (b, Vec::new())).or(seen);
        if let Some((first, more)) = body {
            let mut m = shared.mac();
            m.update(&first);
            for c in &more {
                m.update(c);
            }
            r.prompt_hash = Some(m.finalize().into_bytes().into());
            if r.model.is_none() {
                // The view a layer below built of these very bytes, else a parse here (the
                // body reached no layer that reads it).
                let view = views
                    .get()
                    .filter(|v| more.is_empty() && v.describes(&first));
                let view = match view {
                    Some(v) => Some(v),
                    None if more.is_empty() => ChatView::parse(first).ok(),
                    None => {
                        let mut all = BytesMut::with_capacity(
                            first.len() + more.iter().map(Bytes::len).sum::<usize>(),
                        );
                        all.extend_from_slice(&first);
                        for c in &more {
                            all.extend_from_slice(c);
                        }
                        ChatView::parse(all.freeze()).ok()
                    }
                };
                r.model = view
                    .as_ref()
                    .and_then(ChatView::model)
                    .filter(|m| m.len() <= 128)
                    .map(Cow::into_owned);
            }
        }
        r.pii = pii;
        if shared.write(record) || !shared.fail_closed() {
            return true;
        }
        recorder.lock().unwritten = true;
        false
    }
}

/// Writes a `cancelled` record if dropped while still holding the pending record.
pub(super) struct Guard(pub(super) Option<Box<Pending>>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            // Nobody is left to fail.
            let _ = p.finish(None, "cancelled", None);
        }
    }
}

pub(super) fn outcome_of(r: &Result<(), FailureClass>) -> &'static str {
    match r {
        Ok(()) => "ok",
        Err(c) => c.as_str(),
    }
}
