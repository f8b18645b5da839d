//! The upstream pool: one service per upstream (its own client, credential, model names and
//! attempt timeouts) under the breaker crate's [`FailoverLayer`] (one breaker per upstream,
//! smooth weighted round-robin, latency ejection). See the [module docs](super).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, Uri, header};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use secrecy::{ExposeSecret, SecretString};
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};
use tower_deepseek::BoxError;
use tower_deepseek::auth::{BearerAuthLayer, OAuth2Layer};
use tower_deepseek::breaker::{CircuitBreakerLayerBuilder, Endpoint, FailoverLayer};
use tower_deepseek::client::{BaseUrlLayer, upstream_client};
use tower_deepseek::core::body::{BufferedBody, ReplayBody};
use tower_deepseek::core::classify::{ClassifiedResponse, Classifier, FailureClass};
use tower_deepseek::retry::timeout::TimeoutLayer;
use tower_deepseek::stack::{StackRequestBody, TokenClient};

use super::Entry;
use super::probe::{Probe, ProbeStatus};
use crate::StartError;
use crate::config::{GatewayConfig, UpstreamConfig};
use crate::stack::Credential;

/// The answer body below the stack: boxed once, `Send + Sync` like the client's own body (the
/// stack's bodies are checked for both).
pub(crate) type UpBody = BoxBody<Bytes, BoxError>;

/// One upstream's service, taking the failover's buffered, absolute-URI requests.
pub(crate) type EndpointSvc =
    BoxCloneSyncService<Request<BufferedBody>, Response<UpBody>, BoxError>;

/// The service below the stack: the single upstream's client, or the failover pool.
pub(crate) type Inner =
    BoxCloneSyncService<Request<StackRequestBody<Body>>, Response<UpBody>, BoxError>;

/// Boxes an answer's body.
fn boxed<B>(res: Response<B>) -> Response<UpBody>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    res.map(|b| b.map_err(Into::into).boxed())
}

/// The upstreams to serve, and whether they form a pool: `--upstream` given more than once,
/// else `[[upstreams]]` (any number), else the one `--upstream` (no pool: the plain stack).
pub(crate) fn resolve(
    upstream: String,
    from_flags: Vec<String>,
    cfg: &GatewayConfig,
) -> (Vec<UpstreamConfig>, bool) {
    if from_flags.len() > 1 {
        return (
            from_flags.into_iter().map(UpstreamConfig::new).collect(),
            true,
        );
    }
    if let Some(url) = from_flags.into_iter().next() {
        return (vec![UpstreamConfig::new(url)], false);
    }
    if !cfg.upstreams.is_empty() {
        return (cfg.upstreams.clone(), true);
    }
    (vec![UpstreamConfig::new(upstream)], false)
}

/// The name of the `i`-th upstream (its label).
pub(crate) fn name_of(i: usize, u: &UpstreamConfig) -> String {
    u.name.clone().unwrap_or_else(|| format!("upstream-{i}"))
}

/// The single upstream's client, below the full recommended stack.
pub(crate) fn single(cfg: &GatewayConfig, upstream: &str) -> Result<Inner, StartError> {
    let base = BaseUrlLayer::new(upstream).map_err(|e| StartError::Upstream(e.to_string()))?;
    let client = upstream_client::<StackRequestBody<Body>>(&cfg.client);
    Ok(BoxCloneSyncService::new(
        base.layer(client)
            .map_response(boxed)
            .map_err(Into::<BoxError>::into),
    ))
}

/// The failure classes that move a call to the next upstream: nothing reached a caller, and
/// the upstream said it did not serve the call (5xx, 429) or could not be reached.
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
pub(crate) struct Pool {
    pub(crate) inner: Inner,
    pub(crate) entries: Vec<Entry>,
    pub(crate) probes: Vec<Probe>,
}

/// The client of one upstream with the attempt timeouts, answering axum bodies.
fn leaf<X>(
    cfg: &GatewayConfig,
) -> Result<BoxCloneSyncService<Request<X>, Response<UpBody>, BoxError>, StartError>
where
    X: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    X::Error: Into<BoxError>,
{
    let client = upstream_client::<X>(&cfg.client);
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
            client.map_response(boxed).map_err(Into::<BoxError>::into),
        ))
    }
}

/// An upstream's credential, resolved.
enum Cred {
    Key(SecretString),
    OAuth2(OAuth2Layer<TokenClient>),
    None,
}

/// The upstream's own service: credential, attempt timeouts, client (its own pool).
fn authed(cfg: &GatewayConfig, cred: &Cred) -> Result<EndpointSvc, StartError> {
    Ok(match cred {
        Cred::Key(key) => {
            let auth =
                BearerAuthLayer::new(SecretString::from(key.expose_secret())).map_err(|e| {
                    StartError::Layer {
                        layer: "auth",
                        message: e.to_string(),
                    }
                })?;
            BoxCloneSyncService::new(auth.layer(leaf::<BufferedBody>(cfg)?))
        }
        Cred::OAuth2(layer) => BoxCloneSyncService::new(
            layer
                .layer(leaf::<ReplayBody<BufferedBody>>(cfg)?)
                .map_response(boxed),
        ),
        Cred::None => leaf::<BufferedBody>(cfg)?,
    })
}

