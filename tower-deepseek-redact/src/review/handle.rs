//! [`ReviewHandle`]: feedback on calls, and the review layer's shared state.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use tokio::sync::Notify;
use tower_deepseek_core::protocol::TenantId;

use super::evaluate::EvalQueue;
use super::recent::RecentCalls;
use super::record::ScoreLine;
use super::sampler::Sampler;
use super::writer::Writer;
use crate::audit::rfc3339;
use crate::redactor::{RedactContext, Redactor};

/// The longest label a score may carry, in characters.
pub const MAX_LABEL_CHARS: usize = 64;
/// The longest comment a score may carry, in characters.
pub const MAX_COMMENT_CHARS: usize = 4000;

/// What the recent-call index knows of a call.
#[derive(Debug, Clone)]
pub(super) struct CallEntry {
    pub(super) tenant: Option<TenantId>,
    pub(super) model: Option<Arc<str>>,
}

/// Who scored a call.
#[derive(Debug, Clone, Copy)]
pub(super) enum Source<'a> {
    Human,
    Evaluator(&'a str),
}

pub(super) struct ReviewShared {
    pub(super) sampler: Sampler,
    pub(super) max_body_bytes: usize,
    pub(super) writer: Writer,
    pub(super) recent: RecentCalls,
    pub(super) eval: EvalQueue,
    pub(super) redactor: Redactor,
    /// Evaluations queued or running, and their wake-up for [`ReviewHandle::flush`].
    pub(super) pending: AtomicUsize,
    pub(super) settled: Notify,
}

impl fmt::Debug for ReviewShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReviewShared")
            .field("sampler", &self.sampler)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("eval", &self.eval)
            .finish_non_exhaustive()
    }
}

/// A metric label of a model: the name when it is a plain identifier, else `other` (the
/// model is the caller's text).
fn model_label(model: Option<&str>) -> String {
    match model {
        Some(m)
            if !m.is_empty()
                && m.len() <= 64
                && m.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-/".contains(&b)) =>
        {
            m.to_owned()
        }
        Some(_) => "other".to_owned(),
        None => "unknown".to_owned(),
    }
}

impl ReviewShared {
    pub(super) fn settle_one(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.settled.notify_waiters();
        }
    }

    /// Records a score: the histogram and a score record in the sink.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record_score(
        &self,
        request_id: &str,
        tenant: Option<&str>,
        model: Option<&str>,
        source: Source<'_>,
        score: f64,
        label: Option<&str>,
        comment: Option<&str>,
    ) {
        let (source_label, evaluator) = match source {
            Source::Human => ("human", None),
            Source::Evaluator(name) => ("evaluator", Some(name)),
        };
        metrics::histogram!(
            "deepseek_review_score",
            "model" => model_label(model),
            "tenant" => tenant.unwrap_or("none").to_owned(),
            "source" => source_label
        )
        .record(score);
        let line = ScoreLine {
            kind: "score",
            timestamp: rfc3339(SystemTime::now()),
            request_id,
            tenant,
            model,
            source: source_label,
            evaluator,
            score,
            label,
            comment,
        };
        self.writer
            .enqueue(serde_json::to_vec(&line).unwrap_or_default(), "score");
    }
}

/// The scale a feedback score is given on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[non_exhaustive]
pub enum ScoreScale {
    /// 0 (worst) to 1 (best), as recorded.
    #[serde(rename = "0-1")]
    Unit,
    /// 1 (worst) to 5 (best), recorded as `(score - 1) / 4`.
    #[serde(rename = "1-5")]
    FivePoint,
}

