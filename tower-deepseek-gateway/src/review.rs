//! The guide's quality metrics in the gateway: the `[review]` table onto the library's
//! review layer (sampling into a JSON Lines file, the built-in evaluator), and
//! `POST /v1/feedback`.
//!
//! ```toml
//! [review]
//! path = "/var/log/deepseek/review.jsonl"   # required: the review file (rotated like audit's)
//! max_bytes = 104857600                     # rotate at this size (default 100 MiB)
//! keep = 10                                 # rotated files kept (default 10)
//! fsync_interval_ms = 1000                  # default 1000
//! # every key of tower_deepseek_redact::review::ReviewConfig:
//! json_mode_evaluator = true
//! recent_call_ttl_ms = 86400000
//! [[review.rules]]
//! tenant = "acme"
//! fraction = 1.0
//! [[review.rules]]
//! model = "deepseek-reasoner"
//! fraction = 0.05
//! ```
//!
//! Without a `[review]` table nothing is sampled and `/v1/feedback` is not served (404).
//!
//! `POST /v1/feedback` takes `{"request_id","score","scale","label","comment"}` (see
//! [`Feedback`]) with the same client keys as the proxied routes; a client may score only
//! the calls made with a key of its own tenant. Answers: 200 with the recorded score, 401
//! without an allowed key, 400 for a malformed body or score, 404 for a request id the
//! gateway does not know (never seen, or older than `recent_call_ttl_ms`), 403 for another
//! tenant's call; errors in the OpenAI shape.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::post;
use http::{Request, Response, StatusCode};
use serde::{Deserialize, Deserializer};
use tower_deepseek::redact::audit::{JsonlFileSink, WriterSink};
use tower_deepseek::redact::review::{Feedback, FeedbackError, ReviewConfig, ReviewHandle};
use tower_deepseek::redact::{RedactLayer, ReviewLayer};

use crate::StartError;
use crate::config::GatewayConfig;
use crate::{error, inbound, telemetry};

/// The largest feedback body read, in bytes.
const MAX_FEEDBACK_BYTES: usize = 64 * 1024;
const ROUTE: &str = "/v1/feedback";

/// The `[review]` table: the review file and the review layer's settings. See the
/// [module docs](self).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReviewTable {
    /// The JSON Lines file of review records (required).
    pub path: Option<PathBuf>,
    /// Rotate at this size, in bytes. Default 100 MiB.
    pub max_bytes: u64,
    /// Rotated files kept. Default 10.
    pub keep: usize,
    /// How often records written are `fsync`ed, in milliseconds. Default 1000.
    pub fsync_interval_ms: u64,
    /// The layer's settings (sampling rules, limits, the built-in evaluator).
    pub layer: ReviewConfig,
}

impl Default for ReviewTable {
    fn default() -> Self {
        Self {
            path: None,
            max_bytes: 100 * 1024 * 1024,
            keep: 10,
            fsync_interval_ms: 1000,
            layer: ReviewConfig::default(),
        }
    }
}

impl<'de> Deserialize<'de> for ReviewTable {
    /// The file's keys, then every other key into [`ReviewConfig`], whose unknown keys are
    /// errors.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut t = toml::Table::deserialize(d)?;
        let mut out = ReviewTable::default();
        if let Some(v) = t.remove("path") {
            out.path = Some(PathBuf::deserialize(v).map_err(D::Error::custom)?);
        }
        if let Some(v) = t.remove("max_bytes") {
            out.max_bytes = u64::deserialize(v).map_err(D::Error::custom)?;
        }
        if let Some(v) = t.remove("keep") {
            out.keep = usize::deserialize(v).map_err(D::Error::custom)?;
        }
        if let Some(v) = t.remove("fsync_interval_ms") {
            out.fsync_interval_ms = u64::deserialize(v).map_err(D::Error::custom)?;
        }
        out.layer = ReviewConfig::deserialize(toml::Value::Table(t)).map_err(D::Error::custom)?;
        Ok(out)
    }
}

fn err(message: impl fmt::Display) -> StartError {
    StartError::Layer {
        layer: "review",
        message: message.to_string(),
    }
}

