//! [`Cache`], the service, and the state its clones share.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Buf;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{HeaderName, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::{BufferedBody, buffer_or_reject};
use tower_deepseek_core::classify::{ClassifiedResponse, Classifier, EndJudge};
use tower_deepseek_core::protocol::ShareVerdict;
use tower_deepseek_core::trace::InSpan;
use tower_deepseek_core::view::{ChatView, JsonKind};
use tower_service::Service;

use super::body::{BoxBody, FollowerBody, LeaderBody, ResponseBody};
use super::config::CacheConfig;
use super::error::ConfigError;
use super::future::ResponseFuture;
use super::layer::CacheLayer;
use crate::entry::{Entry, Kind};
use crate::flight::{FlightKey, Flights, Head, Joined, Role};
use crate::key::{CacheKey, Scope, view_number};
use crate::metrics;
use crate::options::CacheOptions;
use crate::record::Recorder;

/// The `x-cache` response header: `hit-l1`, `hit-l2`, `miss` or `bypass`.
pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

const TARGET: &str = "tower_deepseek_cache";

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    HitL1,
    HitL2,
    Miss,
    Bypass,
}

impl Outcome {
    fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Outcome::HitL1 => "hit-l1",
            Outcome::HitL2 => "hit-l2",
            Outcome::Miss => "miss",
            Outcome::Bypass => "bypass",
        })
    }
    fn label(self) -> &'static str {
        match self {
            Outcome::HitL1 => "hit_l1",
            Outcome::HitL2 => "hit_l2",
            Outcome::Miss => "miss",
            Outcome::Bypass => "bypass",
        }
    }
}

/// An L1 value: the entry and when it expires on tokio's clock (so that paused-time tests and
/// moka's own clock agree on expiry; moka's TTL reclaims the memory).
#[derive(Clone)]
pub(crate) struct L1Value {
    entry: Arc<Entry>,
    expires: tokio::time::Instant,
}

/// The hasher of the in-memory maps. The exact-request alias map hashes whole request bodies
/// (2 KB and more) on every look-up, where std's SipHash cost a measurable share of a miss;
/// foldhash, randomly seeded per process and per map, is several times faster on long keys.
/// Its quality variant, because moka also feeds the hash to its frequency sketch.
type MapHasher = foldhash::quality::RandomState;

