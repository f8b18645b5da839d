//! The gateway's cross-cutting parts as tower layers around each proxied route, outermost
//! first:
//!
//! 1. `SetSensitiveRequestHeadersLayer` / `SetSensitiveResponseHeadersLayer` (tower-http): the
//!    client's credentials and cookies are marked sensitive (never shown by `Debug` or a
//!    tracing layer).
//! 2. The request id (tower-http's `SetRequestIdLayer` and `PropagateRequestIdLayer` on
//!    `x-request-id`): a caller's id that core's [`RequestId::parse`] refuses is dropped first,
//!    a missing one is made by core's [`RequestId::generate`], so that the id in the header,
//!    the one core's `ensure_request_id` reads for the stack and the audit record, and the one
//!    echoed to the client are one and the same.
//! 3. [`RequestMetricsLayer`]: the in-flight gauge and the request metrics (`telemetry`).
//! 4. The response clean-up: hop-by-hop headers, `Content-Length` (the layers may rewrite the
//!    body) and the upstream's own `x-request-id` removed.
//! 5. The peer address and core's `RequestMetadataLayer` (request id and client IP from
//!    trusted proxies into the request's extensions).
//! 6. [`InboundLayer`](crate::inbound::InboundLayer): the header-size limit and the client
//!    key.
//!
//! Then the handler: the allow-list of headers toward the upstream, the body read, the stack.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::MethodRouter;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderName};
use http::{HeaderValue, Request, Response};
use tower::{Layer, Service, ServiceBuilder};
use tower_deepseek::core::body::ObservedBody;
use tower_deepseek::core::classify::{
    ClassifiedResponse, Classifier, OnEos, StreamEnd, is_event_stream,
};
use tower_deepseek::core::meta::{PeerAddr, RequestId, X_REQUEST_ID};
use tower_deepseek::meta::RequestMetadataLayer;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::{
    SetSensitiveRequestHeadersLayer, SetSensitiveResponseHeadersLayer,
};

use crate::handler::{proxy, strip_hop_by_hop};
use crate::{Route, Shared, inbound, stream, telemetry};

/// The request headers that carry a client's credentials or session.
fn sensitive_request_headers() -> [HeaderName; 5] {
    [
        header::AUTHORIZATION,
        header::PROXY_AUTHORIZATION,
        header::COOKIE,
        HeaderName::from_static("x-api-key"),
        HeaderName::from_static("api-key"),
    ]
}

/// Request ids made by core's generator (the same form as the ids core accepts).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CoreRequestIds;

impl MakeRequestId for CoreRequestIds {
    fn make_request_id<B>(
        &mut self,
        _request: &Request<B>,
    ) -> Option<tower_http::request_id::RequestId> {
        Some(tower_http::request_id::RequestId::new(
            RequestId::generate().to_header_value(),
        ))
    }
}

/// Drops a caller's `x-request-id` that core would not accept (so that a fresh one is made
/// and used everywhere), and gives the request its peer address from axum's `ConnectInfo`.
fn admit<B>(mut req: Request<B>) -> Request<B> {
    let acceptable = req
        .headers()
        .get(&X_REQUEST_ID)
        .map(|v| v.to_str().ok().and_then(RequestId::parse).is_some());
    if acceptable == Some(false) {
        req.headers_mut().remove(&X_REQUEST_ID);
    }
    if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() {
        req.extensions_mut().insert(PeerAddr(peer));
    }
    req
}

/// The audit log refused the call (fail closed): the answer says when to come back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AuditRefused(pub(crate) Duration);

