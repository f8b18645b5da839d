//! The upstream pool: one service per upstream (its own client, credential, model names and
//! attempt timeouts) under the breaker crate's [`FailoverLayer`] (one breaker per upstream,
//! smooth weighted round-robin, latency ejection). See the [module docs](super).
//!
//! Everything here is generic over the request body `B` the stack hands down, and every
//! per-upstream service is boxed ([`BoxCloneSyncService`]): the pool adds no nested generic
//! type to the stack's, whatever the stack's body is.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, Uri, header};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use secrecy::{ExposeSecret, SecretString};
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};
use tower_deepseek::BoxError;
use tower_deepseek::auth::{BearerAuthLayer, OAuth2Layer};
use tower_deepseek::breaker::{CircuitBreakerLayerBuilder, Endpoint, FailoverLayer};
use tower_deepseek::client::{BaseUrlLayer, upstream_client};
use tower_deepseek::core::body::{BufferedBody, ReplayBody};
use tower_deepseek::core::classify::{ClassifiedResponse, Classifier, FailureClass};
use tower_deepseek::core::view::ChatView;
use tower_deepseek::retry::concurrency::AdaptiveConcurrencyLayer;
use tower_deepseek::retry::timeout::TimeoutLayer;
use tower_deepseek::stack::TokenClient;

use super::Entry;
use super::probe::{Probe, ProbeStatus};
use crate::StartError;
use crate::concurrency::capped;
use crate::config::{GatewayConfig, UpstreamConfig};
use crate::stack::Credential;

/// The answer body below the stack: boxed once.
pub(crate) type UpBody = UnsyncBoxBody<Bytes, UpstreamError>;

/// An error of the service below the stack or of its answer body (the client's, a timeout's,
/// the failover's): a concrete type rather than a `BoxError`, whose `dyn` lifetime the
/// compiler cannot prove `Send` through the stack's futures (`BoxError: Into<BoxError>` for
/// any lifetime). Its [`source`](std::error::Error::source) is the error itself, so the
/// classifiers and the error table (which walk the chain) see the timeout, the transport
/// error or the open breaker underneath.
#[derive(Debug)]
pub(crate) struct UpstreamError(BoxError);

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// One upstream's service, taking the failover's buffered, absolute-URI requests.
pub(crate) type EndpointSvc =
    BoxCloneSyncService<Request<BufferedBody>, Response<UpBody>, BoxError>;

/// The service below the stack (the single upstream's client, or the failover pool), taking
/// the stack's request bodies `B`.
pub(crate) type Inner<B> = BoxCloneSyncService<Request<B>, Response<UpBody>, UpstreamError>;

/// An error, boxed (a named function: a closure or `Into::into` here trips the compiler's
/// higher-ranked `Send` check of the futures above).
fn into_box<E: Into<BoxError>>(e: E) -> BoxError {
    e.into()
}

fn upstream_error<E: Into<BoxError>>(e: E) -> UpstreamError {
    UpstreamError(e.into())
}

/// Boxes an answer's body.
fn boxed<X>(res: Response<X>) -> Response<UpBody>
where
    X: http_body::Body<Data = Bytes> + Send + 'static,
    X::Error: Into<BoxError>,
{
    res.map(|b| b.map_err(upstream_error).boxed_unsync())
}

/// The upstreams to serve, and whether they form a pool. The upstreams: `from_flags`
/// (`--upstream` repeated, [`Options::upstreams`](crate::Options::upstreams)) when given, else
/// `[[upstreams]]`, else the one `upstream`. A pool: more than one upstream, or one with a
/// setting of its own (credential, model map, probe); else the plain stack with its one
/// breaker (labelled `deepseek`).
pub(crate) fn resolve(
    upstream: String,
    from_flags: Vec<String>,
    cfg: &GatewayConfig,
) -> (Vec<UpstreamConfig>, bool) {
    let list: Vec<UpstreamConfig> = if !from_flags.is_empty() {
        from_flags.into_iter().map(UpstreamConfig::new).collect()
    } else if !cfg.upstreams.is_empty() {
        cfg.upstreams.clone()
    } else {
        vec![UpstreamConfig::new(upstream)]
    };
    let own = |u: &UpstreamConfig| {
        u.api_key_env.is_some() || u.oauth2.is_some() || !u.models.is_empty() || u.probe.is_some()
    };
    let pooled = list.len() > 1 || list.iter().any(own);
    (list, pooled)
}