/// State shared by every clone of the service (created by the layer).
pub(crate) struct Shared {
    pub(crate) cfg: CacheConfig,
    l1: Option<moka::sync::Cache<CacheKey, L1Value, MapHasher>>,
    /// Exact request → its plan, for requests whose answer was found in L1 (hot prompts): a
    /// repeated identical request skips the JSON parse and the canonical SHA-256.
    raw: Option<moka::sync::Cache<RawKey, RawPlan, MapHasher>>,
    #[cfg(feature = "redis")]
    l2: Option<crate::l2::L2>,
    pub(crate) flights: Flights,
    classifier: Classifier,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Shared");
        d.field("l1_ttl", &self.cfg.l1_ttl)
            .field("l1_max_bytes", &self.cfg.l1_max_bytes);
        #[cfg(feature = "redis")]
        d.field("l2", &self.l2);
        d.finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(cfg: CacheConfig) -> Result<Shared, ConfigError> {
        cfg.validate()?;
        let l1 = (cfg.l1_max_bytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(cfg.l1_max_bytes)
                .weigher(|_k: &CacheKey, v: &L1Value| {
                    u32::try_from(v.entry.weight()).unwrap_or(u32::MAX)
                })
                .time_to_live(cfg.l1_ttl)
                .eviction_listener(|_k, _v, cause| match cause {
                    moka::notification::RemovalCause::Size => metrics::eviction("size"),
                    moka::notification::RemovalCause::Expired => metrics::eviction("expired"),
                    _ => {}
                })
                .build_with_hasher(MapHasher::default())
        });
        let raw = (cfg.l1_max_bytes > 0).then(|| {
            moka::sync::Cache::builder()
                // A quarter of L1's budget: aliases hold request bodies, entries hold answers.
                .max_capacity((cfg.l1_max_bytes / 4).max(1))
                .weigher(|k: &RawKey, _v: &RawPlan| k.weight())
                .time_to_live(cfg.l1_ttl)
                .build_with_hasher(MapHasher::default())
        });
        #[cfg(feature = "redis")]
        let l2 = crate::l2::L2::from_config(&cfg)?;
        Ok(Shared {
            cfg,
            l1,
            raw,
            #[cfg(feature = "redis")]
            l2,
            flights: Flights::default(),
            classifier: Classifier::new(),
        })
    }

    /// The live entry of `key`, its stored form made. An expired entry, or one whose
    /// recorded answer does not read into the stored form, is removed and absent.
    fn l1_get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let l1 = self.l1.as_ref()?;
        let v = l1.get(key)?;
        if tokio::time::Instant::now() >= v.expires || v.entry.stored().is_none() {
            l1.invalidate(key);
            return None;
        }
        Some(v.entry)
    }

    fn l1_put(&self, key: CacheKey, entry: Arc<Entry>) {
        if let Some(l1) = &self.l1 {
            let expires = tokio::time::Instant::now() + self.cfg.l1_ttl;
            l1.insert(key, L1Value { entry, expires });
            // Apply the insertion (and any eviction it causes) so that the gauge is current.
            // Inserts happen once per stored answer, never on the hit path.
            l1.run_pending_tasks();
            metrics::l1_size(l1.weighted_size(), l1.entry_count());
        }
    }

    /// Stores a complete answer in L1, and (in the background) in L2.
    ///
    /// Nothing is rendered here (a JSON answer is not even read into the stored form): the
    /// entry makes each form when a hit first asks for it, and the L2 write serialises the
    /// stored form in its own task, off the request path.
    pub(crate) fn store(self: &Arc<Self>, key: &CacheKey, entry: Entry) {
        let entry = Arc::new(entry);
        #[cfg(feature = "redis")]
        if self.l2.is_some() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let entry = entry.clone();
                let key = *key;
                let shared = self.clone();
                handle.spawn(async move {
                    if let (Some(l2), Some(bytes)) = (&shared.l2, entry.stored_bytes()) {
                        if l2.set(&key, bytes).await {
                            metrics::stored("l2");
                        }
                    }
                });
            }
        }
        self.l1_put(*key, entry);
        metrics::stored("l1");
        tracing::debug!(target: TARGET, key = %key, "answer stored");
    }
}

/// What to do with one request.
enum Plan {
    Bypass(&'static str),
    Cache {
        fkey: FlightKey,
        kind: Kind,
        refresh: bool,
        /// Set when the plan was computed the slow way: remember it for this exact request
        /// if its answer turns out to be in L1.
        alias: Option<(RawKey, RawPlan)>,
    },
}

/// The exact inputs of a cacheable request: the fast path's key. Compared in full (the body
/// byte for byte), so two requests share an alias only if they are identical; a hash
/// collision cannot mix them up.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct RawKey {
    method: Method,
    path: Box<str>,
    scope: RawScope,
    body: bytes::Bytes,
}

/// The scope of a [`RawKey`]. A credential is kept only as its SHA-256.
#[derive(Clone, PartialEq, Eq, Hash)]
enum RawScope {
    Tenant(Box<str>),
    Credential([u8; 32]),
    Anonymous,
}

impl RawKey {
    fn of(req: &Request<BufferedBody>) -> RawKey {
        use sha2::Digest;
        let scope = match Scope::of(req) {
            Scope::Tenant(t) => RawScope::Tenant(t.into()),
            Scope::Credential(c) => RawScope::Credential(sha2::Sha256::digest(c).into()),
            _ => RawScope::Anonymous,
        };
        RawKey {
            method: req.method().clone(),
            path: req.uri().path().into(),
            scope,
            body: req.body().bytes().clone(),
        }
    }

    fn weight(&self) -> u32 {
        u32::try_from(self.body.len() + self.path.len() + 128).unwrap_or(u32::MAX)
    }
}

/// What the slow path learned from a request body.
#[derive(Clone, Copy)]
pub(crate) struct RawPlan {
    fkey: FlightKey,
    kind: Kind,
    zero_temp: bool,
}

fn endpoint_kind(path: &str) -> Option<Kind> {
    if path.ends_with("/chat/completions") {
        Some(Kind::Chat)
    } else if path.ends_with("/completions") {
        Some(Kind::Text)
    } else {
        None
    }
}