/// A score for one call, from a person (a user's thumbs, a reviewer's grade): the body of
/// the gateway's `POST /v1/feedback`.
///
/// `score` is on the 0–1 scale or on the 1–5 scale: without a `scale`, a score up to 1 is
/// read on the 0–1 scale and one above 1 (up to 5) on the 1–5 scale, so a 1 on the five-point
/// scale (its worst) must say `"scale": "1-5"`. Scores are recorded normalised to 0–1.
///
/// ```
/// use tower_deepseek_redact::review::Feedback;
///
/// let f: Feedback = serde_json::from_str(
///     r#"{"request_id":"4f2a","score":4,"label":"helpful","comment":"mail me at a@b.cn"}"#,
/// ).unwrap();
/// assert_eq!(f.normalised_score(), Ok(0.75));
/// ```
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Feedback {
    /// The call's request id (its `x-request-id`).
    pub request_id: String,
    /// The score.
    pub score: f64,
    /// The scale of `score` (see above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<ScoreScale>,
    /// A short label (up to [`MAX_LABEL_CHARS`] characters), redacted like a prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// A comment (up to [`MAX_COMMENT_CHARS`] characters), redacted like a prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl Feedback {
    /// A score for the call `request_id`.
    pub fn new(request_id: impl Into<String>, score: f64) -> Self {
        Self {
            request_id: request_id.into(),
            score,
            scale: None,
            label: None,
            comment: None,
        }
    }

    /// On this scale.
    #[must_use]
    pub fn scale(mut self, scale: ScoreScale) -> Self {
        self.scale = Some(scale);
        self
    }

    /// With a label.
    #[must_use]
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// With a comment.
    #[must_use]
    pub fn comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }

    /// The score on the 0–1 scale.
    ///
    /// # Errors
    ///
    /// [`FeedbackError::Invalid`] when it is not a number or outside its scale.
    pub fn normalised_score(&self) -> Result<f64, FeedbackError> {
        let s = self.score;
        let bad = FeedbackError::Invalid("score must be 0 to 1, or 1 to 5");
        if !s.is_finite() {
            return Err(bad);
        }
        match self.scale {
            Some(ScoreScale::Unit) if (0.0..=1.0).contains(&s) => Ok(s),
            Some(ScoreScale::FivePoint) if (1.0..=5.0).contains(&s) => Ok((s - 1.0) / 4.0),
            None if (0.0..=1.0).contains(&s) => Ok(s),
            None if s > 1.0 && s <= 5.0 => Ok((s - 1.0) / 4.0),
            _ => Err(bad),
        }
    }
}

/// Why feedback was refused. The message names no value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FeedbackError {
    /// No recent call has this request id (never seen, or older than `recent_call_ttl_ms`).
    /// A gateway answers 404.
    UnknownCall,
    /// The call belongs to another tenant. A gateway answers 403.
    OtherTenant,
    /// The feedback is malformed: the reason says how. A gateway answers 400.
    Invalid(&'static str),
}

impl fmt::Display for FeedbackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FeedbackError::UnknownCall => f.write_str(
                "no recent call has this request id: send the x-request-id of a call made within the feedback window",
            ),
            FeedbackError::OtherTenant => {
                f.write_str("this call was made with another tenant's key: score only your own calls")
            }
            FeedbackError::Invalid(reason) => write!(f, "invalid feedback: {reason}"),
        }
    }
}

impl std::error::Error for FeedbackError {}

/// What was recorded for accepted feedback.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FeedbackReceipt {
    /// The call's request id.
    pub request_id: String,
    /// The score, on the 0–1 scale.
    pub score: f64,
}

/// Records feedback and waits for the review sink; from
/// [`ReviewLayer::handle`](super::ReviewLayer::handle). Cheap to clone.
#[derive(Clone, Debug)]
pub struct ReviewHandle {
    pub(super) shared: Arc<ReviewShared>,
}

fn redact_field(
    redactor: &Redactor,
    text: &str,
    tenant: Option<&TenantId>,
    max: usize,
    what: &'static str,
) -> Result<String, FeedbackError> {
    if text.chars().count() > max {
        return Err(FeedbackError::Invalid(what));
    }
    let mut ctx = RedactContext::new(tenant.map(TenantId::as_str));
    match redactor.redact(text, &mut ctx) {
        Ok(Some(masked)) => Ok(masked),
        Ok(None) => Ok(text.to_owned()),
        Err(_) => Err(FeedbackError::Invalid(
            "the text holds personal data of a type that is refused",
        )),
    }
}

