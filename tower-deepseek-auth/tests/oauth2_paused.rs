//! OAuth2Layer with in-process token endpoint and upstream, under paused time.
#![allow(clippy::type_complexity)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use tower::{Layer, ServiceExt, service_fn};
use tower_deepseek_auth::oauth2::ReplayBody;
use tower_deepseek_auth::{OAuth2Config, OAuth2Layer, TokenFetchErrorKind, TokenFetchFailed};
use tower_deepseek_core::body::BufferedBody;

/// What the fake token endpoint answers to fetch number `n` (1-based).
type Script = Arc<dyn Fn(usize) -> (u16, String) + Send + Sync>;

#[derive(Clone)]
struct Endpoint {
    fetches: Arc<AtomicUsize>,
    /// Fetches from number `gate_from` on wait for a permit.
    gate: Arc<Semaphore>,
    gate_from: usize,
    script: Script,
}

impl Endpoint {
    fn new(script: impl Fn(usize) -> (u16, String) + Send + Sync + 'static) -> Self {
        Self {
            fetches: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
            gate_from: usize::MAX,
            script: Arc::new(script),
        }
    }

    fn gated_from(mut self, n: usize) -> Self {
        self.gate_from = n;
        self
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn service(
        &self,
    ) -> impl tower::Service<
        Request<BufferedBody>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
    > + Clone
    + Send
    + Sync
    + 'static {
        let me = self.clone();
        service_fn(move |req: Request<BufferedBody>| {
            let me = me.clone();
            async move {
                assert_eq!(req.method(), http::Method::POST);
                assert!(req.headers()["authorization"].is_sensitive());
                let n = me.fetches.fetch_add(1, Ordering::SeqCst) + 1;
                if n >= me.gate_from {
                    me.gate.acquire().await.unwrap().forget();
                }
                let (status, body) = (me.script)(n);
                let mut resp = Response::new(Full::new(Bytes::from(body)));
                *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                Ok(resp)
            }
        })
    }
}

fn ok_token(n: usize, expires_in: Option<u64>) -> (u16, String) {
    let mut body = serde_json::json!({"access_token": format!("tok-{n}"), "token_type": "Bearer"});
    if let Some(e) = expires_in {
        body["expires_in"] = e.into();
    }
    (200, body.to_string())
}

/// An upstream that answers with the bearer it saw; 401 for tokens in `refused`.
#[derive(Clone)]
struct Upstream {
    seen: Arc<Mutex<Vec<(String, Bytes)>>>,
    refused: Arc<Mutex<Vec<String>>>,
    /// Requests with body `hold` and token `tok-1` wait for a permit before answering.
    hold: Arc<Semaphore>,
    held: Arc<AtomicUsize>,
    /// Per call: whether the layer handed on a buffered (kept for replay) body.
    buffered: Arc<Mutex<Vec<bool>>>,
}

impl Default for Upstream {
    fn default() -> Self {
        Self {
            seen: Arc::default(),
            refused: Arc::default(),
            hold: Arc::new(Semaphore::new(0)),
            held: Arc::default(),
            buffered: Arc::default(),
        }
    }
}