/// Counts each attempt by outcome and rewrites the model name for this upstream.
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

/// Rewrites the request body's `model` through `models` (unchanged when not listed, or when
/// the body is not a JSON object).
pub(crate) fn map_model(
    req: Request<BufferedBody>,
    models: &BTreeMap<String, String>,
) -> Request<BufferedBody> {
    if models.is_empty() {
        return req;
    }
    let Ok(serde_json::Value::Object(mut obj)) =
        serde_json::from_slice::<serde_json::Value>(req.body().bytes())
    else {
        return req;
    };
    let Some(to) = obj
        .get("model")
        .and_then(serde_json::Value::as_str)
        .and_then(|m| models.get(m))
    else {
        return req;
    };
    obj.insert("model".to_owned(), serde_json::Value::String(to.clone()));
    let Ok(bytes) = serde_json::to_vec(&obj) else {
        return req;
    };
    let (mut parts, _) = req.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    Request::from_parts(parts, BufferedBody::new(bytes))
}

fn config_err(message: String) -> StartError {
    StartError::Config(format!("[[upstreams]]: {message}"))
}

/// Builds the pool for `list`. `global` is the credential of upstreams without their own.
pub(crate) fn pool(
    cfg: &GatewayConfig,
    list: &[UpstreamConfig],
    global: &Credential,
    redis: Option<&str>,
) -> Result<Pool, StartError> {
    let global_oauth = match global {
        Credential::OAuth2 => Some(crate::stack::oauth2_layer(
            cfg.oauth2.as_ref().expect("checked by the caller"),
            cfg,
            redis,
        )?),
        _ => None,
    };
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
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(config_err(format!(
                "upstream {i}: name {name:?} must be 1 to 64 letters, digits, '-', '_' or '.'"
            )));
        }
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
                        "upstream {name}: the environment variable {var} (api_key_env) is not set"
                    )));
                }
            },
            (None, Some(o)) => {
                o.validate().map_err(|e| StartError::Layer {
                    layer: "upstreams.oauth2",
                    message: format!("upstream {name}: {e}"),
                })?;
                Cred::OAuth2(crate::stack::oauth2_layer(o, cfg, redis)?)
            }
            (None, None) => match (global, &global_oauth) {
                (Credential::ApiKey(k), _) => Cred::Key(SecretString::from(k.expose_secret())),
                (Credential::OAuth2, Some(layer)) => Cred::OAuth2(layer.clone()),
                _ => Cred::None,
            },
        };
        let svc = authed(cfg, &cred)?;
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
        let status = u.probe.as_ref().map(|_| Arc::new(ProbeStatus::default()));
        if let (Some(p), Some(status)) = (&u.probe, &status) {
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
            probes.push(Probe {
                name: name.clone(),
                uri,
                config: p.clone(),
                service: svc,
                breaker: breaker.clone(),
                status: status.clone(),
            });
        }
        entries.push(Entry {
            name,
            weight: u.weight,
            breaker: Some(breaker),
            probe: status,
        });
    }
    let failover = layer
        .layer_each(services)
        .map_err(|e| config_err(e.to_string()))?;
    let inner = BoxCloneSyncService::new(
        failover
            .map_request(|r: Request<StackRequestBody<Body>>| r)
            .map_response(boxed),
    );
    Ok(Pool {
        inner,
        entries,
        probes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_is_rewritten_only_when_listed() {
        let models = BTreeMap::from([("deepseek-chat".to_owned(), "ds-v3".to_owned())]);
        let req = |body: &'static str| {
            Request::post("/chat/completions")
                .header("content-length", body.len())
                .body(BufferedBody::from(body))
                .unwrap()
        };
        let out = map_model(req(r#"{"model":"deepseek-chat","stream":true}"#), &models);
        let v: serde_json::Value = serde_json::from_slice(out.body().bytes()).unwrap();
        assert_eq!(v["model"], "ds-v3");
        assert_eq!(v["stream"], true);
        assert!(out.headers().get("content-length").is_none());
        let out = map_model(req(r#"{"model":"deepseek-reasoner"}"#), &models);
        assert_eq!(&out.body().bytes()[..], br#"{"model":"deepseek-reasoner"}"#);
        let out = map_model(req("not json"), &models);
        assert_eq!(&out.body().bytes()[..], b"not json");
    }

    #[test]
    fn flags_win_over_the_file_and_one_flag_is_the_plain_stack() {
        let mut cfg = GatewayConfig::default();
        cfg.upstreams = vec![UpstreamConfig::new("http://file.test")];
        let (l, pooled) = resolve("http://default.test".into(), vec![], &cfg);
        assert!(pooled && l[0].url == "http://file.test");
        let (l, pooled) = resolve(
            "http://default.test".into(),
            vec!["http://a.test".into(), "http://b.test".into()],
            &cfg,
        );
        assert!(pooled && l.len() == 2 && l[1].url == "http://b.test");
        let (l, pooled) = resolve(
            "http://default.test".into(),
            vec!["http://a.test".into()],
            &cfg,
        );
        assert!(!pooled && l[0].url == "http://a.test");
        let (l, pooled) = resolve(
            "http://default.test".into(),
            vec![],
            &GatewayConfig::default(),
        );
        assert!(!pooled && l[0].url == "http://default.test");
    }
}
