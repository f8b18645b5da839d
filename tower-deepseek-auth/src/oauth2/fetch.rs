//! The client-credentials token request (RFC 6749 §4.4), with retries inside a deadline.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::BufferedBody;
use tower_deepseek_core::classify::{Classifier, FailureClass};
use tower_service::Service;

use super::config::OAuth2Config;
use crate::error::{TokenFetchErrorKind, TokenFetchFailed};

/// The largest token-endpoint answer read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What the token endpoint gave.
pub(crate) struct Fetched {
    pub(crate) token: SecretString,
    pub(crate) lifetime: Duration,
}

/// The parts of the token request that never change.
pub(crate) struct TokenRequest {
    uri: Uri,
    basic: HeaderValue,
    form: Bytes,
    default_lifetime: Duration,
    deadline: Duration,
    attempt_timeout: Duration,
}

impl std::fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRequest")
            .field("uri", &self.uri)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(value: &str, out: &mut String) {
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char);
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
}

impl TokenRequest {
    pub(crate) fn new(config: &OAuth2Config, uri: Uri) -> Self {
        // RFC 6749 §2.3.1: id and secret are form-encoded before Basic encoding.
        let mut pair = String::new();
        form_encode(config.client_id(), &mut pair);
        pair.push(':');
        form_encode(config.client_secret().expose_secret(), &mut pair);
        let pair = SecretString::from(pair);
        let encoded = SecretString::from(
            base64::engine::general_purpose::STANDARD.encode(pair.expose_secret()),
        );
        let mut basic = HeaderValue::try_from(format!("Basic {}", encoded.expose_secret()))
            .expect("base64 is a valid header value");
        basic.set_sensitive(true);

        let mut form = String::from("grant_type=client_credentials");
        if let Some(scope) = config.scope_ref() {
            form.push_str("&scope=");
            form_encode(scope, &mut form);
        }
        if let Some(audience) = config.audience_ref() {
            form.push_str("&audience=");
            form_encode(audience, &mut form);
        }
        Self {
            uri,
            basic,
            form: Bytes::from(form),
            default_lifetime: config.lifetime(),
            deadline: config.deadline_ref(),
            attempt_timeout: config.attempt(),
        }
    }

    fn request(&self) -> Request<BufferedBody> {
        let mut req = Request::new(BufferedBody::new(self.form.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri.clone();
        let h = req.headers_mut();
        h.insert(AUTHORIZATION, self.basic.clone());
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        h.insert(ACCEPT, HeaderValue::from_static("application/json"));
        req
    }

    /// Fetches a token, retrying transient failures with backoff until the deadline.
    pub(crate) async fn fetch<T, RB>(&self, svc: &T) -> Result<Fetched, TokenFetchFailed>
    where
        T: Service<Request<BufferedBody>, Response = Response<RB>> + Clone,
        T::Error: Into<BoxError>,
        RB: Body,
        RB::Error: Into<BoxError>,
    {
        let start = Instant::now();
        let deadline = start + self.deadline;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let now = Instant::now();
            let per_attempt = self
                .attempt_timeout
                .min(deadline.saturating_duration_since(now));
            let outcome = match tokio::time::timeout(per_attempt, self.attempt(svc.clone())).await {
                Ok(outcome) => outcome,
                Err(_) => Err(TokenFetchFailed::new(TokenFetchErrorKind::Timeout)),
            };
            let err = match outcome {
                Ok(fetched) => return Ok(fetched),
                Err(err) => err,
            };
            let elapsed = start.elapsed();
            tracing::debug!(
                target: "tower_deepseek_auth",
                kind = err.kind().as_str(),
                status = err.status().map(|s| s.as_u16()),
                attempt = attempts,
                "token endpoint attempt failed"
            );
            if !err.kind().is_retryable() {
                return Err(err.finished(attempts, elapsed));
            }
            // Full jitter exponential backoff, never past the deadline.
            let cap = BACKOFF_BASE
                .saturating_mul(1u32 << attempts.min(8))
                .min(BACKOFF_MAX);
            let pause = cap.mul_f64(fastrand::f64());
            let now = Instant::now();
            if now + pause >= deadline {
                // No time left for another attempt: report the last failure.
                return Err(err.finished(attempts, start.elapsed()));
            }
            tokio::time::sleep(pause).await;
        }
    }

    async fn attempt<T, RB>(&self, svc: T) -> Result<Fetched, TokenFetchFailed>
    where
        T: Service<Request<BufferedBody>, Response = Response<RB>>,
        T::Error: Into<BoxError>,
        RB: Body,
        RB::Error: Into<BoxError>,
    {
        let response = match svc.oneshot(self.request()).await {
            Ok(r) => r,
            Err(e) => {
                let e: BoxError = e.into();
                let kind = match Classifier::default().classify_error(&*e) {
                    FailureClass::Connect => TokenFetchErrorKind::Connect,
                    FailureClass::Timeout => TokenFetchErrorKind::Timeout,
                    _ => TokenFetchErrorKind::Transport,
                };
                return Err(TokenFetchFailed::new(kind).with_source(e));
            }
        };
        let (parts, body) = response.into_parts();
        let bytes = match Limited::new(body, MAX_TOKEN_RESPONSE).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) if parts.status.is_success() => {
                return Err(
                    TokenFetchFailed::new(TokenFetchErrorKind::Transport).with_status(parts.status)
                );
            }
            Err(_) => Bytes::new(),
        };
        if parts.status.is_success() {
            return self
                .parse_success(&bytes)
                .map_err(|kind| TokenFetchFailed::new(kind).with_status(parts.status));
        }
        Err(TokenFetchFailed::new(error_kind(parts.status, &bytes)).with_status(parts.status))
    }

    fn parse_success(&self, bytes: &[u8]) -> Result<Fetched, TokenFetchErrorKind> {
        #[derive(Deserialize)]
        struct Answer {
            access_token: Option<SecretString>,
            #[serde(default)]
            token_type: Option<String>,
            #[serde(default)]
            expires_in: Option<serde_json::Value>,
        }
        let answer: Answer =
            serde_json::from_slice(bytes).map_err(|_| TokenFetchErrorKind::InvalidResponse)?;
        let token = answer
            .access_token
            .filter(|t| !t.expose_secret().is_empty())
            .ok_or(TokenFetchErrorKind::InvalidResponse)?;
        if let Some(kind) = &answer.token_type
            && !kind.eq_ignore_ascii_case("bearer")
        {
            return Err(TokenFetchErrorKind::InvalidResponse);
        }
        let lifetime = match answer.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_f64(),
            Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
            _ => None,
        }
        .filter(|secs| secs.is_finite() && *secs > 0.0)
        .map(|secs| Duration::from_secs_f64(secs.min(365.0 * 24.0 * 3600.0)))
        .unwrap_or(self.default_lifetime);
        Ok(Fetched { token, lifetime })
    }
}