impl ReviewHandle {
    /// Records `feedback` from `tenant` (`None`: a caller without a tenant): validates it,
    /// checks that the call is a recent one of this tenant, redacts the label and comment
    /// with the layer's [`Redactor`], records the score in the `deepseek_review_score`
    /// histogram (`source="human"`) and writes a score record to the review sink. Calls are
    /// remembered whether they were sampled or not.
    ///
    /// # Errors
    ///
    /// [`FeedbackError`]: an unknown call, another tenant's call, or malformed feedback.
    pub fn feedback(
        &self,
        tenant: Option<&TenantId>,
        feedback: &Feedback,
    ) -> Result<FeedbackReceipt, FeedbackError> {
        let score = feedback.normalised_score()?;
        let label = match feedback.label.as_deref() {
            Some(l) if l.chars().any(char::is_control) => {
                return Err(FeedbackError::Invalid(
                    "label must not hold control characters",
                ));
            }
            Some(l) => Some(redact_field(
                &self.shared.redactor,
                l,
                tenant,
                MAX_LABEL_CHARS,
                "label must be at most 64 characters",
            )?),
            None => None,
        };
        let comment = match feedback.comment.as_deref() {
            Some(c) => Some(redact_field(
                &self.shared.redactor,
                c,
                tenant,
                MAX_COMMENT_CHARS,
                "comment must be at most 4000 characters",
            )?),
            None => None,
        };
        let entry = self
            .shared
            .recent
            .get(&feedback.request_id)
            .ok_or(FeedbackError::UnknownCall)?;
        if entry.tenant.as_ref() != tenant {
            return Err(FeedbackError::OtherTenant);
        }
        self.shared.record_score(
            &feedback.request_id,
            tenant.map(TenantId::as_str),
            entry.model.as_deref(),
            Source::Human,
            score,
            label.as_deref(),
            comment.as_deref(),
        );
        Ok(FeedbackReceipt {
            request_id: feedback.request_id.clone(),
            score,
        })
    }

    /// Whether a recent call has this request id, and of which tenant.
    pub fn recent_call(&self, request_id: &str) -> Option<Option<TenantId>> {
        self.shared.recent.get(request_id).map(|e| e.tenant)
    }

    /// Waits until the evaluations queued so far have run and every record queued so far has
    /// been written, then flushes the sink (call it on shutdown).
    ///
    /// # Errors
    ///
    /// The sink's flush failed, or its thread stopped.
    pub async fn flush(&self) -> std::io::Result<()> {
        loop {
            let wait = self.shared.settled.notified();
            tokio::pin!(wait);
            wait.as_mut().enable();
            if self.shared.pending.load(Ordering::Acquire) == 0 {
                break;
            }
            wait.await;
        }
        self.shared.writer.flush().await
    }

    /// Records dropped because the sink's queue was full.
    pub fn dropped_records(&self) -> u64 {
        self.shared.writer.dropped()
    }

    /// Records the sink failed to write.
    pub fn failed_writes(&self) -> u64 {
        self.shared.writer.failed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_normalised_and_validated() {
        let n = |s: f64, scale| {
            Feedback {
                scale,
                ..Feedback::new("id", s)
            }
            .normalised_score()
        };
        assert_eq!(n(0.3, None), Ok(0.3));
        assert_eq!(n(1.0, None), Ok(1.0));
        assert_eq!(n(5.0, None), Ok(1.0));
        assert_eq!(n(3.0, None), Ok(0.5));
        assert_eq!(n(1.0, Some(ScoreScale::FivePoint)), Ok(0.0));
        assert!(n(0.5, Some(ScoreScale::FivePoint)).is_err());
        assert!(n(2.0, Some(ScoreScale::Unit)).is_err());
        assert!(n(-0.1, None).is_err());
        assert!(n(5.5, None).is_err());
        assert!(n(f64::NAN, None).is_err());
        let e = n(9.0, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid feedback: score must be 0 to 1, or 1 to 5"
        );
    }

    #[test]
    fn model_labels_are_bounded() {
        assert_eq!(model_label(Some("deepseek-chat")), "deepseek-chat");
        assert_eq!(model_label(Some("a b")), "other");
        assert_eq!(model_label(None), "unknown");
    }
}