/// The name of the `i`-th upstream (its label).
pub(crate) fn name_of(i: usize, u: &UpstreamConfig) -> String {
    u.name.clone().unwrap_or_else(|| format!("upstream-{i}"))
}

/// The single upstream's client (one span per attempt with `otel`), below the full
/// recommended stack.
pub(crate) fn single<B>(
    cfg: &GatewayConfig,
    upstream: &str,
    cap: Option<&AdaptiveConcurrencyLayer>,
) -> Result<Inner<B>, StartError>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let base = BaseUrlLayer::new(upstream).map_err(|e| StartError::Upstream(e.to_string()))?;
    let client = capped(cap, crate::otel::traced(upstream_client::<B>(&cfg.client)));
    Ok(BoxCloneSyncService::new(
        base.layer(client)
            .map_response(boxed)
            .map_err(upstream_error),
    ))
}

/// The failure classes that move a call to the next upstream: nothing reached a caller, and
/// the upstream said it did not serve the call (5xx, 429) or could not be reached. Not our
/// own timeouts nor a transport error after sending: the request may have reached a model.
fn failover_on(class: &FailureClass) -> bool {
    matches!(
        class,
        FailureClass::Connect
            | FailureClass::BadGateway
            | FailureClass::Overloaded { .. }
            | FailureClass::RateLimited { .. }
            | FailureClass::Server { .. }
            | FailureClass::GatewayTimeout
            | FailureClass::BreakerOpen { .. }
    )
}

/// What [`pool`] made.
pub(crate) struct Pool<B> {
    pub(crate) inner: Inner<B>,
    pub(crate) layer: FailoverLayer,
    pub(crate) entries: Vec<Entry>,
    pub(crate) probes: Vec<Probe>,
}

/// The client of one upstream (its own connection pool) with the attempt timeouts.
fn leaf<X>(
    cfg: &GatewayConfig,
    cap: Option<&AdaptiveConcurrencyLayer>,
) -> Result<BoxCloneSyncService<Request<X>, Response<UpBody>, BoxError>, StartError>
where
    X: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    X::Error: Into<BoxError>,
{
    let client = capped(cap, crate::otel::traced(upstream_client::<X>(&cfg.client)));
    if cfg.layers.timeout {
        let timeout = TimeoutLayer::from_config(cfg.timeout).map_err(|e| StartError::Layer {
            layer: "timeout",
            message: e.to_string(),
        })?;
        Ok(BoxCloneSyncService::new(
            timeout.layer(client).map_response(boxed),
        ))
    } else {
        Ok(BoxCloneSyncService::new(
            client.map_response(boxed).map_err(into_box),
        ))
    }
}

/// An upstream's credential, resolved.
enum Cred {
    Key(SecretString),
    OAuth2(OAuth2Layer<TokenClient>),
    None,
}

/// The upstream's own service: credential, attempt timeouts, client.
fn authed(
    cfg: &GatewayConfig,
    cred: &Cred,
    cap: Option<&AdaptiveConcurrencyLayer>,
) -> Result<EndpointSvc, StartError> {
    Ok(match cred {
        Cred::Key(key) => {
            let auth =
                BearerAuthLayer::new(SecretString::from(key.expose_secret())).map_err(|e| {
                    StartError::Layer {
                        layer: "auth",
                        message: e.to_string(),
                    }
                })?;
            BoxCloneSyncService::new(auth.layer(leaf::<BufferedBody>(cfg, cap)?))
        }
        Cred::OAuth2(layer) => BoxCloneSyncService::new(
            layer
                .layer(leaf::<ReplayBody<BufferedBody>>(cfg, cap)?)
                .map_response(boxed),
        ),
        Cred::None => leaf::<BufferedBody>(cfg, cap)?,
    })
}

