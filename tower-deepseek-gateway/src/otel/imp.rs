//! The exporter, the per-call spans and the upstream-attempt wrapper (feature `otel`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::future::Either;
use http::{HeaderMap, Request, Response, StatusCode};
use opentelemetry::context::{FutureExt as _, WithContext};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use tower_deepseek::core::classify::{ResponseSummary, StreamEnd};
use tower_deepseek::core::protocol::{Attempts, BreakerStatus, CollectCallFacts};
use tracing::Dispatch;
use tracing::instrument::{WithDispatch, WithSubscriber as _};

use super::{OtelConfig, model_attr};

const SCOPE: &str = "tower-deepseek-gateway";

/// The gateway's tracer provider: one per gateway, flushed when it stops.
pub(crate) struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    timeout: Duration,
    /// The subscriber of the stack calls: the layers' spans to OpenTelemetry, events to the
    /// program's own subscriber.
    layers: Dispatch,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing").finish_non_exhaustive()
    }
}

impl Tracing {
    /// Builds the OTLP/HTTP exporter and its batch processor (on the current tokio runtime).
    pub(crate) fn new(cfg: &OtelConfig) -> Result<Self, String> {
        cfg.validate()?;
        let timeout = Duration::from_millis(cfg.timeout_ms);
        // The workspace's rustls connector: `https://` collectors work as `http://` ones do.
        let connector = tower_deepseek::client::https_connector(
            &tower_deepseek::client::ClientConfig::default(),
        );
        let client = opentelemetry_http::hyper::HyperClient::new(connector, timeout, None);
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(cfg.traces_url())
            .with_timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
        let processor =
            BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.sampling_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(cfg.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer(SCOPE);
        let layers = layer_dispatch(tracer.clone());
        Ok(Self {
            provider,
            tracer,
            timeout,
            layers,
        })
    }

    /// Exports what is left and stops the exporter.
    pub(crate) async fn shutdown(&self) {
        let provider = self.provider.clone();
        let timeout = self.timeout;
        // The batch processor's worker runs on this runtime; shutting down blocks until it is
        // done, so it must not block one of the runtime's threads.
        let done =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(timeout)).await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(target: "tower_deepseek_gateway", error = %e, "flushing the traces failed")
            }
            Err(e) => {
                tracing::warn!(target: "tower_deepseek_gateway", error = %e, "flushing the traces failed")
            }
        }
    }
}

/// The subscriber that the stack calls run under (`CallTrace::in_stack`). The library layers'
/// spans (targets `tower_deepseek*`, `DEBUG` and above: `tower_deepseek::core::trace`) go to
/// OpenTelemetry through `tracing-opentelemetry`, as children of the current OpenTelemetry
/// context (the call's span) and of each other; only their own fields become attributes (no
/// source location, thread or timing fields). Events are not exported: they go on to the
/// subscriber that was the default when the gateway was built (the program's log), as if
/// this one were not there. No global subscriber is installed, so two gateways in one
/// process trace apart.
fn layer_dispatch(tracer: SdkTracer) -> Dispatch {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::{DynFilterFn, FilterExt as _, FilterFn, LevelFilter};
    use tracing_subscriber::layer::SubscriberExt as _;

    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_level(false)
        .with_target(false)
        .with_error_events_to_status(false)
        .with_error_events_to_exceptions(false)
        .with_error_fields_to_exceptions(false)
        .with_error_records_to_exceptions(false)
        .with_filter(
            FilterFn::new(|m| m.is_span() && m.target().starts_with("tower_deepseek"))
                .with_max_level_hint(LevelFilter::DEBUG)
                .and(LevelFilter::DEBUG),
        );
    let outer = tracing::dispatcher::get_default(Dispatch::clone);
    let max = LevelFilter::current();
    let check = outer.clone();
    // The hint must hold: the program's subscriber may say yes to more than its own hint
    // (a registry with per-layer filters does), so the level is checked here too.
    let events = Forward(outer).with_filter(
        DynFilterFn::new(move |m, _| m.is_event() && *m.level() <= max && check.enabled(m))
            .with_max_level_hint(max),
    );
    Dispatch::new(tracing_subscriber::registry().with(spans).with(events))
}