/// The kind of a non-2xx token-endpoint answer. Only the RFC 6749 `error` code is read;
/// `error_description` is ignored (it may echo what was sent).
fn error_kind(status: http::StatusCode, body: &[u8]) -> TokenFetchErrorKind {
    #[derive(Deserialize)]
    struct OAuthError {
        error: Option<String>,
    }
    if status.is_server_error() {
        return TokenFetchErrorKind::Server;
    }
    if status == http::StatusCode::TOO_MANY_REQUESTS {
        return TokenFetchErrorKind::RateLimited;
    }
    if status == http::StatusCode::REQUEST_TIMEOUT {
        return TokenFetchErrorKind::Timeout;
    }
    let code = serde_json::from_slice::<OAuthError>(body)
        .ok()
        .and_then(|e| e.error);
    match code.as_deref() {
        Some("invalid_client") => TokenFetchErrorKind::InvalidClient,
        Some("invalid_grant") => TokenFetchErrorKind::InvalidGrant,
        Some("unauthorized_client") => TokenFetchErrorKind::UnauthorizedClient,
        Some("invalid_scope") => TokenFetchErrorKind::InvalidScope,
        Some("temporarily_unavailable") => TokenFetchErrorKind::Server,
        _ if status == http::StatusCode::UNAUTHORIZED => TokenFetchErrorKind::InvalidClient,
        _ => TokenFetchErrorKind::Rejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn form_encoding_follows_rfc6749() {
        let mut s = String::new();
        form_encode("a b:c/é", &mut s);
        assert_eq!(s, "a+b%3Ac%2F%C3%A9");
    }

    #[test]
    fn error_codes_map_to_kinds() {
        let k = |s: u16, b: &str| error_kind(StatusCode::from_u16(s).unwrap(), b.as_bytes());
        assert_eq!(
            k(401, r#"{"error":"invalid_client"}"#),
            TokenFetchErrorKind::InvalidClient
        );
        assert_eq!(
            k(400, r#"{"error":"invalid_grant"}"#),
            TokenFetchErrorKind::InvalidGrant
        );
        assert_eq!(
            k(400, r#"{"error":"invalid_scope"}"#),
            TokenFetchErrorKind::InvalidScope
        );
        assert_eq!(k(403, "nope"), TokenFetchErrorKind::Rejected);
        assert_eq!(k(401, ""), TokenFetchErrorKind::InvalidClient);
        assert_eq!(
            k(503, r#"{"error":"invalid_client"}"#),
            TokenFetchErrorKind::Server
        );
        assert_eq!(k(429, ""), TokenFetchErrorKind::RateLimited);
        assert!(!TokenFetchErrorKind::InvalidClient.is_retryable());
        assert!(TokenFetchErrorKind::Server.is_retryable());
    }

    #[test]
    fn parses_answers() {
        let cfg = OAuth2Config::new("https://a/t", "id", "sec");
        let req = TokenRequest::new(&cfg, cfg.token_uri().unwrap());
        let ok = req
            .parse_success(br#"{"access_token":"at","token_type":"bearer","expires_in":"60"}"#)
            .unwrap();
        assert_eq!(ok.token.expose_secret(), "at");
        assert_eq!(ok.lifetime, Duration::from_secs(60));
        let ok = req.parse_success(br#"{"access_token":"at"}"#).unwrap();
        assert_eq!(ok.lifetime, cfg.lifetime());
        for bad in [
            &br#"{"access_token":"at","token_type":"mac"}"#[..],
            br#"{"token_type":"bearer"}"#,
            br#"{"access_token":""}"#,
            b"<html>",
        ] {
            assert_eq!(
                req.parse_success(bad).err(),
                Some(TokenFetchErrorKind::InvalidResponse)
            );
        }
    }

    #[test]
    fn request_carries_basic_auth_and_form() {
        let cfg = OAuth2Config::new("https://a/t", "my id", "p@ss").scope("chat read");
        let req = TokenRequest::new(&cfg, cfg.token_uri().unwrap()).request();
        assert_eq!(req.method(), Method::POST);
        let auth = &req.headers()[AUTHORIZATION];
        assert!(auth.is_sensitive());
        let expected = base64::engine::general_purpose::STANDARD.encode("my+id:p%40ss");
        assert_eq!(auth.to_str().unwrap(), format!("Basic {expected}"));
        assert_eq!(
            req.body().bytes().as_ref(),
            b"grant_type=client_credentials&scope=chat+read"
        );
    }
}
