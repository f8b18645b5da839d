//! [`Evaluator`]: the automatic evaluation hook, run off the request path on sampled calls;
//! the built-in [`JsonModeEvaluator`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};

use tokio::sync::{Semaphore, mpsc};

use super::answer::ReviewOutcome;
use super::handle::{ReviewShared, Source};
use super::record::ReviewedCall;

/// The future an [`Evaluator`] returns.
pub type EvaluationFuture<'a> = Pin<Box<dyn Future<Output = Option<Evaluation>> + Send + 'a>>;

/// Scores sampled calls automatically: a JSON-validity check, a call to a judge model, a
/// rule of the operator's.
///
/// The review layer runs every evaluator on every sampled call, on a task of its own, after
/// the call's answer has ended: a slow evaluator never delays a caller. Sampled calls wait in
/// a bounded queue (`evaluation_queue`); when it is full, the evaluation is skipped and
/// counted (`deepseek_review_dropped_total{what="evaluation"}`). A score is recorded like
/// feedback: the `deepseek_review_score{source="evaluator"}` histogram and a score record in
/// the review sink, with the call's request id.
///
/// The trait is object safe; the call is masked (see [`ReviewedCall`]).
///
/// ```
/// use tower_deepseek_redact::review::{Evaluation, EvaluationFuture, Evaluator, ReviewedCall};
///
/// /// Scores an empty answer 0.
/// struct NotEmpty;
///
/// impl Evaluator for NotEmpty {
///     fn name(&self) -> &str {
///         "not_empty"
///     }
///     fn evaluate<'a>(&'a self, call: &'a ReviewedCall) -> EvaluationFuture<'a> {
///         Box::pin(async move {
///             call.answer().content().trim().is_empty().then(|| Evaluation::new(0.0).label("empty"))
///         })
///     }
/// }
/// ```
pub trait Evaluator: Send + Sync + 'static {
    /// A short name, written in the score records (`evaluator`).
    fn name(&self) -> &str;

    /// Scores `call`: `None` when the evaluator has nothing to say about it.
    fn evaluate<'a>(&'a self, call: &'a ReviewedCall) -> EvaluationFuture<'a>;
}

const _: Option<&dyn Evaluator> = None;

/// The score an [`Evaluator`] gives a call: 0 (worst) to 1 (best), with an optional label.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Evaluation {
    /// 0 to 1; a score outside (or not a number) is not recorded.
    pub score: f64,
    /// A short label (`invalid_json`, `length`, …).
    pub label: Option<String>,
}

impl Evaluation {
    /// A score without a label.
    pub fn new(score: f64) -> Self {
        Self { score, label: None }
    }

    /// With a label.
    #[must_use]
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }
}

/// The built-in evaluator: answers cut by `finish_reason: "length"` score 0 (`length`);
/// answers to JSON-mode requests (`response_format: {"type":"json_object"}`) score 1 when
/// their content parses as JSON (`valid_json`) and 0 when it does not (`invalid_json`).
/// Other calls, and answers that did not arrive whole, are not scored.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonModeEvaluator;

impl JsonModeEvaluator {
    fn judge(call: &ReviewedCall) -> Option<Evaluation> {
        if call.outcome() != ReviewOutcome::Complete {
            return None;
        }
        let answer = call.answer();
        if answer
            .choices
            .iter()
            .any(|c| c.finish_reason.as_deref() == Some("length"))
        {
            return Some(Evaluation::new(0.0).label("length"));
        }
        if !call.json_mode() {
            return None;
        }
        let valid = !answer.choices.is_empty()
            && answer
                .choices
                .iter()
                .all(|c| serde_json::from_str::<serde::de::IgnoredAny>(&c.content).is_ok());
        Some(if valid {
            Evaluation::new(1.0).label("valid_json")
        } else {
            Evaluation::new(0.0).label("invalid_json")
        })
    }
}

impl Evaluator for JsonModeEvaluator {
    fn name(&self) -> &str {
        "json_mode"
    }

    fn evaluate<'a>(&'a self, call: &'a ReviewedCall) -> EvaluationFuture<'a> {
        Box::pin(std::future::ready(Self::judge(call)))
    }
}

