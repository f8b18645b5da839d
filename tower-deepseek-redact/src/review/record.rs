//! [`ReviewedCall`]: one sampled call as the review layer saw it; the JSON lines of the
//! review sink.

use std::time::SystemTime;

use serde::Serialize;
use tower_deepseek_core::chat::ChatRequest;
use tower_deepseek_core::protocol::{RequestId, TenantId};

use super::answer::{Answer, ReviewOutcome};
use crate::audit::rfc3339;

/// The request of a reviewed call: parsed, or why not.
#[derive(Debug, Clone)]
pub(super) enum SeenRequest {
    Chat(Box<ChatRequest>),
    NotChat,
    TooLarge,
    Unseen,
}

/// One sampled call, masked: the request as the layers above sent it on (after redaction)
/// and the answer as the layers below returned it (before placeholders are restored). What
/// an [`Evaluator`](super::Evaluator) reads.
#[derive(Debug, Clone)]
pub struct ReviewedCall {
    pub(super) timestamp: SystemTime,
    pub(super) request_id: RequestId,
    pub(super) tenant: Option<TenantId>,
    pub(super) route: String,
    pub(super) model: Option<String>,
    pub(super) status: Option<u16>,
    pub(super) outcome: ReviewOutcome,
    pub(super) latency_ms: u64,
    pub(super) request: SeenRequest,
    pub(super) answer: Answer,
    pub(super) answer_text: Option<String>,
}

impl ReviewedCall {
    /// The call's request id (core's [`RequestId`], the one the audit record carries).
    pub fn request_id(&self) -> &RequestId {
        &self.request_id
    }

    /// The tenant (core's [`TenantId`]), when the request carried one.
    pub fn tenant(&self) -> Option<&TenantId> {
        self.tenant.as_ref()
    }

    /// The request path.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The requested model.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// The response status (none when the call failed before a response).
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// How the answer ended.
    pub fn outcome(&self) -> ReviewOutcome {
        self.outcome
    }

    /// The chat request (masked), when the body was one.
    pub fn request(&self) -> Option<&ChatRequest> {
        match &self.request {
            SeenRequest::Chat(r) => Some(r),
            _ => None,
        }
    }

    /// Whether the request asked for a JSON answer (`response_format: {"type":"json_object"}`).
    pub fn json_mode(&self) -> bool {
        self.request()
            .and_then(|r| r.response_format.as_ref())
            .and_then(|f| f.get("type"))
            .and_then(|t| t.as_str())
            == Some("json_object")
    }

    /// The answer (masked).
    pub fn answer(&self) -> &Answer {
        &self.answer
    }

    /// The raw text of an answer that could not be read as a completion (an error body, a
    /// page that is not JSON), up to the layer's byte limit.
    pub fn answer_text(&self) -> Option<&str> {
        self.answer_text.as_deref()
    }

    pub(super) fn to_line(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Line<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            timestamp: String,
            request_id: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            tenant: Option<&'a str>,
            route: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            model: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            status: Option<u16>,
            outcome: &'static str,
            latency_ms: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            request: Option<&'a ChatRequest>,
            #[serde(skip_serializing_if = "Option::is_none")]
            request_outcome: Option<&'static str>,
            answer: &'a Answer,
            #[serde(skip_serializing_if = "Option::is_none")]
            answer_text: Option<&'a str>,
        }
        // A body that is not a chat request is not kept: it may not have been masked.
        let (request, request_outcome) = match &self.request {
            SeenRequest::Chat(r) => (Some(&**r), None),
            SeenRequest::NotChat => (None, Some("not_chat")),
            SeenRequest::TooLarge => (None, Some("too_large")),
            SeenRequest::Unseen => (None, Some("unseen")),
        };
        let line = Line {
            kind: "call",
            timestamp: rfc3339(self.timestamp),
            request_id: self.request_id.as_str(),
            tenant: self.tenant.as_ref().map(TenantId::as_str),
            route: &self.route,
            model: self.model.as_deref(),
            status: self.status,
            outcome: self.outcome.as_str(),
            latency_ms: self.latency_ms,
            request,
            request_outcome,
            answer: &self.answer,
            answer_text: self.answer_text.as_deref(),
        };
        serde_json::to_vec(&line).unwrap_or_default()
    }
}

/// A score record: feedback or an evaluation, linked to its call by the request id.
#[derive(Serialize)]
pub(super) struct ScoreLine<'a> {
    #[serde(rename = "type")]
    pub(super) kind: &'static str,
    pub(super) timestamp: String,
    pub(super) request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) tenant: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) model: Option<&'a str>,
    pub(super) source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) evaluator: Option<&'a str>,
    pub(super) score: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) label: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) comment: Option<&'a str>,
}