/// `no-store` and `no-cache` among the request's `Cache-Control` directives.
fn cache_control(req: &Request<BufferedBody>) -> (bool, bool) {
    let mut no_store = false;
    let mut no_cache = false;
    for v in req.headers().get_all(CACHE_CONTROL) {
        let Ok(v) = v.to_str() else { continue };
        for d in v.split(',') {
            let d = d.trim();
            let name = d.split('=').next().unwrap_or("").trim();
            if name.eq_ignore_ascii_case("no-store") {
                no_store = true;
            } else if name.eq_ignore_ascii_case("no-cache") {
                no_cache = true;
            }
        }
    }
    (no_store, no_cache)
}

impl Shared {
    fn plan(&self, req: &mut Request<BufferedBody>) -> Plan {
        if req.method() != Method::POST {
            return Plan::Bypass("method");
        }
        let Some(kind) = endpoint_kind(req.uri().path()) else {
            return Plan::Bypass("endpoint");
        };
        let opts = req.extensions().get::<CacheOptions>();
        if opts.is_some_and(|o| o.bypass) {
            return Plan::Bypass("request options");
        }
        let (no_store, no_cache) = cache_control(req);
        if no_store {
            return Plan::Bypass("no-store");
        }
        if let Some(ct) = req.headers().get(CONTENT_TYPE) {
            let json = ct
                .as_bytes()
                .windows(4)
                .any(|w| w.eq_ignore_ascii_case(b"json"));
            if !json {
                return Plan::Bypass("content type");
            }
        }
        let allow_any = opts
            .and_then(|o| o.cache_nonzero_temperature)
            .unwrap_or(self.cfg.cache_nonzero_temperature);
        let refresh = no_cache || opts.is_some_and(|o| o.refresh);
        // Fast path: this exact request was planned before and its answer was in L1.
        let raw_key = self.raw.as_ref().map(|_| RawKey::of(req));
        if let (Some(raw), Some(k)) = (&self.raw, &raw_key) {
            if let Some(p) = raw.get(k) {
                if !p.zero_temp && !allow_any {
                    return Plan::Bypass("temperature");
                }
                return Plan::Cache {
                    fkey: p.fkey,
                    kind: p.kind,
                    refresh,
                    alias: None,
                };
            }
        }
        // The request parsed once for every layer: the view a layer above left (when it
        // describes this very body), else parsed here and left for the layers below.
        let body = req.body().bytes().clone();
        let Ok(view) = ChatView::get_or_parse(req.extensions_mut(), &body) else {
            return Plan::Bypass("not JSON");
        };
        let root = view.root();
        if root.kind() != JsonKind::Object {
            return Plan::Bypass("not a JSON object");
        }
        let zero_temp = root
            .get("temperature")
            .filter(|t| t.kind() == JsonKind::Number)
            .and_then(|t| view_number(t.raw()))
            .is_some_and(|n| n.is_zero());
        if !zero_temp && !allow_any {
            return Plan::Bypass("temperature");
        }
        let stream = view.is_stream();
        let include_usage = stream && view.includes_usage();
        // Hashed straight from the view (no second parse, no canonical tree); `None` exactly
        // where serde_json would not read the body.
        let Some(key) = CacheKey::from_view(req.method(), req.uri().path(), Scope::of(req), &view)
        else {
            return Plan::Bypass("not JSON");
        };
        let fkey = FlightKey {
            key,
            stream,
            include_usage,
        };
        Plan::Cache {
            fkey,
            kind,
            refresh,
            alias: raw_key.map(|k| {
                (
                    k,
                    RawPlan {
                        fkey,
                        kind,
                        zero_temp,
                    },
                )
            }),
        }
    }
}

/// The cached answer, in the form the request asks for; `None` if the entry has no stored form
/// (never for an entry from [`Shared::l1_get`] or read from L2).
fn replay<B>(
    entry: &Entry,
    fkey: &FlightKey,
    outcome: Outcome,
) -> Option<Response<ResponseBody<B>>> {
    let (body, ct) = if fkey.stream {
        (
            ResponseBody::replay(entry.sse_frames(fkey.include_usage)?),
            "text/event-stream",
        )
    } else {
        (
            ResponseBody::replay(vec![entry.json()?]),
            "application/json",
        )
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    if fkey.stream {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    h.insert(X_CACHE.clone(), outcome.header());
    Some(resp)
}

/// Abandons the flight if the leader goes away before its response head.
struct LeadGuard<'a> {
    shared: &'a Shared,
    flight: Option<Arc<crate::flight::Flight>>,
    fkey: FlightKey,
    registered: bool,
}

impl LeadGuard<'_> {
    fn disarm(&mut self) -> Arc<crate::flight::Flight> {
        self.flight.take().expect("armed")
    }
}

