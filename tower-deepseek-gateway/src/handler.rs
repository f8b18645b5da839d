//! The routes' handlers: the proxy through the stack, the answers the gateway makes itself,
//! and the request and response header handling around them.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version};
use tower::ServiceExt;
use tower_deepseek::core::meta::X_REQUEST_ID;
use tower_deepseek::redact::audit::AuditUnavailable;

use crate::layers::AuditRefused;
use crate::*;

pub(crate) async fn healthz() -> Response<Body> {
    let mut res = Response::new(Body::from(r#"{"status":"ok"}"#));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

pub(crate) async fn too_many_connections() -> Response<Body> {
    let mut res = error::json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "api_error",
        "too_many_connections",
        "the gateway is at its connection limit (server.max_connections); retry shortly",
        Some(Duration::from_secs(1)),
    );
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

pub(crate) async fn not_found(uri: Uri) -> Response<Body> {
    let _ = uri;
    error::json_error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "not_found",
        "unknown route; the gateway serves /v1/chat/completions, /v1/models, /beta/completions, /healthz, /readyz and /metrics",
        None,
    )
}

pub(crate) async fn method_not_allowed() -> Response<Body> {
    error::json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        "method not allowed on this route",
        None,
    )
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus those the
/// gateway sets itself.
pub(crate) const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named by `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// Whether the upstream may see this request header. An allow-list: the body's type, what
/// the client accepts, cache directives (read by the cache layer), the request id, and the
/// provider's `x-ds-*` headers. Everything else stays at the gateway: cookies, the client's
/// credentials (the auth layer adds the upstream's), `Forwarded`/`X-Forwarded-*`/`X-Real-IP`
/// (read for the client IP from trusted proxies, never relayed), `Host` and `Content-Length`
/// (the client and the layers set them: redaction may change the body), `Accept-Encoding`
/// (the layers read the answer: it must come uncompressed), hop-by-hop headers, and any other
/// header a client sends.
pub(crate) fn forwarded_upstream(name: &HeaderName) -> bool {
    name == header::CONTENT_TYPE
        || name == header::ACCEPT
        || name == header::CACHE_CONTROL
        || *name == X_REQUEST_ID
        || name.as_str().starts_with("x-ds-")
}

/// The request as it goes into the stack: only the headers of [`forwarded_upstream`].
pub(crate) fn sanitize_request(headers: &mut HeaderMap) {
    let dropped: Vec<HeaderName> = headers
        .keys()
        .filter(|name| !forwarded_upstream(name))
        .cloned()
        .collect();
    for name in dropped {
        headers.remove(name);
    }
}

/// The size of a request's headers as counted against `server.max_header_bytes`: names and
/// values, plus 32 bytes per field (HTTP/2's accounting, RFC 9113 §6.5.2).
pub(crate) fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 32)
        .sum()
}

/// An upstream error whose body is not JSON (an HTML page of a proxy or load balancer) is
/// answered in the OpenAI error shape with the upstream's status (and its `Retry-After`), never
/// relayed as it is.
pub(crate) fn wrap_non_json_error(res: Response<Body>) -> Response<Body> {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
    if json {
        return res;
    }
    let retry_after = res.headers().get(header::RETRY_AFTER).cloned();
    let kind = if status.is_server_error() {
        "api_error"
    } else {
        "invalid_request_error"
    };
    let message = format!(
        "the upstream answered {} with a body that is not JSON",
        status.as_u16()
    );
    let mut wrapped = error::json_error(status, kind, "upstream_error", &message, None);
    if let Some(v) = retry_after {
        wrapped.headers_mut().insert(header::RETRY_AFTER, v);
    }
    // Dropping the upstream body closes it.
    wrapped
}

/// An answer the gateway makes itself, before the stack (a refused key, headers or a body too
/// large, a body that does not arrive): written to the audit log like any call, through the same
/// audit layer, before its head goes out. When the audit sink refuses it (fail closed), the
/// caller gets that refusal instead.
pub(crate) async fn refuse(s: &Shared, req: Request<Body>, res: Response<Body>) -> Response<Body> {
    let Some(layer) = &s.audit_layer else {
        return res;
    };
    // Called once: the answer moves out of its slot on that call.
    let mut res = Some(res);
    let answer = tower::service_fn(move |_req| {
        std::future::ready(Ok::<_, Infallible>(res.take().unwrap_or_default()))
    });
    match tower::Layer::layer(layer, answer).oneshot(req).await {
        Ok(res) => res.map(Body::new),
        Err(e) => stack_error(&*e),
    }
}

/// The answer to an error of the stack; an audit refusal is marked for the response clean-up
/// (`Retry-After`, `Connection: close`: nothing is served until the log recovers, and the
/// client's request body may be unread).
fn stack_error(e: &(dyn std::error::Error + Send + Sync + 'static)) -> Response<Body> {
    let mut res = error::error_response(e);
    if let Some(a) = e.downcast_ref::<AuditUnavailable>() {
        res.extensions_mut().insert(AuditRefused(a.retry_after()));
    }
    res
}

/// The proxied call, inside the gateway's layers (`layers`): the request has its id, its
/// peer and client IP, and its tenant (the key was checked); here it gets the header
/// allow-list, the upstream path and its whole body, and goes through the stack.
pub(crate) async fn proxy(s: Arc<Shared>, mut req: Request<Body>, route: Route) -> Response<Body> {
    // The keys and stack the key was checked against (one reload's snapshot).
    let live = req
        .extensions_mut()
        .remove::<Arc<Live>>()
        .unwrap_or_else(|| s.live());
    // The spans of the call, when tracing (`otel::TraceLayer`).
    let trace = req
        .extensions()
        .get::<otel::CallTrace>()
        .cloned()
        .unwrap_or_default();
    sanitize_request(req.headers_mut());
    // The upstream client's pool picks the protocol (HTTP/1.1 or HTTP/2 by ALPN): the inbound
    // request's version (HTTP/2 from an h2 client) must not leak into it.
    *req.version_mut() = Version::HTTP_11;
    // A relative URI: the base-URL layer joins it onto the upstream's.
    let uri = match req.uri().query() {
        Some(q) => format!("{}?{q}", route.path()).parse::<Uri>(),
        None => Ok(Uri::from_static(route.path())),
    };
    match uri {
        Ok(u) => *req.uri_mut() = u,
        Err(_) => {
            let res = error::json_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_uri",
                "invalid query string",
                None,
            );
            return refuse(&s, req, res).await;
        }
    }
    // The whole request body, within `server.body_read_timeout_ms` (a client that trickles it
    // gets a 408 instead of holding the request) and `server.max_body_bytes` (413).
    let (mut parts, body) = req.into_parts();
    let read = tokio::time::timeout(
        s.body_read_timeout,
        tower_deepseek::core::body::buffer_or_reject(body, s.max_body_bytes),
    )
    .await;
    let body = match read {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            let res = if e.is::<tower_deepseek::core::error::BodyTooLarge>() {
                error::error_response(&*e)
            } else {
                error::json_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "invalid_body",
                    "the request body could not be read",
                    None,
                )
            };
            return refuse(&s, Request::from_parts(parts, Body::empty()), res).await;
        }
        Err(_) => {
            let res = error::json_error(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                "request_timeout",
                "the request body did not arrive within the gateway's body read timeout (server.body_read_timeout_ms)",
                None,
            );
            return refuse(&s, Request::from_parts(parts, Body::empty()), res).await;
        }
    };
    trace.enter_stack(&mut parts, body.bytes());
    let req = Request::from_parts(parts, Body::new(body));
    // With `[otel]`, the layers' spans are children of the call's span.
    let res = match trace.in_stack(live.service.clone().oneshot(req)).await {
        // The one allocation for the body's type on the way out: axum's `Body`.
        Ok(res) => wrap_non_json_error(res.map(Body::new)),
        Err(e) => {
            let status = error::status_for(&*e);
            tracing::debug!(target: "tower_deepseek_gateway", route = route.path(), %status, "request failed in the stack");
            stack_error(&*e)
        }
    };
    trace.on_head(&res);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_credentials_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "keep-alive, x-secret-hop".parse().unwrap(),
        );
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::AUTHORIZATION, "Bearer sk-client".parse().unwrap());
        h.insert("x-api-key", "sk-client".parse().unwrap());
        h.insert(header::PROXY_AUTHORIZATION, "Basic x".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert(header::ACCEPT_ENCODING, "gzip".parse().unwrap());
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        h.insert("x-request-id", "abc".parse().unwrap());
        h.insert(header::COOKIE, "session=1".parse().unwrap());
        h.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
        h.insert("x-forwarded-host", "evil.example".parse().unwrap());
        h.insert(header::FORWARDED, "for=203.0.113.9".parse().unwrap());
        h.insert("x-real-ip", "203.0.113.9".parse().unwrap());
        h.insert("api-key", "sk-client".parse().unwrap());
        h.insert(header::HOST, "gateway".parse().unwrap());
        h.insert(header::USER_AGENT, "curl/8".parse().unwrap());
        h.insert(header::ACCEPT, "text/event-stream".parse().unwrap());
        h.insert("x-ds-trace", "1".parse().unwrap());
        sanitize_request(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            ["accept", "content-type", "x-ds-trace", "x-request-id"]
        );
    }

    #[tokio::test]
    async fn non_json_upstream_errors_are_wrapped_with_their_status() {
        use http_body_util::BodyExt;
        let html = Response::builder()
            .status(502)
            .header(header::CONTENT_TYPE, "text/html")
            .header(header::RETRY_AFTER, "3")
            .body(Body::from("<html><body>Bad Gateway</body></html>"))
            .unwrap();
        let res = wrap_non_json_error(html);
        assert_eq!(res.status(), 502);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(res.headers()[header::RETRY_AFTER], "3");
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"]["type"], "api_error");
        assert_eq!(v["error"]["code"], "upstream_error");
        assert!(!String::from_utf8_lossy(&bytes).contains("<html>"));

        // JSON errors and successes pass as they are.
        let json = Response::builder()
            .status(400)
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(Body::from("{}"))
            .unwrap();
        assert_eq!(
            wrap_non_json_error(json)
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes(),
            "{}"
        );
        let ok = Response::builder()
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from("hi"))
            .unwrap();
        assert_eq!(wrap_non_json_error(ok).status(), 200);
    }
}