/// The queue of sampled calls waiting for the evaluators, and its worker.
pub(super) struct EvalQueue {
    pub(super) evaluators: Vec<Arc<dyn Evaluator>>,
    capacity: usize,
    concurrency: usize,
    tx: OnceLock<mpsc::Sender<Arc<ReviewedCall>>>,
}

impl fmt::Debug for EvalQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.evaluators.iter().map(|e| e.name()).collect();
        f.debug_struct("EvalQueue")
            .field("evaluators", &names)
            .field("capacity", &self.capacity)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

impl EvalQueue {
    pub(super) fn new(
        evaluators: Vec<Arc<dyn Evaluator>>,
        capacity: usize,
        concurrency: usize,
    ) -> Self {
        Self {
            evaluators,
            capacity,
            concurrency,
            tx: OnceLock::new(),
        }
    }

    /// Queues `call` for the evaluators; never waits. The worker starts on the runtime of
    /// the first call that needs it.
    pub(super) fn submit(&self, shared: &Arc<ReviewShared>, call: Arc<ReviewedCall>) {
        if self.evaluators.is_empty() {
            return;
        }
        let skipped = || {
            metrics::counter!("deepseek_review_dropped_total", "what" => "evaluation").increment(1);
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            skipped();
            return;
        };
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel(self.capacity);
            rt.spawn(worker(rx, Arc::downgrade(shared), self.concurrency));
            tx
        });
        shared.pending.fetch_add(1, Ordering::AcqRel);
        if tx.try_send(call).is_err() {
            shared.settle_one();
            skipped();
        }
    }
}

async fn worker(
    mut rx: mpsc::Receiver<Arc<ReviewedCall>>,
    shared: Weak<ReviewShared>,
    concurrency: usize,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    while let Some(call) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let Some(s) = shared.upgrade() else {
            break;
        };
        tokio::spawn(async move {
            for ev in &s.eval.evaluators {
                if let Some(e) = ev.evaluate(&call).await {
                    if e.score.is_finite() && (0.0..=1.0).contains(&e.score) {
                        s.record_score(
                            call.request_id().as_str(),
                            call.tenant().map(|t| t.as_str()),
                            call.model(),
                            Source::Evaluator(ev.name()),
                            e.score,
                            e.label.as_deref(),
                            None,
                        );
                    } else {
                        metrics::counter!("deepseek_review_invalid_scores_total").increment(1);
                    }
                }
            }
            s.settle_one();
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::review::answer::{Answer, AnsweredChoice};
    use crate::review::record::SeenRequest;
    use tower_deepseek_core::chat::ChatRequest;
    use tower_deepseek_core::protocol::RequestId;

    fn call(json_mode: bool, content: &str, finish: &str, outcome: ReviewOutcome) -> ReviewedCall {
        let mut req: ChatRequest =
            serde_json::from_str(r#"{"model":"deepseek-chat","messages":[]}"#).unwrap();
        if json_mode {
            req.response_format = Some(serde_json::json!({"type": "json_object"}));
        }
        ReviewedCall {
            timestamp: SystemTime::now(),
            request_id: RequestId::generate(),
            tenant: None,
            route: "/chat/completions".into(),
            model: Some("deepseek-chat".into()),
            status: Some(200),
            outcome,
            latency_ms: 1,
            request: SeenRequest::Chat(Box::new(req)),
            answer: Answer {
                model: None,
                choices: vec![AnsweredChoice {
                    content: content.into(),
                    finish_reason: Some(finish.into()),
                    ..AnsweredChoice::default()
                }],
                usage: None,
            },
            answer_text: None,
        }
    }

    fn score(c: &ReviewedCall) -> Option<f64> {
        JsonModeEvaluator::judge(c).map(|e| e.score)
    }

    #[test]
    fn json_mode_answers_are_scored() {
        use ReviewOutcome::*;
        assert_eq!(
            score(&call(true, r#"{"a":1}"#, "stop", Complete)),
            Some(1.0)
        );
        assert_eq!(score(&call(true, r#"{"a":1"#, "stop", Complete)), Some(0.0));
        assert_eq!(
            score(&call(true, r#"{"a":1}"#, "length", Complete)),
            Some(0.0)
        );
        assert_eq!(score(&call(false, "text", "length", Complete)), Some(0.0));
        assert_eq!(score(&call(false, "text", "stop", Complete)), None);
        assert_eq!(score(&call(true, "{", "stop", Incomplete)), None);
    }
}
