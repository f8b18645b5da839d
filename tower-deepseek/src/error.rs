//! Maps every layer's error to an OpenAI-style JSON error response.
//!
//! Client stacks return [`BoxError`](crate::BoxError); a server (a gateway, an axum route) must answer with a
//! response instead. [`error_response`] finds the cause in the error's `source()` chain and
//! answers `{"error":{"message","type","param","code"}}` with the right status (and
//! `Retry-After` when a wait is known). Messages are the layers' own, which never contain a
//! prompt, a PII value or a credential.
//!
//! | cause | status | `code` |
//! |---|---|---|
//! | `BodyTooLarge` | 413 | `request_too_large` |
//! | `PiiBlocked` (redact) | 422 | `pii_blocked` |
//! | `InvalidJsonBody` (redact: not JSON, not UTF-8, nested too deep) | 400 | `invalid_json` |
//! | `RequestTooLarge` (rate limit: more tokens than the burst) | 413 | `request_exceeds_quota` |
//! | `RateLimited` (rate limit: the wait would pass its maximum) | 429 + `Retry-After` | `rate_limit_exceeded` |
//! | `BudgetExceeded` (cost: the tenant's daily or monthly budget is spent) | 429 + `Retry-After` (until the period ends), type `insufficient_quota` | `budget_exceeded` |
//! | `AuditUnavailable` (audit sink failing, fail-closed policy) | 503 | `audit_unavailable` |
//! | `BreakerOpen`, `AllEndpointsUnavailable` | 503 + `Retry-After` | `upstream_unavailable` |
//! | `TokenFetchFailed` (OAuth2 token endpoint) | 502 | `upstream_auth_failed` |
//! | `UpstreamTimeout` (not connect), tower `Elapsed` | 504 | `upstream_timeout` |
//! | another layer's `RequestRefused` | 400 | `request_refused` |
//! | connect error, reset, cut stream, anything else from upstream | 502 | `bad_gateway` |
//!
//! `RetriesExhausted` maps as the last failure it carries.
//!
//! With axum, use it from a `HandleErrorLayer`:
//!
//! ```
//! use axum::{Router, error_handling::HandleErrorLayer, routing::post};
//! use tower::ServiceBuilder;
//! use tower_deepseek::BoxError;
//!
//! let app: Router = Router::new()
//!     .route("/chat/completions", post(|| async { "ok" }))
//!     .layer(
//!         ServiceBuilder::new()
//!             .layer(HandleErrorLayer::new(|err: BoxError| async move {
//!                 tower_deepseek::error::error_response(&*err)
//!             }))
//!             .timeout(std::time::Duration::from_secs(600)),
//!     );
//! # let _ = app;
//! ```

use std::error::Error as StdError;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};
use tower_deepseek_core::body::BufferedBody;
use tower_deepseek_core::chat::ApiError;
use tower_deepseek_core::classify::{Classifier, FailureClass};
use tower_deepseek_core::error::BodyTooLarge;

/// What an error maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ErrorMapping {
    /// The HTTP status.
    pub status: StatusCode,
    /// The OpenAI error `type`.
    pub kind: &'static str,
    /// The error `code`.
    pub code: &'static str,
    /// A wait to announce in `Retry-After`.
    pub retry_after: Option<Duration>,
}

#[cfg_attr(
    not(any(feature = "redact", feature = "retry", feature = "auth")),
    allow(dead_code)
)]
fn mapping(
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    retry_after: Option<Duration>,
) -> ErrorMapping {
    ErrorMapping {
        status,
        kind,
        code,
        retry_after,
    }
}

fn has<T: StdError + 'static>(err: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<T>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The layer crates' own error types, found anywhere in the `source()` chain.
fn layer_mapping(err: &(dyn StdError + 'static)) -> Option<ErrorMapping> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        #[cfg(feature = "redact")]
        {
            use tower_deepseek_redact::audit::AuditUnavailable;
            use tower_deepseek_redact::{InvalidJsonBody, PiiBlocked};
            if e.is::<PiiBlocked>() {
                return Some(mapping(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_request_error",
                    "pii_blocked",
                    None,
                ));
            }
            if e.is::<InvalidJsonBody>() {
                return Some(mapping(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "invalid_json",
                    None,
                ));
            }
            if e.is::<AuditUnavailable>() {
                return Some(mapping(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "api_error",
                    "audit_unavailable",
                    None,
                ));
            }
        }
        #[cfg(feature = "retry")]
        {
            use tower_deepseek_retry::cost::BudgetExceeded;
            use tower_deepseek_retry::rate_limit::{RateLimited, RequestTooLarge};
            if let Some(b) = e.downcast_ref::<BudgetExceeded>() {
                return Some(mapping(
                    StatusCode::TOO_MANY_REQUESTS,
                    "insufficient_quota",
                    "budget_exceeded",
                    Some(b.retry_after()),
                ));
            }
            if let Some(r) = e.downcast_ref::<RateLimited>() {
                return Some(mapping(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "rate_limit_exceeded",
                    r.retry_after(),
                ));
            }
            if e.is::<RequestTooLarge>() {
                return Some(mapping(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request_error",
                    "request_exceeds_quota",
                    None,
                ));
            }
        }
        #[cfg(feature = "auth")]
        {
            if e.is::<tower_deepseek_auth::TokenFetchFailed>() {
                return Some(mapping(
                    StatusCode::BAD_GATEWAY,
                    "api_error",
                    "upstream_auth_failed",
                    None,
                ));
            }
        }
        cur = e.source();
    }
    None
}