impl Drop for LeadGuard<'_> {
    fn drop(&mut self) {
        if let Some(flight) = self.flight.take() {
            flight.abandon();
            if self.registered {
                self.shared.flights.remove(&self.fkey, &flight);
            }
        }
    }
}

pub(crate) async fn handle<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    mut inner: S,
    req: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, BoxError>
where
    S: Service<Request<BufferedBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ReqBody: Body + Unpin,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let body = buffer_or_reject(body, shared.cfg.max_request_bytes).await?;
    let mut req = Request::from_parts(parts, body);

    let (fkey, kind, refresh, mut alias) = match shared.plan(&mut req) {
        Plan::Bypass(why) => {
            tracing::trace!(target: TARGET, reason = why, "cache bypassed");
            metrics::request(Outcome::Bypass.label());
            let resp = inner.call(req).await.map_err(Into::into)?;
            let (mut parts, body) = resp.into_parts();
            parts
                .headers
                .insert(X_CACHE.clone(), Outcome::Bypass.header());
            return Ok(Response::from_parts(parts, ResponseBody::passthrough(body)));
        }
        Plan::Cache {
            fkey,
            kind,
            refresh,
            alias,
        } => (fkey, kind, refresh, alias),
    };

    let (flight, registered) = if refresh {
        (Arc::new(crate::flight::Flight::default()), false)
    } else {
        loop {
            if let Some(resp) = shared
                .l1_get(&fkey.key)
                .and_then(|entry| replay(&entry, &fkey, Outcome::HitL1))
            {
                match (&shared.raw, alias.take()) {
                    (Some(raw), Some((k, v))) => raw.insert(k, v),
                    // No alias to add: the plan came from the fast path.
                    (Some(_), None) if !refresh => metrics::exact_hit(),
                    _ => {}
                }
                tracing::debug!(target: TARGET, key = %fkey.key, "hit in L1");
                metrics::request(Outcome::HitL1.label());
                return Ok(resp);
            }
            match shared.flights.enter(fkey) {
                Role::Leader(flight) => {
                    // The flight this request missed may have stored its answer and left
                    // between the look-up above and now (a leader stores before it leaves):
                    // look again rather than call upstream a second time. Whoever joined this
                    // flight meanwhile starts over and finds the answer too.
                    if shared.l1_get(&fkey.key).is_some() {
                        flight.abandon();
                        shared.flights.remove(&fkey, &flight);
                        continue;
                    }
                    break (flight, true);
                }
                Role::Follower(mut follower) => {
                    match std::future::poll_fn(|cx| follower.poll_head(cx)).await {
                        Joined::StartOver => continue,
                        Joined::Head(head) => {
                            tracing::debug!(target: TARGET, key = %fkey.key, "joined an identical request in flight");
                            metrics::merged();
                            metrics::request(Outcome::Miss.label());
                            let mut resp =
                                Response::new(ResponseBody::follower(FollowerBody::new(follower)));
                            *resp.status_mut() = head.status;
                            *resp.version_mut() = head.version;
                            *resp.headers_mut() = head.headers;
                            return Ok(resp);
                        }
                    }
                }
            }
        }
    };
    let mut guard = LeadGuard {
        shared: &shared,
        flight: Some(flight),
        fkey,
        registered,
    };

    #[cfg(feature = "redis")]
    if !refresh {
        if let Some(l2) = &shared.l2 {
            if let Some(bytes) = l2.get(&fkey.key).await {
                let read = Entry::from_stored_bytes(bytes)
                    .and_then(|entry| Some((replay(&entry, &fkey, Outcome::HitL2)?, entry)));
                match read {
                    Some((resp, entry)) => {
                        let entry = Arc::new(entry);
                        tracing::debug!(target: TARGET, key = %fkey.key, "hit in L2; promoted to L1");
                        shared.l1_put(fkey.key, entry.clone());
                        metrics::request(Outcome::HitL2.label());
                        // Followers start over and find the promoted entry in L1.
                        drop(guard);
                        return Ok(resp);
                    }
                    None => {
                        tracing::warn!(target: TARGET, key = %fkey.key, "unreadable L2 entry ignored");
                    }
                }
            }
        }
    }

    tracing::debug!(target: TARGET, key = %fkey.key, refresh, "miss; going upstream");
    metrics::request(Outcome::Miss.label());
    // This layer judges the answer's end before storing it: the layer below that classifies
    // it (the breaker) shares its verdict, so that it is parsed once.
    let mut req = req;
    req.extensions_mut().insert(ShareVerdict);
    let resp = inner.call(req).await.map_err(Into::into)?;
    let (mut parts, body) = resp.into_parts();
    parts
        .headers
        .insert(X_CACHE.clone(), Outcome::Miss.header());

    let recording = if parts.status.is_success() {
        match shared
            .classifier
            .classify_head(parts.status, &parts.headers)
        {
            ClassifiedResponse::RequiresEos(eos) if eos.is_stream() == fkey.stream => {
                // Judged by the verdict a layer below shares when it is about these very frames.
                let judge = EndJudge::from_extensions(eos, &parts.extensions);
                Some((
                    Recorder::new(fkey.stream, kind, shared.cfg.max_entry_bytes),
                    judge,
                ))
            }
            _ => None,
        }
    } else {
        None
    };
    let flight = guard.disarm();
    drop(guard);
    flight.publish_head(Head {
        status: parts.status,
        version: parts.version,
        headers: parts.headers.clone(),
    });
    let boxed: BoxBody = Box::pin(
        body.map_frame(|f| f.map_data(|mut d| d.copy_to_bytes(d.remaining())))
            .map_err(Into::into),
    );
    let leader = LeaderBody::new(
        boxed,
        flight.clone(),
        fkey,
        registered,
        recording,
        shared.clone(),
    );
    // The leader's caller reads the published chunks like every follower. What the upstream
    // body has ready now is read here, in this task: an answer that is already whole (most
    // JSON answers come with their head) is judged and stored with a plain insert, and needs
    // no task. Only a body still on its way gets a task that reads it, so that no caller's
    // pace (or departure) stalls another. Without a runtime, the caller drives the body itself.
    let body = match (tokio::runtime::Handle::try_current(), flight.join()) {
        (Ok(rt), Some(subscription)) => {
            let mut leader = leader;
            let ended = std::future::poll_fn(|cx| Poll::Ready(leader.read_ready(cx))).await;
            if !ended {
                rt.spawn(super::body::drive(leader));
            }
            ResponseBody::follower(FollowerBody::new(subscription))
        }
        _ => ResponseBody::leader(leader),
    };
    Ok(Response::from_parts(parts, body))
}