/// Cleans a response for the client: hop-by-hop headers, `Content-Length` (the server frames
/// the body: the layers may have rewritten it) and the upstream's `x-request-id` (the
/// gateway's goes out instead) removed; an audit refusal gets `Retry-After` and
/// `Connection: close`.
fn clean_response(mut res: Response<Body>) -> Response<Body> {
    let headers = res.headers_mut();
    strip_hop_by_hop(headers);
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(&X_REQUEST_ID);
    if let Some(AuditRefused(wait)) = res.extensions().get::<AuditRefused>().copied() {
        let secs = wait.as_secs().max(1);
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

/// The handler of the proxied route `route` inside the gateway's layers (module docs); also
/// what each request of a WebSocket connection goes through.
pub(crate) fn service(
    shared: &Arc<Shared>,
    route: Route,
) -> impl Service<
    Request<Body>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static {
    let s = shared.clone();
    ServiceBuilder::new()
        .layer(SetSensitiveRequestHeadersLayer::new(
            sensitive_request_headers(),
        ))
        .layer(SetSensitiveResponseHeadersLayer::new([header::SET_COOKIE]))
        .map_request(admit::<Body>)
        .layer(SetRequestIdLayer::x_request_id(CoreRequestIds))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(RequestMetricsLayer::new(route))
        .map_response(clean_response)
        .layer(RequestMetadataLayer::new(shared.meta.clone()))
        .layer(inbound::InboundLayer::new(shared.clone()))
        .service_fn(move |req: Request<Body>| {
            let s = s.clone();
            async move { Ok::<_, Infallible>(proxy(s, req, route).await) }
        })
}

/// The proxied route `route` for the router.
pub(crate) fn proxied<S>(shared: &Arc<Shared>, route: Route) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    let svc = service(shared, route);
    match route {
        Route::Models => axum::routing::get_service(svc),
        Route::Chat | Route::Fim => axum::routing::post_service(svc),
    }
}

/// Counts requests and their outcomes, and keeps `deepseek_gateway_in_flight` while a call is
/// answered (to the end of its body). The outcome observer of an event stream also tells the
/// stream's guard how it ended, so that a stream that fails after its head ends with an error
/// event (see `stream`).
#[derive(Debug, Clone)]
pub(crate) struct RequestMetricsLayer {
    route: Route,
    classifier: Classifier,
}

impl RequestMetricsLayer {
    pub(crate) fn new(route: Route) -> Self {
        Self {
            route,
            classifier: Classifier::new(),
        }
    }
}

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`RequestMetricsLayer`].
#[derive(Debug, Clone)]
pub(crate) struct RequestMetrics<S> {
    inner: S,
    layer: RequestMetricsLayer,
}

impl<S, B> Service<Request<B>> for RequestMetrics<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let start = Instant::now();
        let guard = InFlight::start();
        let fut = self.inner.call(req);
        let layer = self.layer.clone();
        Box::pin(async move {
            let res = fut.await?;
            Ok(observe(&layer, start, guard, res))
        })
    }
}

/// Decrements the in-flight gauge when the call is over (response body ended or dropped).
pub(crate) struct InFlight;

impl InFlight {
    fn start() -> Self {
        metrics::gauge!(telemetry::IN_FLIGHT).increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(telemetry::IN_FLIGHT).decrement(1.0);
    }
}