/// Counts each attempt by outcome and renames the model for this upstream.
fn counted(svc: EndpointSvc, name: &str, models: &BTreeMap<String, String>) -> EndpointSvc {
    let name: Arc<str> = name.into();
    let models = Arc::new(models.clone());
    let classifier = Classifier::new();
    BoxCloneSyncService::new(tower::service_fn(move |req: Request<BufferedBody>| {
        let svc = svc.clone();
        let name = name.clone();
        let req = map_model(req, &models);
        async move {
            let result = svc.oneshot(req).await;
            let outcome = match &result {
                Ok(res) if res.status().is_success() => "ok",
                Ok(res) => match classifier.classify_head(res.status(), res.headers()) {
                    ClassifiedResponse::Ready(Err(class)) => class.as_str(),
                    _ => "ok",
                },
                Err(e) => classifier.classify_error(&**e).as_str(),
            };
            metrics::counter!(
                "deepseek_gateway_upstream_calls_total",
                "upstream" => name.to_string(),
                "outcome" => outcome
            )
            .increment(1);
            result
        }
    }))
}

/// Renames the request body's top-level `model` through `models` (unchanged when it is not
/// listed, or the body is not a JSON object). The body is read through core's `ChatView` (the
/// view the layers above published, when it describes this very buffer; else parsed once), and
/// written with `ChatView::replace_strings`, whose view of the new body replaces the request's:
/// a view is never about other bytes (ARCHITECTURE.md, "A request is parsed once"). The new
/// view is not put in audit's `ViewSlot`: audit records the call as the caller made it.
pub(crate) fn map_model(
    req: Request<BufferedBody>,
    models: &BTreeMap<String, String>,
) -> Request<BufferedBody> {
    if models.is_empty() {
        return req;
    }
    let (mut parts, body) = req.into_parts();
    let bytes = body.bytes().clone();
    let view = match ChatView::get(&parts.extensions, &bytes) {
        Some(v) => Some(v),
        None => {
            // A stale view (about another buffer) must not travel on.
            parts.extensions.remove::<ChatView>();
            ChatView::parse(bytes).ok()
        }
    };
    let renamed = view.as_ref().and_then(|v| {
        let model = v.root().get("model")?;
        let to = models.get(model.as_str()?.as_ref())?;
        v.replace_strings([(model.id(), to.as_str())]).ok()
    });
    match renamed {
        Some(new) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            let mut renamed = BufferedBody::new(new.bytes().clone());
            if let Some(t) = body.trailers() {
                renamed = renamed.with_trailers(t.clone());
            }
            parts.extensions.insert(new);
            let body = renamed;
            Request::from_parts(parts, body)
        }
        None => Request::from_parts(parts, body),
    }
}

fn config_err(message: String) -> StartError {
    StartError::Layer {
        layer: "upstreams",
        message,
    }
}