/// Finds the status, type and code for `err`. See the [module docs](self).
pub fn mapping_for(err: &(dyn StdError + 'static)) -> ErrorMapping {
    if let Some(m) = layer_mapping(err) {
        return m;
    }
    let class = Classifier::new().classify_error(err);
    let (status, kind, code) = match &class {
        FailureClass::Rejected if has::<BodyTooLarge>(err) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
        ),
        FailureClass::Rejected => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "request_refused",
        ),
        FailureClass::BreakerOpen { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "upstream_unavailable",
        ),
        FailureClass::Timeout => (StatusCode::GATEWAY_TIMEOUT, "api_error", "upstream_timeout"),
        _ => (StatusCode::BAD_GATEWAY, "api_error", "bad_gateway"),
    };
    ErrorMapping {
        status,
        kind,
        code,
        retry_after: class.retry_after(),
    }
}

/// The status for `err`.
pub fn status_for(err: &(dyn StdError + 'static)) -> StatusCode {
    mapping_for(err).status
}

/// An OpenAI-style JSON error response for `err`. See the [module docs](self).
pub fn error_response(err: &(dyn StdError + 'static)) -> Response<BufferedBody> {
    let m = mapping_for(err);
    json_error(m.status, m.kind, m.code, &err.to_string(), m.retry_after)
}

/// `{"error":{"message","type","param":null,"code"}}` with `status`, and `Retry-After` (whole
/// seconds, rounded up) when `retry_after` is set. For a server's own errors (401, 404, ...).
pub fn json_error(
    status: StatusCode,
    kind: &str,
    code: &str,
    message: &str,
    retry_after: Option<Duration>,
) -> Response<BufferedBody> {
    let body = ApiError::new(message, kind, code).to_bytes();
    let mut res = Response::new(BufferedBody::new(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(wait) = retry_after {
        // Round up: never invite a client back before the wait is over.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_deepseek_core::error::{BodyTooLarge, BreakerOpen, TimeoutPhase, UpstreamTimeout};

    fn json(res: &Response<BufferedBody>) -> serde_json::Value {
        serde_json::from_slice(res.body().bytes()).unwrap()
    }

    #[test]
    fn maps_core_errors() {
        let res = error_response(&BodyTooLarge::new(8));
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(json(&res)["error"]["code"], "request_too_large");

        let res = error_response(&tower_deepseek_core::error::RequestRefused::new("policy"));
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert_eq!(json(&res)["error"]["code"], "request_refused");

        let res = error_response(&BreakerOpen::new(Duration::from_millis(2500)));
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()["retry-after"], "3");

        let res = error_response(&UpstreamTimeout::new(
            TimeoutPhase::FirstToken,
            Duration::from_secs(1),
        ));
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);

        let res = error_response(&std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
        let v = json(&res);
        assert_eq!(v["error"]["type"], "api_error");
        assert!(v["error"]["param"].is_null());
        assert_eq!(res.headers()["content-type"], "application/json");
    }

    /// A spent budget: 429 in the OpenAI shape, `budget_exceeded`, and the reset in
    /// `Retry-After` and the message.
    #[cfg(feature = "retry")]
    #[tokio::test]
    async fn maps_a_spent_budget() {
        use bytes::Bytes;
        use http_body_util::Full;
        use tower::{Layer, Service, ServiceExt};
        use tower_deepseek_retry::cost::{BudgetLimits, CostBudgets, CostLayer, PriceTable};

        let layer = CostLayer::builder(PriceTable::new("USD"))
            .budgets(CostBudgets::global(BudgetLimits::new().daily_tokens(0)))
            // 2026-12-06 23:59:58.5 UTC: the day ends in 1.5 s
            .clock(|| std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_601_598_500))
            .build()
            .unwrap();
        let mut svc = layer.layer(tower::service_fn(
            |_req: http::Request<Full<Bytes>>| async {
                Ok::<_, crate::BoxError>(http::Response::new(Full::new(Bytes::new())))
            },
        ));
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(Full::new(Bytes::new())))
            .await
            .unwrap_err();
        let res = error_response(&*err);
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()["retry-after"], "2");
        let v = json(&res);
        assert_eq!(v["error"]["code"], "budget_exceeded");
        assert_eq!(v["error"]["type"], "insufficient_quota");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("daily tokens budget is spent"), "{msg}");
        assert!(msg.contains("2026-12-07T00:00:00Z"), "{msg}");
    }

    #[cfg(all(feature = "redact", feature = "breaker"))]
    #[test]
    fn maps_layer_errors() {
        use tower_deepseek_breaker::AllEndpointsUnavailable;
        use tower_deepseek_redact::{EntityType, Mode, RedactContext, Redactor};

        let redactor = Redactor::builder()
            .mode(EntityType::CN_ID_CARD, Mode::Block)
            .build()
            .unwrap();
        let blocked = redactor
            .redact("id 11010519491231002X", &mut RedactContext::new(None))
            .unwrap_err();
        let res = error_response(&blocked);
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let v = json(&res);
        assert_eq!(v["error"]["code"], "pii_blocked");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("CN_ID_CARD")
        );

        use tower_deepseek_redact::{InvalidJsonBody, InvalidJsonReason};
        for reason in [
            InvalidJsonReason::Syntax,
            InvalidJsonReason::NotUtf8,
            InvalidJsonReason::TooDeep,
        ] {
            let res = error_response(&InvalidJsonBody::new(reason));
            assert_eq!(res.status(), StatusCode::BAD_REQUEST);
            let v = json(&res);
            assert_eq!(v["error"]["type"], "invalid_request_error");
            assert_eq!(v["error"]["code"], "invalid_json");
        }

        let all = AllEndpointsUnavailable::new(Duration::from_secs(4));
        let res = error_response(&all);
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()["retry-after"], "4");
    }
}