impl Upstream {
    fn service(
        &self,
    ) -> impl tower::Service<
        Request<ReplayBody<Full<Bytes>>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
    > + Clone
    + Send
    + 'static {
        let me = self.clone();
        service_fn(move |req: Request<ReplayBody<Full<Bytes>>>| {
            let me = me.clone();
            async move {
                let auth = req.headers()["authorization"].clone();
                assert!(auth.is_sensitive());
                me.buffered.lock().unwrap().push(req.body().is_buffered());
                let token = auth
                    .to_str()
                    .unwrap()
                    .trim_start_matches("Bearer ")
                    .to_owned();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                if body == "hold" && token == "tok-1" {
                    me.held.fetch_add(1, Ordering::SeqCst);
                    me.hold.acquire().await.unwrap().forget();
                }
                me.seen.lock().unwrap().push((token.clone(), body));
                let refused = me.refused.lock().unwrap().contains(&token);
                let mut resp = Response::new(Full::new(Bytes::from(token)));
                if refused {
                    *resp.status_mut() = StatusCode::UNAUTHORIZED;
                }
                Ok(resp)
            }
        })
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

fn config() -> OAuth2Config {
    OAuth2Config::new("http://auth.test/oauth2/token", "client", "secret")
        .refresh_jitter(Duration::ZERO)
}

async fn call<S>(svc: &S, body: &'static str) -> Response<Full<Bytes>>
where
    S: tower::Service<
            Request<Full<Bytes>>,
            Response = Response<Full<Bytes>>,
            Error = tower_deepseek_core::BoxError,
        > + Clone,
{
    svc.clone()
        .oneshot(Request::new(Full::new(Bytes::from_static(body.as_bytes()))))
        .await
        .unwrap()
}

async fn token_of(resp: Response<Full<Bytes>>) -> String {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Lets spawned tasks run until `cond` holds (no time passes).
async fn until(mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition never held");
}

#[tokio::test(start_paused = true)]
async fn refresh_starts_at_expires_in_minus_margin_and_the_old_token_serves_meanwhile() {
    let endpoint = Endpoint::new(|n| ok_token(n, Some(3600))).gated_from(2);
    let upstream = Upstream::default();
    let layer = OAuth2Layer::new(config(), endpoint.service()).unwrap();
    let svc = layer.layer(upstream.service());

    assert_eq!(token_of(call(&svc, "a").await).await, "tok-1");
    assert_eq!(endpoint.fetches(), 1);

    // One second before expires_in − margin (3600 − 600 s): no refresh yet.
    tokio::time::advance(Duration::from_secs(2999)).await;
    assert_eq!(token_of(call(&svc, "b").await).await, "tok-1");
    tokio::task::yield_now().await;
    assert_eq!(endpoint.fetches(), 1);

    // At 3000 s the first request starts one background refresh and is not held up by it.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(token_of(call(&svc, "c").await).await, "tok-1");
    until(|| endpoint.fetches() == 2).await;

    // While the refresh is in flight, the old token serves and no second refresh starts.
    for _ in 0..10 {
        assert_eq!(token_of(call(&svc, "d").await).await, "tok-1");
    }
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(token_of(call(&svc, "e").await).await, "tok-1");
    assert_eq!(endpoint.fetches(), 2);

    // The new token arrives and takes over.
    endpoint.gate.add_permits(1);
    let mut got = String::new();
    for _ in 0..1000 {
        got = token_of(call(&svc, "f").await).await;
        if got == "tok-2" {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(got, "tok-2");
    assert_eq!(endpoint.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_background_refresh_keeps_the_token_and_tries_again_later() {
    let endpoint = Endpoint::new(|n| match n {
        2 => (
            400,
            r#"{"error":"invalid_grant","error_description":"nope"}"#.into(),
        ),
        n => ok_token(n, Some(3600)),
    });
    let upstream = Upstream::default();
    let layer = OAuth2Layer::new(config(), endpoint.service()).unwrap();
    let svc = layer.layer(upstream.service());

    assert_eq!(token_of(call(&svc, "a").await).await, "tok-1");
    tokio::time::advance(Duration::from_secs(3000)).await;
    assert_eq!(token_of(call(&svc, "b").await).await, "tok-1");
    until(|| endpoint.fetches() == 2).await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    // Still served, and no refresh storm.
    for _ in 0..10 {
        assert_eq!(token_of(call(&svc, "c").await).await, "tok-1");
    }
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(endpoint.fetches(), 2);
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(token_of(call(&svc, "d").await).await, "tok-1");
    until(|| endpoint.fetches() == 3).await;
    let mut got = String::new();
    for _ in 0..1000 {
        got = token_of(call(&svc, "e").await).await;
        if got == "tok-3" {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(got, "tok-3");
}

#[tokio::test(start_paused = true)]
async fn without_expires_in_the_token_lives_two_hours() {
    let endpoint = Endpoint::new(|n| ok_token(n, None));
    let upstream = Upstream::default();
    let layer = OAuth2Layer::new(config(), endpoint.service()).unwrap();
    let svc = layer.layer(upstream.service());
    assert_eq!(token_of(call(&svc, "a").await).await, "tok-1");
    // 2 h − 10 min − 1 s: not due.
    tokio::time::advance(Duration::from_secs(7200 - 600 - 1)).await;
    call(&svc, "b").await;
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert_eq!(endpoint.fetches(), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    call(&svc, "c").await;
    until(|| endpoint.fetches() == 2).await;
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_is_never_sent() {
    let endpoint = Endpoint::new(|n| ok_token(n, Some(60))).gated_from(2);
    let upstream = Upstream::default();
    let layer = OAuth2Layer::new(config(), endpoint.service()).unwrap();
    let svc = layer.layer(upstream.service());
    assert_eq!(token_of(call(&svc, "a").await).await, "tok-1");
    // Past expiry, the refresh its timer started at 30 s still in flight: requests wait for
    // that one fetch.
    tokio::time::advance(Duration::from_secs(61)).await;
    let waiting: Vec<_> = (0..5)
        .map(|_| tokio::spawn(call_owned(svc.clone())))
        .collect();
    until(|| endpoint.fetches() == 2).await;
    assert_eq!(upstream.calls(), 1, "nobody sent the expired token");
    endpoint.gate.add_permits(1);
    for w in waiting {
        assert_eq!(w.await.unwrap(), "tok-2");
    }
    assert_eq!(endpoint.fetches(), 2);
}

async fn call_owned<S>(svc: S) -> String
where
    S: tower::Service<
            Request<Full<Bytes>>,
            Response = Response<Full<Bytes>>,
            Error = tower_deepseek_core::BoxError,
        > + Clone,
{
    token_of(call(&svc, "x").await).await
}

#[tokio::test(start_paused = true)]
async fn an_oversized_body_is_sent_once_and_its_401_returned_as_is() {
    let endpoint = Endpoint::new(|n| ok_token(n, Some(3600)));
    let upstream = Upstream::default();
    upstream.refused.lock().unwrap().push("tok-1".into());
    let layer = OAuth2Layer::new(config().body_limit(8), endpoint.service()).unwrap();
    let svc = layer.layer(upstream.service());
    let resp = call(&svc, "a body longer than eight bytes").await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(upstream.calls(), 1, "no replay without a buffered body");
    assert_eq!(
        upstream.seen.lock().unwrap()[0].1,
        "a body longer than eight bytes",
        "every byte was sent"
    );
    // The refused token was dropped: the next request gets a new one.
    let resp = call(&svc, "small").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(token_of(resp).await, "tok-2");
}

#[tokio::test(start_paused = true)]
async fn a_401_to_an_old_token_does_not_drop_a_newer_one() {
    let endpoint = Endpoint::new(|n| ok_token(n, Some(3600)));
    let upstream = Upstream::default();
    let layer = OAuth2Layer::new(config(), endpoint.service()).unwrap();
    let svc = layer.layer(upstream.service());
    assert_eq!(token_of(call(&svc, "a").await).await, "tok-1");
    // X is in flight with tok-1 ...
    let x = tokio::spawn({
        let svc = svc.clone();
        async move { token_of(call(&svc, "hold").await).await }
    });
    until(|| upstream.held.load(Ordering::SeqCst) == 1).await;
    // ... when tok-1 is revoked: Y gets a 401, refreshes (tok-2) and replays.
    upstream.refused.lock().unwrap().push("tok-1".into());
    assert_eq!(token_of(call(&svc, "y").await).await, "tok-2");
    assert_eq!(endpoint.fetches(), 2);
    // X's late 401 must not drop tok-2 nor fetch again: it replays with tok-2.
    upstream.hold.add_permits(1);
    assert_eq!(x.await.unwrap(), "tok-2");
    assert_eq!(endpoint.fetches(), 2);
    assert_eq!(token_of(call(&svc, "z").await).await, "tok-2");
    assert_eq!(endpoint.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn waiters_share_a_failed_fetch_instead_of_queueing() {
    let endpoint =
        Endpoint::new(|_| (401, r#"{"error":"invalid_client"}"#.to_owned())).gated_from(1);
    let upstream = Upstream::default();
    let layer = OAuth2Layer::new(config(), endpoint.service()).unwrap();
    let svc = layer.layer(upstream.service());
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                svc.oneshot(Request::new(Full::new(Bytes::new())))
                    .await
                    .unwrap_err()
            })
        })
        .collect();
    until(|| endpoint.fetches() == 1).await;
    endpoint.gate.add_permits(1);
    for t in tasks {
        let err = t.await.unwrap();
        let err = err.downcast_ref::<TokenFetchFailed>().unwrap();
        assert_eq!(err.kind(), TokenFetchErrorKind::InvalidClient);
    }
    assert_eq!(endpoint.fetches(), 1);
    assert_eq!(upstream.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn layer_and_services_are_clone_and_debug_without_secrets() {
    let endpoint = Endpoint::new(|n| ok_token(n, Some(3600)));
    let layer = OAuth2Layer::new(config(), endpoint.service()).unwrap();
    let svc = layer.layer(Upstream::default().service());
    call(&svc, "a").await;
    let shown = format!("{layer:?}");
    assert!(
        !shown.contains("tok-1") && !shown.contains("secret\""),
        "{shown}"
    );
    fn assert_clone<T: Clone>(_: &T) {}
    assert_clone(&svc);
}

#[tokio::test(start_paused = true)]
async fn with_replay_off_a_401_invalidates_and_goes_back_and_bodies_stream_through() {
    let endpoint = Endpoint::new(|n| ok_token(n, Some(3600)));
    let upstream = Upstream::default();
    let layer = OAuth2Layer::new(config().replay_on_401(false), endpoint.service()).unwrap();
    let svc = layer.layer(upstream.service());
    assert_eq!(token_of(call(&svc, "a").await).await, "tok-1");
    upstream.refused.lock().unwrap().push("tok-1".into());
    let resp = call(&svc, "b").await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(upstream.calls(), 2, "no replay");
    assert_eq!(upstream.seen.lock().unwrap()[1].1, "b");
    let resp = call(&svc, "c").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(token_of(resp).await, "tok-2");
    assert_eq!(endpoint.fetches(), 2);
}

/// A store that always fails, to see the layer fail open.
#[derive(Debug)]
struct BrokenStore;

impl tower_deepseek_auth::store::TokenStore for BrokenStore {
    fn get<'a>(
        &'a self,
        _key: &'a str,
    ) -> tower_deepseek_auth::store::StoreFuture<'a, Option<tower_deepseek_auth::store::StoredToken>>
    {
        Box::pin(async { Err("store down".into()) })
    }
    fn put<'a>(
        &'a self,
        _key: &'a str,
        _token: &'a tower_deepseek_auth::store::StoredToken,
        _ttl: Duration,
    ) -> tower_deepseek_auth::store::StoreFuture<'a, ()> {
        Box::pin(async { Err("store down".into()) })
    }
    fn try_lock<'a>(
        &'a self,
        _key: &'a str,
        _ttl: Duration,
    ) -> tower_deepseek_auth::store::StoreFuture<'a, Option<tower_deepseek_auth::store::LockToken>>
    {
        Box::pin(async { Err("store down".into()) })
    }
    fn unlock<'a>(
        &'a self,
        _key: &'a str,
        _lock: tower_deepseek_auth::store::LockToken,
    ) -> tower_deepseek_auth::store::StoreFuture<'a, ()> {
        Box::pin(async { Err("store down".into()) })
    }
}

#[tokio::test(start_paused = true)]
async fn metrics_count_fetches_refreshes_replays_and_store_errors() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let endpoint = Endpoint::new(|n| ok_token(n, Some(3600)));
    let upstream = Upstream::default();
    let layer = OAuth2Layer::builder(config(), endpoint.service())
        .store(BrokenStore)
        .build()
        .unwrap();
    let svc = layer.layer(upstream.service());
    assert_eq!(token_of(call(&svc, "a").await).await, "tok-1");
    upstream.refused.lock().unwrap().push("tok-1".into());
    assert_eq!(token_of(call(&svc, "b").await).await, "tok-2");
    tokio::time::advance(Duration::from_secs(3000)).await;
    call(&svc, "c").await;
    until(|| endpoint.fetches() == 3).await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }

    let mut counters = std::collections::HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        if let DebugValue::Counter(n) = value {
            counters.insert(format!("{}{labels:?}", key.name()), n);
        }
    }
    let get = |k: &str| counters.get(k).copied().unwrap_or(0);
    assert_eq!(
        get(r#"deepseek_auth_token_fetches_total["outcome=success"]"#),
        3,
        "{counters:?}"
    );
    assert_eq!(
        get(r#"deepseek_auth_401_replays_total[]"#),
        1,
        "{counters:?}"
    );
    assert_eq!(
        get(r#"deepseek_auth_token_refreshes_total["trigger=ahead"]"#),
        1,
        "{counters:?}"
    );
    assert_eq!(
        get(r#"deepseek_auth_token_refreshes_total["trigger=unauthorized"]"#),
        1
    );
    assert_eq!(
        get(r#"deepseek_auth_token_refreshes_total["trigger=missing"]"#),
        1
    );
    assert_eq!(
        get(r#"deepseek_auth_token_store_errors_total["op=get"]"#),
        3,
        "every fetch tried the store and failed open: {counters:?}"
    );
}

// ---- the replay after a 401 offered by a layer above (the retry layer) ----

use tower_deepseek_core::protocol::{CredentialRefreshed, ReplayOn401};

async fn call_marked<S>(svc: &S, body: &'static str, mark: ReplayOn401) -> Response<Full<Bytes>>
where
    S: tower::Service<
            Request<Full<Bytes>>,
            Response = Response<Full<Bytes>>,
            Error = tower_deepseek_core::BoxError,
        > + Clone,
{
    let mut req = Request::new(Full::new(Bytes::from_static(body.as_bytes())));
    req.extensions_mut().insert(mark);
    svc.clone().oneshot(req).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_offered_replay_keeps_no_copy_and_marks_the_401_after_a_new_token() {
    let endpoint = Endpoint::new(|n| ok_token(n, Some(3600)));
    let upstream = Upstream::default();
    let svc = OAuth2Layer::new(config(), endpoint.service())
        .unwrap()
        .layer(upstream.service());
    let resp = call_marked(&svc, "a", ReplayOn401::Offered).await;
    assert_eq!(token_of(resp).await, "tok-1");
    upstream.refused.lock().unwrap().push("tok-1".into());
    let resp = call_marked(&svc, "b", ReplayOn401::Offered).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.extensions().get::<CredentialRefreshed>().is_some());
    assert_eq!(upstream.calls(), 2, "the layer above replays, not this one");
    assert_eq!(
        endpoint.fetches(),
        2,
        "the new token was obtained before answering"
    );
    // The replay from above carries the new token.
    let resp = call_marked(&svc, "b", ReplayOn401::Replaying).await;
    assert_eq!(token_of(resp).await, "tok-2");
    assert_eq!(endpoint.fetches(), 2);
    assert_eq!(
        *upstream.buffered.lock().unwrap(),
        [false, false, false],
        "no body kept for a replay of its own"
    );
    // Without the offer, the layer keeps its own copy again.
    call(&svc, "c").await;
    assert!(upstream.buffered.lock().unwrap()[3]);
}

/// One call marked `mark` through an OAuth2 layer (`config`, `endpoint`) to an upstream that
/// refuses `tok-1`: the first token. It must answer a 401.
async fn refused_once(
    config: OAuth2Config,
    endpoint: &Endpoint,
    mark: ReplayOn401,
) -> (Upstream, Response<Full<Bytes>>) {
    let upstream = Upstream::default();
    let svc = OAuth2Layer::new(config, endpoint.service())
        .unwrap()
        .layer(upstream.service());
    upstream.refused.lock().unwrap().push("tok-1".into());
    let resp = call_marked(&svc, "a", mark).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    (upstream, resp)
}

#[tokio::test(start_paused = true)]
async fn a_401_to_the_replay_from_above_is_final() {
    let endpoint = Endpoint::new(|n| ok_token(n, Some(3600)));
    let (upstream, resp) = refused_once(config(), &endpoint, ReplayOn401::Replaying).await;
    assert!(resp.extensions().get::<CredentialRefreshed>().is_none());
    assert_eq!(upstream.calls(), 1);
    assert_eq!(endpoint.fetches(), 1, "no refresh for the replay's 401");
}

#[tokio::test(start_paused = true)]
async fn without_a_new_token_the_offered_401_goes_back_unmarked() {
    let endpoint = Endpoint::new(|n| {
        if n == 1 {
            ok_token(n, Some(3600))
        } else {
            (401, r#"{"error":"invalid_client"}"#.to_owned())
        }
    });
    let (_, resp) = refused_once(config(), &endpoint, ReplayOn401::Offered).await;
    assert!(resp.extensions().get::<CredentialRefreshed>().is_none());
    assert_eq!(endpoint.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn with_replay_off_an_offer_is_ignored() {
    let endpoint = Endpoint::new(|n| ok_token(n, Some(3600)));
    let (_, resp) = refused_once(
        config().replay_on_401(false),
        &endpoint,
        ReplayOn401::Offered,
    )
    .await;
    assert!(resp.extensions().get::<CredentialRefreshed>().is_none());
    assert_eq!(endpoint.fetches(), 1, "invalidated, not refreshed");
}

/// An inner service that counts its clones (a hyper client's clone is several reference
/// counts, so a layer should not make one per call when it does not need it).
struct CountClones<S> {
    inner: S,
    clones: Arc<AtomicUsize>,
}

impl<S: Clone> Clone for CountClones<S> {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, Ordering::SeqCst);
        Self {
            inner: self.inner.clone(),
            clones: Arc::clone(&self.clones),
        }
    }
}

impl<S: tower::Service<R>, R> tower::Service<R> for CountClones<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> S::Future {
        self.inner.call(req)
    }
}

/// With a fresh token, a request sent once (replay offered from above, the replay itself, or
/// replays off) is handed to the inner service without cloning it; only a request this layer
/// may replay on its own takes the ready service and leaves a clone, as a 401 replay needs.
#[tokio::test(start_paused = true)]
async fn only_a_call_it_may_replay_itself_clones_the_inner_service() {
    for (config, mark, expected) in [
        (config(), Some(ReplayOn401::Offered), 0),
        (config(), Some(ReplayOn401::Replaying), 0),
        (config().replay_on_401(false), None, 0),
        (config(), None, 1),
    ] {
        let endpoint = Endpoint::new(|n| ok_token(n, Some(3600)));
        let layer = OAuth2Layer::new(config, endpoint.service()).unwrap();
        layer.warm_up().await.unwrap();
        let clones = Arc::new(AtomicUsize::new(0));
        let mut svc = layer.layer(CountClones {
            inner: Upstream::default().service(),
            clones: Arc::clone(&clones),
        });
        let mut req = Request::new(Full::new(Bytes::from_static(b"x")));
        if let Some(mark) = mark {
            req.extensions_mut().insert(mark);
        }
        let resp = tower::Service::call(svc.ready().await.unwrap(), req)
            .await
            .unwrap();
        assert_eq!(token_of(resp).await, "tok-1");
        assert_eq!(
            clones.load(Ordering::SeqCst),
            expected,
            "{mark:?}, {expected} clone(s) expected"
        );
    }
}

/// The refresh ahead starts at `expires_in` minus the margin even when no request comes, so
/// that the first request after a quiet spell does not wait for a fetch.
#[tokio::test(start_paused = true)]
async fn an_idle_layer_refreshes_ahead_on_time() {
    let endpoint = Endpoint::new(|n| ok_token(n, Some(3600)));
    let upstream = Upstream::default();
    let layer = OAuth2Layer::new(config(), endpoint.service()).unwrap();
    let svc = layer.layer(upstream.service());
    assert_eq!(token_of(call(&svc, "a").await).await, "tok-1");
    tokio::time::advance(Duration::from_secs(2999)).await;
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert_eq!(endpoint.fetches(), 1, "not before expires_in − margin");
    tokio::time::advance(Duration::from_secs(1)).await;
    until(|| endpoint.fetches() == 2).await;
    // Past the first token's expiry: the next request is served at once with the new one.
    tokio::time::advance(Duration::from_secs(700)).await;
    assert_eq!(token_of(call(&svc, "b").await).await, "tok-2");
    assert_eq!(endpoint.fetches(), 2);
}

/// A token's timer runs on the runtime that installed it. When that runtime is gone (a token
/// obtained in one runtime, used in another), the token falls back to the clock: it expires
/// on time and is replaced, never sent past its expiry.
#[test]
fn a_token_whose_timer_runtime_is_gone_still_expires() {
    let paused = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let endpoint = Endpoint::new(|n| ok_token(n, Some(3600)));
    let upstream = Upstream::default();
    let first = paused();
    let svc = first.block_on(async {
        let layer = OAuth2Layer::new(config(), endpoint.service()).unwrap();
        layer.warm_up().await.unwrap();
        layer.layer(upstream.service())
    });
    drop(first);
    assert_eq!(endpoint.fetches(), 1);
    paused().block_on(async {
        assert_eq!(token_of(call(&svc, "a").await).await, "tok-1");
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(token_of(call(&svc, "b").await).await, "tok-2");
        assert_eq!(endpoint.fetches(), 2);
    });
}

/// A service kept for many calls (not cloned per call, as a connection task keeps it) sends
/// each new token from the call after it is installed, whether a refresh ahead or a 401
/// through another clone replaced it: no per-service copy of the token may go stale.
#[tokio::test(start_paused = true)]
async fn a_long_lived_service_sends_each_new_token_at_once() {
    async fn send<S>(svc: &mut S, body: &'static str) -> Response<Full<Bytes>>
    where
        S: tower::Service<
                Request<Full<Bytes>>,
                Response = Response<Full<Bytes>>,
                Error = tower_deepseek_core::BoxError,
            >,
    {
        let req = Request::new(Full::new(Bytes::from_static(body.as_bytes())));
        svc.ready().await.unwrap().call(req).await.unwrap()
    }

    let endpoint = Endpoint::new(|n| ok_token(n, Some(3600)));
    let upstream = Upstream::default();
    let layer = OAuth2Layer::new(config(), endpoint.service()).unwrap();
    let mut kept = layer.layer(upstream.service());
    assert_eq!(token_of(send(&mut kept, "a").await).await, "tok-1");

    // Refreshed ahead (tok-1 stays usable): the kept service sends tok-2 from now on.
    tokio::time::advance(Duration::from_secs(3000)).await;
    until(|| endpoint.fetches() == 2).await;
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert_eq!(token_of(send(&mut kept, "b").await).await, "tok-2");

    // tok-2 refused: another clone's 401 replaces it with tok-3; the kept service sends tok-3
    // straight away, without a 401 of its own.
    upstream.refused.lock().unwrap().push("tok-2".into());
    assert_eq!(token_of(call(&kept, "c").await).await, "tok-3");
    let calls = upstream.calls();
    let resp = send(&mut kept, "d").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(token_of(resp).await, "tok-3");
    assert_eq!(upstream.calls(), calls + 1, "no 401 and replay on the way");
    assert_eq!(endpoint.fetches(), 3);
}