/// Checks an upstream's name: the label of its metrics.
pub(crate) fn check_name(i: usize, name: &str) -> Result<(), StartError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(config_err(format!(
            "upstream {i}: a name must be 1 to 64 letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(())
}

/// Builds the pool for `list`. `global` is the credential of upstreams without their own;
/// `global_oauth` its OAuth2 layer (one token cache for every upstream that uses it).
pub(crate) fn pool<B>(
    cfg: &GatewayConfig,
    list: &[UpstreamConfig],
    global: &Credential,
    global_oauth: Option<&OAuth2Layer<TokenClient>>,
    cap: Option<&AdaptiveConcurrencyLayer>,
) -> Result<Pool<B>, StartError>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let mut builder = FailoverLayer::builder()
        .breaker(CircuitBreakerLayerBuilder::default().config(cfg.breaker.clone()))
        .probe_interval(cfg.health.latency_probe_interval)
        .body_limit(cfg.server.max_body_bytes)
        .failover_on(failover_on)
        .eject_on(|class| matches!(class, FailureClass::Connect));
    builder = match cfg.health.latency_threshold {
        Some(d) if !d.is_zero() => builder.latency_threshold(d),
        _ => builder.no_latency_threshold(),
    };
    let mut names = HashSet::new();
    let mut services = Vec::with_capacity(list.len());
    let mut plain = Vec::with_capacity(list.len());
    for (i, u) in list.iter().enumerate() {
        let name = name_of(i, u);
        check_name(i, &name)?;
        if !names.insert(name.clone()) {
            return Err(config_err(format!("two upstreams are named {name:?}")));
        }
        let base: Uri = u
            .url
            .parse()
            .map_err(|_| StartError::Upstream(format!("upstream {name}: not a valid URL")))?;
        if base.scheme().is_none() || base.authority().is_none() {
            return Err(StartError::Upstream(format!(
                "upstream {name}: the URL needs a scheme and a host"
            )));
        }
        let cred = match (&u.api_key_env, &u.oauth2) {
            (Some(_), Some(_)) => {
                return Err(config_err(format!(
                    "upstream {name}: api_key_env and [upstreams.oauth2] are exclusive"
                )));
            }
            (Some(var), None) => match std::env::var(var) {
                Ok(key) if !key.is_empty() => Cred::Key(SecretString::from(key)),
                _ => {
                    return Err(config_err(format!(
                        "upstream {name}: api_key_env names {var}, which is not set"
                    )));
                }
            },
            (None, Some(o)) => {
                o.validate().map_err(|e| StartError::Layer {
                    layer: "upstreams.oauth2",
                    message: format!("upstream {name}: {e}"),
                })?;
                Cred::OAuth2(crate::stack::oauth2_layer(o, cfg)?)
            }
            (None, None) => match (global, global_oauth) {
                (Credential::ApiKey(k), _) => Cred::Key(SecretString::from(k.expose_secret())),
                (Credential::OAuth2, Some(layer)) => Cred::OAuth2(layer.clone()),
                _ => Cred::None,
            },
        };
        let svc = authed(cfg, &cred, cap)?;
        plain.push((name.clone(), svc.clone()));
        services.push(counted(svc, &name, &u.models));
        builder = builder.endpoint(Endpoint::new(base).weight(u.weight).name(name));
    }
    let layer = builder.build().map_err(|e| StartError::Layer {
        layer: "upstreams",
        message: e.to_string(),
    })?;
    let handles = layer.handles();
    let mut entries = Vec::with_capacity(list.len());
    let mut probes = Vec::new();
    for (i, ((name, svc), u)) in plain.into_iter().zip(list).enumerate() {
        let breaker = handles[i].1.clone();
        let mut status = None;
        if let Some(p) = &u.probe {
            if p.interval.is_zero()
                || p.timeout.is_zero()
                || p.unhealthy_after == 0
                || p.healthy_after == 0
            {
                return Err(config_err(format!(
                    "upstream {name}: [upstreams.probe] interval_ms, timeout_ms, unhealthy_after and healthy_after must be above 0"
                )));
            }
            let path = if p.path.starts_with('/') {
                p.path.clone()
            } else {
                format!("/{}", p.path)
            };
            let uri: Uri = format!("{}{}", u.url.trim_end_matches('/'), path)
                .parse()
                .map_err(|_| {
                    config_err(format!(
                        "upstream {name}: the probe path is not a valid URL path"
                    ))
                })?;
            let s = Arc::new(ProbeStatus::default());
            probes.push(Probe {
                name: name.clone(),
                uri,
                config: p.clone(),
                service: svc,
                breaker: breaker.clone(),
                status: s.clone(),
            });
            status = Some(s);
        }
        entries.push(Entry {
            name,
            breaker: Some(breaker),
            probe: status,
        });
    }
    let failover = layer
        .layer_each(services)
        .map_err(|e| config_err(e.to_string()))?;
    let inner = BoxCloneSyncService::new(ServiceExt::<Request<B>>::map_err(
        ServiceExt::<Request<B>>::map_response(failover, boxed),
        upstream_error,
    ));
    Ok(Pool {
        inner,
        layer,
        entries,
        probes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(body: &'static str) -> Request<BufferedBody> {
        Request::post("/chat/completions")
            .header("content-length", body.len())
            .body(BufferedBody::from(body))
            .unwrap()
    }

    #[test]
    fn the_model_is_renamed_only_when_listed_and_the_view_follows() {
        let models = BTreeMap::from([("deepseek-chat".to_owned(), "ds-v3".to_owned())]);
        let out = map_model(req(r#"{"model":"deepseek-chat","stream":true}"#), &models);
        assert_eq!(
            &out.body().bytes()[..],
            br#"{"model":"ds-v3","stream":true}"#
        );
        assert!(out.headers().get("content-length").is_none());
        // The view that goes on describes the body that goes on.
        let view = ChatView::get(out.extensions(), out.body().bytes()).expect("a view");
        assert_eq!(view.model().as_deref(), Some("ds-v3"));
        assert!(view.is_stream());

        let out = map_model(req(r#"{"model":"deepseek-reasoner"}"#), &models);
        assert_eq!(&out.body().bytes()[..], br#"{"model":"deepseek-reasoner"}"#);
        let out = map_model(req("not json"), &models);
        assert_eq!(&out.body().bytes()[..], b"not json");
    }

    #[test]
    fn a_view_published_above_is_used_and_a_stale_one_dropped() {
        let models = BTreeMap::from([("deepseek-chat".to_owned(), "ds-v3".to_owned())]);
        // The view of the very buffer: used (nothing parsed again), replaced by the new one.
        let mut r = req(r#"{"model":"deepseek-chat"}"#);
        let view = ChatView::parse(r.body().bytes().clone()).unwrap();
        view.publish(r.extensions_mut());
        let out = map_model(r, &models);
        let new = out.extensions().get::<ChatView>().unwrap();
        assert!(new.describes(out.body().bytes()));
        // A view about other bytes is not trusted, and does not travel on.
        let mut r = req(r#"{"model":"deepseek-reasoner"}"#);
        ChatView::parse(Bytes::from_static(br#"{"model":"deepseek-chat"}"#))
            .unwrap()
            .publish(r.extensions_mut());
        let out = map_model(r, &models);
        assert_eq!(&out.body().bytes()[..], br#"{"model":"deepseek-reasoner"}"#);
        assert!(out.extensions().get::<ChatView>().is_none());
    }

    #[test]
    fn flags_win_over_the_file_and_one_plain_upstream_is_the_plain_stack() {
        let mut cfg = GatewayConfig {
            upstreams: vec![UpstreamConfig::new("http://file.test")],
            ..GatewayConfig::default()
        };
        let (l, pooled) = resolve("http://default.test".into(), vec![], &cfg);
        assert!(!pooled && l[0].url == "http://file.test");
        cfg.upstreams = vec![UpstreamConfig::new("http://file.test").model("a", "b")];
        let (_, pooled) = resolve("http://default.test".into(), vec![], &cfg);
        assert!(pooled, "a setting of its own: the pool");
        let (l, pooled) = resolve(
            "http://default.test".into(),
            vec!["http://a.test".into(), "http://b.test".into()],
            &cfg,
        );
        assert!(pooled && l.len() == 2 && l[1].url == "http://b.test");
        let (l, pooled) = resolve(
            "http://default.test".into(),
            vec![],
            &GatewayConfig::default(),
        );
        assert!(!pooled && l[0].url == "http://default.test");
    }
}