/// Hands events on to another subscriber.
struct Forward(Dispatch);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Forward {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.0.event(event);
    }
}

fn str_array(items: Vec<String>) -> Value {
    Value::Array(Array::String(
        items.into_iter().map(StringValue::from).collect(),
    ))
}

/// The spans of one proxied call. Cheap to clone (contexts are shared handles); a no-op
/// when tracing is off.
#[derive(Clone, Default)]
pub(crate) struct CallTrace {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    tracer: SdkTracer,
    layers: Dispatch,
    server: Context,
    handler: Context,
    stack: std::sync::Mutex<Option<Context>>,
    operation: Option<&'static str>,
}

impl CallTrace {
    /// Starts the server span (continuing the client's `traceparent`) and the handler span.
    fn start<B>(t: &Tracing, req: &Request<B>) -> Self {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(req.headers()));
        let method = req.method().as_str().to_owned();
        let tracer = t.tracer.clone();
        let server = tracer
            .span_builder(format!("{method} {}", req.uri().path()))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method),
                KeyValue::new("http.route", req.uri().path().to_owned()),
            ])
            .start_with_context(&tracer, &parent);
        let server = parent.with_span(server);
        let handler = tracer
            .span_builder("gateway.handler")
            .with_kind(SpanKind::Internal)
            .start_with_context(&tracer, &server);
        let handler = server.with_span(handler);
        let operation = match req.uri().path() {
            "/chat/completions" | "/v1/chat/completions" => Some("chat"),
            "/beta/completions" => Some("text_completion"),
            _ => None,
        };
        Self {
            inner: Some(Arc::new(Inner {
                tracer,
                layers: t.layers.clone(),
                server,
                handler,
                stack: std::sync::Mutex::new(None),
                operation,
            })),
        }
    }

    /// The request is admitted: ends the handler span, starts the stack-call span (GenAI
    /// attributes of the request) and marks the request for the attempt spans and the call
    /// facts of the layers.
    pub(crate) fn enter_stack(&self, parts: &mut http::request::Parts, body: &[u8]) {
        let Some(i) = &self.inner else {
            return;
        };
        i.handler.span().end();
        let mut attrs = Vec::new();
        let name = match i.operation {
            Some(op) => {
                #[derive(serde::Deserialize)]
                struct ModelOnly<'a> {
                    #[serde(borrow, default)]
                    model: Option<std::borrow::Cow<'a, str>>,
                }
                let model = serde_json::from_slice::<ModelOnly<'_>>(body)
                    .ok()
                    .and_then(|m| m.model)
                    .map(|m| model_attr(&m));
                attrs.push(KeyValue::new("gen_ai.system", "deepseek"));
                attrs.push(KeyValue::new("gen_ai.provider.name", "deepseek"));
                attrs.push(KeyValue::new("gen_ai.operation.name", op));
                match model {
                    Some(m) => {
                        let name = format!("{op} {m}");
                        attrs.push(KeyValue::new("gen_ai.request.model", m));
                        name
                    }
                    None => op.to_owned(),
                }
            }
            None => "upstream".to_owned(),
        };
        let span = i
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attrs)
            .start_with_context(&i.tracer, &i.server);
        let cx = i.server.with_span(span);
        parts.extensions.insert(CollectCallFacts);
        parts.extensions.insert(StackCx {
            cx: cx.clone(),
            tracer: i.tracer.clone(),
            attempts: Arc::new(AtomicU32::new(0)),
        });
        *i.stack.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx);
    }

    /// `fut` (the stack's call) under the layers' subscriber, in the call's span: the
    /// layers' spans become its children. As it is when tracing is off.
    pub(crate) fn in_stack<F: Future>(&self, fut: F) -> Either<F, WithContext<WithDispatch<F>>> {
        match (&self.inner, self.stack_cx()) {
            (Some(i), Some(cx)) => {
                Either::Right(fut.with_subscriber(i.layers.clone()).with_context(cx))
            }
            _ => Either::Left(fut),
        }
    }

    /// The stack answered (or failed, with the gateway's error answer): what the layers
    /// published about the call.
    pub(crate) fn on_head<B>(&self, res: &Response<B>) {
        let Some(cx) = self.stack_cx() else {
            return;
        };
        let span = cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(res.status().as_u16()),
        ));
        if let Some(a) = res.extensions().get::<Attempts>() {
            span.set_attribute(KeyValue::new(
                "deepseek.retry.attempts",
                i64::from(a.count()),
            ));
            if !a.failures().is_empty() {
                let classes = a.failures().iter().map(|c| c.as_str().to_owned()).collect();
                span.set_attribute(KeyValue::new("deepseek.retry.failures", str_array(classes)));
            }
        }
        if let Some(b) = res.extensions().get::<BreakerStatus>() {
            span.set_attribute(KeyValue::new("deepseek.breaker.state", b.0));
        }
        let cache = res
            .headers()
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                ["hit-l1", "hit-l2", "miss", "bypass"]
                    .into_iter()
                    .find(|k| *k == v)
            });
        if let Some(c) = cache {
            span.set_attribute(KeyValue::new("deepseek.cache.status", c));
        }
    }

    /// The answer is over: its status, how it ended (`ok`, a failure class, `cancelled`) and
    /// what its body said (usage, model, finish reason). Ends every span of the call.
    pub(crate) fn on_end(
        &self,
        status: StatusCode,
        end: &StreamEnd,
        summary: Option<&ResponseSummary>,
    ) {
        let Some(i) = &self.inner else {
            return;
        };
        let outcome = match end {
            StreamEnd::Finished(Ok(())) => "ok",
            StreamEnd::Finished(Err(class)) => class.as_str(),
            _ => "cancelled",
        };
        let code = i64::from(status.as_u16());
        let failed = outcome != "ok" || status.is_server_error();
        // An answer the gateway made itself (before the stack) ends in the handler span.
        i.handler
            .span()
            .set_attribute(KeyValue::new("http.response.status_code", code));
        i.handler.span().end();
        if let Some(cx) = self.stack_cx() {
            let span = cx.span();
            if let (Some(s), Some(_)) = (summary, i.operation) {
                if let Some(u) = &s.usage {
                    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                    span.set_attribute(KeyValue::new(
                        "gen_ai.usage.input_tokens",
                        n(u.prompt_tokens),
                    ));
                    span.set_attribute(KeyValue::new(
                        "gen_ai.usage.output_tokens",
                        n(u.completion_tokens),
                    ));
                    if let Some(h) = u.prompt_cache_hit_tokens {
                        span.set_attribute(KeyValue::new(
                            "gen_ai.usage.cache_read.input_tokens",
                            n(h),
                        ));
                    }
                    if let Some(m) = u.prompt_cache_miss_tokens {
                        span.set_attribute(KeyValue::new(
                            "deepseek.usage.prompt_cache_miss_tokens",
                            n(m),
                        ));
                    }
                }
                if let Some(m) = &s.model {
                    span.set_attribute(KeyValue::new("gen_ai.response.model", model_attr(m)));
                }
                if let Some(r) = &s.finish_reason {
                    let r = model_attr(r.as_str());
                    span.set_attribute(KeyValue::new(
                        "gen_ai.response.finish_reasons",
                        str_array(vec![r]),
                    ));
                }
            }
            if failed {
                span.set_attribute(KeyValue::new("error.type", outcome.to_owned()));
                span.set_status(Status::error(outcome.to_owned()));
            }
            span.end();
        }
        let server = i.server.span();
        server.set_attribute(KeyValue::new("http.response.status_code", code));
        server.set_attribute(KeyValue::new("deepseek.outcome", outcome.to_owned()));
        if failed {
            server.set_attribute(KeyValue::new("error.type", outcome.to_owned()));
            server.set_status(Status::error(outcome.to_owned()));
        }
        server.end();
    }

    fn stack_cx(&self) -> Option<Context> {
        let i = self.inner.as_ref()?;
        i.stack.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Around the proxied routes' handler, inside the request metrics: starts the spans of a call
/// and hands them on, to the handler in the request's extensions and to the metrics layer
/// (which sees the end of the answer) in the response's.
#[derive(Debug, Clone)]
pub(crate) struct TraceLayer {
    tracing: Arc<Tracing>,
}

impl TraceLayer {
    pub(crate) fn new(tracing: Arc<Tracing>) -> Self {
        Self { tracing }
    }
}

impl<S> tower::Layer<S> for TraceLayer {
    type Service = TraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceService {
            inner,
            tracing: self.tracing.clone(),
        }
    }
}

