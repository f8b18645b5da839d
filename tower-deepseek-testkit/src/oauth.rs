//! The OAuth2 client-credentials token endpoint of the integration guide.

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::body::MockBody;
use crate::deepseek::{Answer, Payload, json_response};
use crate::record::RecordedRequest;
use crate::state::Shared;

/// The RFC 6749 error code that fits a status.
fn oauth_error_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid_request",
        401 => "invalid_client",
        403 => "unauthorized_client",
        503 => "temporarily_unavailable",
        _ if status.is_server_error() => "server_error",
        _ => "invalid_request",
    }
}

/// `{"error":"...","error_description":"..."}`.
pub(crate) fn oauth_error_json(status: StatusCode, code: Option<&str>, description: &str) -> Value {
    json!({
        "error": code.unwrap_or(oauth_error_code(status)),
        "error_description": description,
    })
}

fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response<MockBody> {
    let mut resp = json_response(
        status,
        oauth_error_json(status, Some(code), description).to_string(),
    );
    no_store(resp.headers_mut());
    resp
}

/// Token responses must not be cached (RFC 6749 §5.1).
pub(crate) fn no_store(headers: &mut http::HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// Decodes `application/x-www-form-urlencoded` (`+` is a space, `%XX` a byte).
fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn form_field(body: &str, name: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(k) == name).then(|| form_decode(v))
    })
}

/// Client credentials from `Authorization: Basic`, else from the form body.
fn client_credentials(req: &RecordedRequest, form: &str) -> Option<(String, String)> {
    if let Some(value) = req.header("authorization") {
        let (scheme, encoded) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        // RFC 6749 §2.3.1: both parts are form-encoded before Basic encoding.
        return Some((form_decode(id), form_decode(secret)));
    }
    Some((
        form_field(form, "client_id")?,
        form_field(form, "client_secret")?,
    ))
}

/// The token endpoint's normal answer.
pub(crate) fn token(shared: &Shared, req: &RecordedRequest) -> Answer {
    if req.method != Method::POST {
        let mut resp = oauth_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "the token endpoint accepts POST only",
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return Err(Box::new(resp));
    }
    let form = String::from_utf8_lossy(&req.body);
    let config = &shared.config;
    match client_credentials(req, &form) {
        Some((id, secret)) if id == config.client_id && secret == config.client_secret => {}
        _ => {
            let mut resp = oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Client authentication failed: unknown client or wrong secret",
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tower-deepseek-testkit\""),
            );
            return Err(Box::new(resp));
        }
    }
    match form_field(&form, "grant_type").as_deref() {
        Some("client_credentials") => {}
        Some(_) => {
            return Err(Box::new(oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only grant_type=client_credentials is supported",
            )));
        }
        None => {
            return Err(Box::new(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "missing grant_type",
            )));
        }
    }
    let access_token = shared.issue_token();
    let mut body = json!({"access_token": access_token, "token_type": "Bearer"});
    if !config.omit_expires_in {
        body["expires_in"] = json!(config.token_lifetime.as_secs());
    }
    if let Some(scope) = form_field(&form, "scope") {
        body["scope"] = json!(scope);
    }
    Ok(Payload::Json(Bytes::from(body.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a+b%20c%3D"), "a b c=");
        assert_eq!(form_decode("100%"), "100%");
        assert_eq!(form_decode("%zz"), "%zz");
        let body = "grant_type=client_credentials&scope=chat+read&audience=https%3A%2F%2Fapi";
        assert_eq!(
            form_field(body, "grant_type").as_deref(),
            Some("client_credentials")
        );
        assert_eq!(form_field(body, "scope").as_deref(), Some("chat read"));
        assert_eq!(form_field(body, "audience").as_deref(), Some("https://api"));
        assert_eq!(form_field(body, "missing"), None);
    }
}
