//! Timeouts with paused time.

mod support;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use support::*;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_deepseek_core::BoxError;
use tower_deepseek_core::classify::FailureClass;
use tower_deepseek_core::error::{TimeoutPhase, UpstreamTimeout};
use tower_deepseek_retry::timeout::{AttemptTimeout, TimeoutConfig, TimeoutLayer, TimeoutScale};
use tower_deepseek_retry::{Attempts, RetryLayer};

fn phase(e: &BoxError) -> TimeoutPhase {
    e.downcast_ref::<UpstreamTimeout>()
        .unwrap_or_else(|| panic!("not a timeout: {e}"))
        .phase()
}

/// An inner service whose response head comes after `delay`.
fn slow_head(
    delay: Duration,
) -> impl Service<
    http::Request<()>,
    Response = http::Response<TestBody>,
    Error = BoxError,
    Future = impl Future<Output = Result<http::Response<TestBody>, BoxError>> + Send,
> + Clone {
    tower::service_fn(move |_req: http::Request<()>| async move {
        tokio::time::sleep(delay).await;
        Ok::<_, BoxError>(http::Response::new(TestBody::chunks(["{}"])))
    })
}

#[tokio::test(start_paused = true)]
async fn headers_timeout_with_override_and_scale() {
    let layer = TimeoutLayer::builder()
        .headers(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut svc = layer.layer(slow_head(Duration::from_secs(8)));
    let start = Instant::now();
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap_err();
    assert_eq!(phase(&err), TimeoutPhase::Headers);
    assert_eq!(start.elapsed(), Duration::from_secs(5));

    // the retry layer's scale doubles it: 10 s > 8 s
    let mut req = http::Request::new(());
    req.extensions_mut().insert(TimeoutScale(2.0));
    assert!(svc.ready().await.unwrap().call(req).await.is_ok());

    // a per-request override
    let mut req = http::Request::new(());
    req.extensions_mut()
        .insert(AttemptTimeout(Duration::from_secs(1)));
    let start = Instant::now();
    let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
    assert_eq!(phase(&err), TimeoutPhase::Headers);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

fn sse_service(
    body: impl Fn() -> TestBody + Clone + Send + 'static,
) -> impl Service<
    http::Request<()>,
    Response = http::Response<TestBody>,
    Error = BoxError,
    Future = impl Future<Output = Result<http::Response<TestBody>, BoxError>> + Send,
> + Clone {
    tower::service_fn(move |_req: http::Request<()>| {
        let body = body.clone();
        async move {
            Ok::<_, BoxError>(
                http::Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(body())
                    .unwrap(),
            )
        }
    })
}

/// Feeds `chunks` into a channel body, one every `every`.
fn drip(chunks: Vec<&'static str>, every: Duration) -> TestBody {
    let (tx, body) = TestBody::channel();
    tokio::spawn(async move {
        for c in chunks {
            tokio::time::sleep(every).await;
            if tx.send(Ok(Bytes::from_static(c.as_bytes()))).is_err() {
                return;
            }
        }
    });
    body
}

#[tokio::test(start_paused = true)]
async fn first_token_timeout_ignores_keepalives() {
    let layer = TimeoutLayer::builder()
        .first_token(Duration::from_secs(3))
        .idle(Duration::from_millis(1500))
        .build()
        .unwrap();
    // keep-alive comments and blank lines every second: bytes flow, no token.
    let mut svc = layer.layer(sse_service(|| {
        drip(
            [": keep-alive\n\n", "\n"].repeat(10),
            Duration::from_secs(1),
        )
    }));
    let start = Instant::now();
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    let (body, err) = read_body(resp.into_body()).await;
    assert_eq!(phase(&err.unwrap()), TimeoutPhase::FirstToken);
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert!(body.starts_with(b": keep-alive"));
}

#[tokio::test(start_paused = true)]
async fn idle_gap_after_the_first_token() {
    let layer = TimeoutLayer::builder()
        .first_token(Duration::from_secs(10))
        .idle(Duration::from_secs(2))
        .build()
        .unwrap();
    let ev = "data: {\"choices\":[]}\n\n";
    // events every second: fine
    let mut svc = layer.layer(sse_service(move || {
        drip(vec![ev, ev, ev, "data: [DONE]\n\n"], Duration::from_secs(1))
    }));
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    let (_, err) = read_body(resp.into_body()).await;
    assert!(err.is_none(), "{err:?}");

    // then a 3 s gap: idle timeout after 2 s of silence
    let mut svc = layer.layer(sse_service(move || {
        let (tx, body) = TestBody::channel();
        tokio::spawn(async move {
            tx.send(Ok(Bytes::from_static(ev.as_bytes()))).unwrap();
            tokio::time::sleep(Duration::from_secs(3)).await;
            let _ = tx.send(Ok(Bytes::from_static(ev.as_bytes())));
        });
        body
    }));
    let start = Instant::now();
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    let (body, err) = read_body(resp.into_body()).await;
    assert_eq!(phase(&err.unwrap()), TimeoutPhase::Idle);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(body, ev.as_bytes());
}

#[tokio::test(start_paused = true)]
async fn total_timeout_bounds_head_and_body() {
    let layer = TimeoutLayer::builder()
        .headers(Duration::from_secs(30))
        .total(Duration::from_secs(4))
        .build()
        .unwrap();
    let mut svc = layer.layer(slow_head(Duration::from_secs(10)));
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap_err();
    assert_eq!(phase(&err), TimeoutPhase::Total);

    let ev = "data: {\"choices\":[]}\n\n";
    let mut svc = layer.layer(sse_service(move || {
        drip(vec![ev; 10], Duration::from_secs(1))
    }));
    let start = Instant::now();
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    let (_, err) = read_body(resp.into_body()).await;
    assert_eq!(phase(&err.unwrap()), TimeoutPhase::Total);
    assert_eq!(start.elapsed(), Duration::from_secs(4));
}

#[tokio::test(start_paused = true)]
async fn zero_is_rejected() {
    assert!(
        TimeoutLayer::builder()
            .idle(Duration::ZERO)
            .build()
            .is_err()
    );
    let cfg: tower_deepseek_retry::timeout::TimeoutConfig =
        serde_json::from_str(r#"{"first_token_ms":30000,"idle_ms":null}"#).unwrap();
    assert_eq!(cfg.first_token, Some(Duration::from_millis(30_000)));
    assert!(TimeoutLayer::from_config(cfg).is_ok());
}

#[tokio::test(start_paused = true)]
async fn first_token_timeout_below_retry_is_retried_with_a_longer_timeout() {
    let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let c2 = calls.clone();
    // first attempt: keep-alives for 4 s then content at 5 s; the first-token timeout is 3 s, so it is
    // cut and retried with 6 s, which this time is enough.
    let inner = tower::service_fn(
        move |req: http::Request<
            tower_deepseek_core::body::ReplayBody<http_body_util::Full<Bytes>>,
        >| {
            c2.lock()
                .unwrap()
                .push(req.extensions().get::<TimeoutScale>().map(|s| s.0));
            async move {
                Ok::<_, BoxError>(
                    http::Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(drip(
                            vec![
                                ": keep-alive\n\n",
                                ": keep-alive\n\n",
                                ": keep-alive\n\n",
                                ": keep-alive\n\n",
                                SSE_OK,
                            ],
                            Duration::from_secs(1),
                        ))
                        .unwrap(),
                )
            }
        },
    );
    let svc = tower::ServiceBuilder::new()
        .layer(RetryLayer::builder().rng_seed(1).build().unwrap())
        .layer(
            TimeoutLayer::builder()
                .first_token(Duration::from_secs(3))
                .build()
                .unwrap(),
        )
        .service(inner);
    let resp = svc.oneshot(req("{}")).await.unwrap();
    let a = resp.extensions().get::<Attempts>().unwrap().clone();
    assert_eq!(a.failures(), &[FailureClass::Timeout]);
    assert_eq!(*calls.lock().unwrap(), [None, Some(2.0)]);
    let (body, err) = read_body(resp.into_body()).await;
    assert!(err.is_none());
    assert!(String::from_utf8(body).unwrap().ends_with(SSE_OK));
}

// --- the defaults bound every wait ---

/// Calls `inner` once through a default `TimeoutLayer` and reads the body to its end: what
/// came, the phase of the timeout that ended it, and when.
async fn through_default_timeouts<S>(inner: S) -> (Vec<u8>, TimeoutPhase, Duration)
where
    S: Service<http::Request<()>, Response = http::Response<TestBody>, Error = BoxError>,
{
    let mut svc = TimeoutLayer::builder().build().unwrap().layer(inner);
    let start = Instant::now();
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    let (body, err) = read_body(resp.into_body()).await;
    (body, phase(&err.expect("a timeout")), start.elapsed())
}

#[tokio::test(start_paused = true)]
async fn by_default_a_head_that_never_comes_fails_after_a_minute() {
    let mut svc = TimeoutLayer::builder()
        .build()
        .unwrap()
        .layer(slow_head(Duration::from_secs(200)));
    let start = Instant::now();
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap_err();
    assert_eq!(phase(&err), TimeoutPhase::Headers);
    assert_eq!(start.elapsed(), TimeoutConfig::DEFAULT_HEADERS);
}

#[tokio::test(start_paused = true)]
async fn by_default_keepalives_without_a_token_fail_after_two_minutes() {
    let (_, phase_hit, elapsed) = through_default_timeouts(sse_service(|| {
        drip(vec![": keep-alive\n\n"; 400], Duration::from_secs(1))
    }))
    .await;
    assert_eq!(phase_hit, TimeoutPhase::FirstToken);
    assert_eq!(elapsed, TimeoutConfig::DEFAULT_FIRST_TOKEN);
}

#[tokio::test(start_paused = true)]
async fn by_default_a_stream_that_pauses_200_s_fails_after_a_minute_of_silence() {
    let (body, phase_hit, elapsed) = through_default_timeouts(sse_service(|| {
        let (tx, body) = TestBody::channel();
        tokio::spawn(async move {
            let token = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
            let _ = tx.send(Ok(Bytes::from_static(token.as_bytes())));
            tokio::time::sleep(Duration::from_secs(200)).await;
            let _ = tx.send(Ok(Bytes::from_static(token.as_bytes())));
        });
        body
    }))
    .await;
    assert_eq!(phase_hit, TimeoutPhase::Idle);
    assert_eq!(elapsed, TimeoutConfig::DEFAULT_IDLE);
    assert!(
        body.starts_with(b"data: "),
        "the token that came is delivered"
    );
}

#[tokio::test(start_paused = true)]
async fn by_default_an_endless_stream_fails_after_twenty_minutes() {
    let (_, phase_hit, elapsed) = through_default_timeouts(sse_service(|| {
        drip(
            vec!["data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n"; 100_000],
            Duration::from_secs(30),
        )
    }))
    .await;
    assert_eq!(phase_hit, TimeoutPhase::Total);
    assert_eq!(elapsed, TimeoutConfig::DEFAULT_TOTAL);
}

#[tokio::test(start_paused = true)]
async fn none_leaves_a_wait_unbounded_and_serde_null_means_none() {
    let mut svc = TimeoutLayer::builder()
        .headers(None)
        .build()
        .unwrap()
        .layer(slow_head(Duration::from_secs(200)));
    assert!(
        svc.ready()
            .await
            .unwrap()
            .call(http::Request::new(()))
            .await
            .is_ok()
    );
    let absent: TimeoutConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(absent, TimeoutConfig::default());
    assert_eq!(absent.headers, Some(Duration::from_millis(60_000)));
    let null: TimeoutConfig = serde_json::from_str(r#"{"headers_ms": null}"#).unwrap();
    assert_eq!(null.headers, None);
    assert_eq!(null.idle, Some(Duration::from_millis(60_000)));
    assert_eq!(TimeoutConfig::none().total, None);
}