/// The service of [`TraceLayer`].
#[derive(Debug, Clone)]
pub(crate) struct TraceService<S> {
    inner: S,
    tracing: Arc<Tracing>,
}

impl<S, B, RB> tower::Service<Request<B>> for TraceService<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    RB: 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<RB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let trace = CallTrace::start(&self.tracing, &req);
        req.extensions_mut().insert(trace.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut res = fut.await?;
            res.extensions_mut().insert(trace);
            Ok(res)
        })
    }
}

/// Request extension: the stack-call span, for the attempt spans below it.
#[derive(Clone)]
struct StackCx {
    cx: Context,
    tracer: SdkTracer,
    attempts: Arc<AtomicU32>,
}

/// Around the upstream client, inside every layer: one span per attempt (a retry is a new
/// attempt), and the `traceparent` of that span on the request that goes upstream.
#[derive(Debug, Clone)]
pub(crate) struct Traced<S> {
    inner: S,
}

/// Wraps the upstream client.
pub(crate) fn traced<S>(inner: S) -> Traced<S> {
    Traced { inner }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<Request<B>> for Traced<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    RB: 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<Result<Response<RB>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(parent) = req.extensions_mut().remove::<StackCx>() else {
            return Either::Left(self.inner.call(req));
        };
        let n = parent.attempts.fetch_add(1, Ordering::Relaxed) + 1;
        let method = req.method().as_str().to_owned();
        let mut attrs = vec![
            KeyValue::new("http.request.method", method.clone()),
            KeyValue::new("url.path", req.uri().path().to_owned()),
            KeyValue::new("deepseek.attempt", i64::from(n)),
        ];
        if let Some(host) = req.uri().host() {
            attrs.push(KeyValue::new("server.address", host.to_owned()));
        }
        if let Some(port) = req.uri().port_u16() {
            attrs.push(KeyValue::new("server.port", i64::from(port)));
        }
        // The innermost layer's span, when the layers' spans are exported (`in_stack`), else
        // the call's span.
        let current = Context::current();
        let base = if current.span().span_context().trace_id()
            == parent.cx.span().span_context().trace_id()
        {
            current
        } else {
            parent.cx
        };
        let span = parent
            .tracer
            .span_builder(method)
            .with_kind(SpanKind::Client)
            .with_attributes(attrs)
            .start_with_context(&parent.tracer, &base);
        let cx = base.with_span(span);
        inject(&cx, req.headers_mut());
        let fut = self.inner.call(req);
        Either::Right(Box::pin(async move {
            let res = fut.await;
            let span = cx.span();
            match &res {
                Ok(r) => {
                    let code = r.status().as_u16();
                    span.set_attribute(KeyValue::new("http.response.status_code", i64::from(code)));
                    if code >= 400 {
                        span.set_attribute(KeyValue::new("error.type", code.to_string()));
                        span.set_status(Status::error(code.to_string()));
                    }
                }
                Err(_) => {
                    // The error's text may name the URL; only its kind is exported.
                    span.set_attribute(KeyValue::new("error.type", "transport"));
                    span.set_status(Status::error("transport"));
                }
            }
            span.end();
            res
        }))
    }
}

/// Writes `traceparent` (and `tracestate`) for the span of `cx`.
fn inject(cx: &Context, headers: &mut HeaderMap) {
    headers.remove("traceparent");
    headers.remove("tracestate");
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}