/// The review layer of `cfg`, when it has a `[review]` table. Feedback comments are redacted
/// with the `[redact]` table's redactor (`hash_key`: for its `hash` mode).
pub(crate) fn layer(
    cfg: &GatewayConfig,
    hash_key: Option<Vec<u8>>,
    dry_run: bool,
) -> Result<Option<ReviewLayer>, StartError> {
    let Some(table) = &cfg.review else {
        return Ok(None);
    };
    let path = table
        .path
        .as_ref()
        .ok_or_else(|| err("path: must be set (the review file)"))?;
    if !cfg.layers.redact && !dry_run {
        tracing::warn!(target: "tower_deepseek_gateway", "[review] with the redact layer off: review records hold unmasked text");
    }
    let builder = ReviewLayer::builder();
    let builder = if dry_run {
        // Validating the settings (`check-config`): nothing is opened.
        builder.sink(WriterSink::new(std::io::sink()))
    } else {
        builder.sink(
            JsonlFileSink::builder(path)
                .max_bytes(table.max_bytes)
                .keep(table.keep)
                .fsync_interval(std::time::Duration::from_millis(table.fsync_interval_ms))
                .open()
                .map_err(|e| err(format!("cannot open {}: {e}", path.display())))?,
        )
    };
    let redactor = RedactLayer::from_config(cfg.redact.clone(), hash_key)
        .map_err(|e| err(format!("the [redact] table for feedback: {e}")))?
        .redactor()
        .clone();
    builder
        .config(table.layer.clone())
        .redactor(redactor)
        .build()
        .map(Some)
        .map_err(err)
}

struct FeedbackState {
    /// The gateway's state: the client keys of the last (re)load.
    shared: Arc<crate::Shared>,
    review: ReviewHandle,
}

/// `router` with `POST /v1/feedback` when the review layer is on.
pub(crate) fn routes(
    router: Router,
    shared: &Arc<crate::Shared>,
    review: Option<&ReviewHandle>,
) -> Router {
    match review {
        Some(r) => router.merge(
            Router::new()
                .route(ROUTE, post(feedback))
                .with_state(Arc::new(FeedbackState {
                    shared: shared.clone(),
                    review: r.clone(),
                })),
        ),
        None => router,
    }
}

fn answer(res: Response<Body>) -> Response<Body> {
    metrics::counter!(telemetry::REQUESTS_TOTAL, "route" => ROUTE, "status" => res.status().as_str().to_owned())
        .increment(1);
    res
}

fn invalid(message: &str) -> Response<Body> {
    error::json_error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "invalid_feedback",
        message,
        None,
    )
}

async fn feedback(State(s): State<Arc<FeedbackState>>, req: Request<Body>) -> Response<Body> {
    let tenant = match s.shared.live.load().keys.check(req.headers()) {
        inbound::Verdict::Allowed(c) => c.map(|c| c.tenant),
        inbound::Verdict::Missing | inbound::Verdict::Unknown => {
            return answer(error::json_error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_api_key",
                "missing or invalid API key: send `Authorization: Bearer <your gateway key>`",
                None,
            ));
        }
    };
    let Ok(body) = axum::body::to_bytes(req.into_body(), MAX_FEEDBACK_BYTES).await else {
        return answer(invalid(
            "the feedback body could not be read (at most 64 KiB)",
        ));
    };
    // The parser's message is not echoed: it may quote the body.
    let Ok(fb) = serde_json::from_slice::<Feedback>(&body) else {
        return answer(invalid(
            r#"the body must be a JSON object {"request_id": "...", "score": 0..1 or 1..5, "scale"?: "0-1"|"1-5", "label"?: "...", "comment"?: "..."}"#,
        ));
    };
    let res = match s.review.feedback(tenant.as_ref(), &fb) {
        Ok(receipt) => {
            let body = serde_json::json!({
                "object": "feedback",
                "request_id": receipt.request_id,
                "score": receipt.score,
            });
            Response::builder()
                .status(StatusCode::OK)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .expect("a valid response")
        }
        Err(e @ FeedbackError::UnknownCall) => error::json_error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_request_id",
            &e.to_string(),
            None,
        ),
        Err(e @ FeedbackError::OtherTenant) => error::json_error(
            StatusCode::FORBIDDEN,
            "permission_error",
            "not_your_call",
            &e.to_string(),
            None,
        ),
        Err(e) => invalid(&e.to_string()),
    };
    answer(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_reads_file_keys_and_layer_keys_and_refuses_unknown_ones() {
        let cfg = GatewayConfig::from_toml(
            "[review]\npath = \"r.jsonl\"\nkeep = 3\nrecent_call_ttl_ms = 1000\n[[review.rules]]\ntenant = \"a\"\nfraction = 0.5\n",
        )
        .unwrap();
        let t = cfg.review.unwrap();
        assert_eq!(t.path, Some(PathBuf::from("r.jsonl")));
        assert_eq!(t.keep, 3);
        assert_eq!(t.layer.rules[0].fraction, 0.5);
        assert_eq!(t.layer.recent_call_ttl, std::time::Duration::from_secs(1));
        let e = GatewayConfig::from_toml("[review]\npath = \"r\"\nfractoin = 1\n").unwrap_err();
        assert!(e.to_string().contains("fractoin"), "{e}");
        assert!(GatewayConfig::from_toml("").unwrap().review.is_none());
    }
}