/// Counts the response, and watches its body to the end.
fn observe(
    layer: &RequestMetricsLayer,
    start: Instant,
    guard: InFlight,
    res: Response<Body>,
) -> Response<Body> {
    let route = layer.route;
    let (parts, body) = res.into_parts();
    let status = parts.status;
    metrics::counter!(telemetry::REQUESTS_TOTAL, "route" => route.path(), "status" => status.as_str().to_owned())
        .increment(1);
    metrics::histogram!(telemetry::REQUEST_DURATION, "route" => route.path())
        .record(start.elapsed().as_secs_f64());
    let body = match layer.classifier.classify_head(status, &parts.headers) {
        ClassifiedResponse::Ready(outcome) => {
            record_outcome(route, StreamEnd::Finished(outcome));
            drop(guard);
            body
        }
        ClassifiedResponse::RequiresEos(eos) => {
            // Event streams end with an error event rather than a reset when they fail after
            // their head was sent (see `stream`); the observer below tells the guard how the
            // stream ended, and still sees the failure itself.
            let verdict = is_event_stream(&parts.headers).then(stream::Verdict::default);
            let told = verdict.clone();
            let observer = OnEos::new(eos, move |end, summary| {
                let _guard = guard;
                if let (Some(v), StreamEnd::Finished(r)) = (&told, &end) {
                    let _ = v.set(r.clone());
                }
                if let Some(u) = &summary.usage {
                    let tokens = |kind: &'static str, n: u64| {
                        metrics::counter!(telemetry::TOKENS_TOTAL, "kind" => kind).increment(n);
                    };
                    tokens("prompt", u.prompt_tokens);
                    tokens("completion", u.completion_tokens);
                    if let Some(n) = u.prompt_cache_hit_tokens {
                        tokens("prompt_cache_hit", n);
                    }
                    if let Some(n) = u.prompt_cache_miss_tokens {
                        tokens("prompt_cache_miss", n);
                    }
                }
                record_outcome(route, end);
            });
            let observed = ObservedBody::new(body, observer);
            match verdict {
                Some(v) => Body::new(stream::SseGuard::new(observed, v)),
                None => Body::new(observed),
            }
        }
    };
    Response::from_parts(parts, body)
}

fn record_outcome(route: Route, end: StreamEnd) {
    let outcome = match &end {
        StreamEnd::Finished(Ok(())) => "ok",
        StreamEnd::Finished(Err(class)) => class.as_str(),
        _ => "cancelled",
    };
    metrics::counter!(telemetry::RESPONSES_TOTAL, "route" => route.path(), "outcome" => outcome)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unacceptable_request_id_is_dropped_and_an_acceptable_one_kept() {
        let req = admit(
            Request::builder()
                .header("x-request-id", "abc-123")
                .body(())
                .unwrap(),
        );
        assert_eq!(req.headers()["x-request-id"], "abc-123");
        let long = "x".repeat(1000);
        let req = admit(
            Request::builder()
                .header("x-request-id", long.as_str())
                .body(())
                .unwrap(),
        );
        assert!(req.headers().get("x-request-id").is_none());
        // The generated id is one core accepts.
        let id = CoreRequestIds.make_request_id(&req).unwrap();
        let text = id.header_value().to_str().unwrap();
        assert_eq!(RequestId::parse(text).unwrap().as_str(), text);
    }

    #[tokio::test]
    async fn credentials_and_cookies_are_marked_sensitive() {
        use tower::ServiceExt;
        let svc = ServiceBuilder::new()
            .layer(SetSensitiveRequestHeadersLayer::new(
                sensitive_request_headers(),
            ))
            .service_fn(|req: Request<()>| async move {
                let marked: Vec<(String, bool)> = req
                    .headers()
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.is_sensitive()))
                    .collect();
                Ok::<_, Infallible>(Response::new(marked))
            });
        let req = Request::builder()
            .header("authorization", "Bearer sk-x")
            .header("x-api-key", "sk-x")
            .header("api-key", "sk-x")
            .header("cookie", "s=1")
            .header("proxy-authorization", "Basic x")
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        let marked = svc.oneshot(req).await.unwrap().into_body();
        assert_eq!(marked.len(), 6);
        for (name, sensitive) in marked {
            assert_eq!(sensitive, name != "content-type", "{name}");
        }
    }

    #[test]
    fn responses_lose_hop_by_hop_headers_and_audit_refusals_close() {
        let mut res = Response::builder()
            .header("connection", "keep-alive")
            .header("keep-alive", "timeout=5")
            .header("content-length", "3")
            .header("x-request-id", "upstream-id")
            .body(Body::from("abc"))
            .unwrap();
        res.extensions_mut()
            .insert(AuditRefused(Duration::from_millis(1500)));
        let res = clean_response(res);
        let h = res.headers();
        assert!(h.get("keep-alive").is_none() && h.get("content-length").is_none());
        assert!(h.get("x-request-id").is_none());
        assert_eq!(h["connection"], "close");
        assert_eq!(h["retry-after"], "1");
    }
}