/// Caches the answers of an inner HTTP service. See the [crate docs](crate).
pub struct Cache<S> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
}

impl<S> Cache<S> {
    /// Wraps `inner` in a cache built from `layer`'s shared state.
    pub fn new(inner: S, layer: &CacheLayer) -> Self {
        Cache {
            inner,
            shared: layer.shared.clone(),
        }
    }

    /// A layer with the defaults: L1 only. See [`CacheLayer::new`].
    pub fn layer() -> CacheLayer {
        CacheLayer::new()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the cache, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for Cache<S> {
    fn clone(&self) -> Self {
        Cache {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Cache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Cache<S>
where
    S: Service<Request<BufferedBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqBody: Body + Send + Unpin + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = BoxError;
    type Future = InSpan<ResponseFuture<ResBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The layer's span (`tower_deepseek_core::trace`), entered around the work below.
        let span = tracing::debug_span!(target: "tower_deepseek_cache", "deepseek.cache", deepseek.layer = "cache", deepseek.outcome = tracing::field::Empty, deepseek.cache.status = tracing::field::Empty);
        let fut = tower_deepseek_core::trace::in_scope(&span, || {
            let clone = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, clone);
            ResponseFuture::new(Box::pin(handle(self.shared.clone(), inner, req)))
        });
        InSpan::new(fut, span).on_head(record_cache_status)
    }
}

/// Records the cache's status of a call (`x-cache`: `hit-l1`, `hit-l2`, `miss`, `bypass`) in
/// its span.
fn record_cache_status(span: &tracing::Span, headers: &http::HeaderMap, _: &http::Extensions) {
    let status = match headers.get(&X_CACHE).map(http::HeaderValue::as_bytes) {
        Some(b"hit-l1") => "hit-l1",
        Some(b"hit-l2") => "hit-l2",
        Some(b"miss") => "miss",
        Some(b"bypass") => "bypass",
        _ => return,
    };
    span.record("deepseek.cache.status", status);
}
