//! Failover across endpoints, with paused time, over an in-process client that answers per
//! authority.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::time::advance;
use tower::{Layer, Service, ServiceExt};
use tower_deepseek_breaker::{
    AllEndpointsUnavailable, BodyTooLarge, BoxError, BreakerOpen, CircuitBreakerLayer, Endpoint,
    EndpointIndex, FailoverLayer, State,
};
use tower_deepseek_core::body::BufferedBody;
use tower_deepseek_core::error::RequestNotSent;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Behaviour {
    Ok,
    Status(u16),
    Refused,
    Slow(Duration),
}

/// authority, path, Host header, body of each request that reached an upstream.
type Log = Arc<Mutex<Vec<(String, String, Option<String>, Bytes)>>>;

#[derive(Clone, Default)]
struct Upstreams {
    behaviour: Arc<Mutex<HashMap<String, Behaviour>>>,
    log: Log,
}

impl Upstreams {
    fn set(&self, authority: &str, b: Behaviour) {
        self.behaviour
            .lock()
            .unwrap()
            .insert(authority.to_owned(), b);
    }

    fn hits(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(a, ..)| a.clone())
            .collect()
    }

    fn clear(&self) {
        self.log.lock().unwrap().clear();
    }

    fn count(&self, authority: &str) -> usize {
        self.hits().iter().filter(|a| *a == authority).count()
    }

    fn client(
        &self,
    ) -> impl Service<
        Request<BufferedBody>,
        Response = Response<Full<Bytes>>,
        Error = BoxError,
        Future = impl std::future::Future<Output = Result<Response<Full<Bytes>>, BoxError>> + Send,
    > + Clone
    + Send
    + 'static {
        let this = self.clone();
        tower::service_fn(move |req: Request<BufferedBody>| {
            let this = this.clone();
            async move {
                let authority = req.uri().authority().unwrap().to_string();
                let path = req.uri().path().to_owned();
                let host = req
                    .headers()
                    .get("host")
                    .map(|h| h.to_str().unwrap().to_owned());
                let b = this
                    .behaviour
                    .lock()
                    .unwrap()
                    .get(&authority)
                    .copied()
                    .unwrap_or(Behaviour::Ok);
                if b == Behaviour::Refused {
                    return Err(RequestNotSent::new(std::io::Error::from(
                        std::io::ErrorKind::ConnectionRefused,
                    ))
                    .into());
                }
                let body = req.into_body().into_bytes();
                this.log.lock().unwrap().push((authority, path, host, body));
                match b {
                    Behaviour::Slow(d) => {
                        tokio::time::sleep(d).await;
                        support::response("ok")
                    }
                    Behaviour::Status(s) => support::response(&s.to_string()),
                    _ => support::response("ok"),
                }
            }
        })
    }
}

fn chat() -> Request<Full<Bytes>> {
    Request::post("/v1/chat/completions?x=1")
        .header("host", "api.deepseek.com")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"deepseek-chat"}"#,
        )))
        .unwrap()
}

async fn send<S>(svc: &mut S) -> Result<u16, BoxError>
where
    S: Service<Request<Full<Bytes>>, Error = BoxError>,
    S::Response: Into<Response<tower_deepseek_breaker::ResponseBody<Full<Bytes>>>>,
{
    let resp: Response<_> = svc.ready().await?.call(chat()).await?.into();
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

fn two(a_weight: u32, b_weight: u32) -> FailoverLayer {
    two_probing(a_weight, b_weight, Duration::from_secs(5))
}

fn two_probing(a_weight: u32, b_weight: u32, probe: Duration) -> FailoverLayer {
    FailoverLayer::builder()
        .endpoint(Endpoint::new("http://a.test".parse().unwrap()).weight(a_weight))
        .endpoint(Endpoint::new("http://b.test:8080/base/".parse().unwrap()).weight(b_weight))
        .breaker(
            CircuitBreakerLayer::builder()
                .name("fo")
                .count_based_window(4),
        )
        .latency_threshold(Duration::from_secs(2))
        .probe_interval(probe)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn smooth_weighted_round_robin_and_uri_rewrite() {
    let up = Upstreams::default();
    let mut svc = two(2, 1).layer(up.client());
    for _ in 0..6 {
        assert_eq!(send(&mut svc).await.unwrap(), 200);
    }
    assert_eq!(
        up.hits(),
        [
            "a.test",
            "b.test:8080",
            "a.test",
            "a.test",
            "b.test:8080",
            "a.test"
        ]
    );
    let log = up.log.lock().unwrap();
    let (_, path, host, body) = &log[1];
    assert_eq!(path, "/base/v1/chat/completions");
    assert_eq!(
        host, &None,
        "the caller's Host is not sent to another endpoint"
    );
    assert_eq!(&body[..], br#"{"model":"deepseek-chat"}"#);
}

#[tokio::test(start_paused = true)]
async fn set_weights_changes_the_split_of_every_service_at_once() {
    let up = Upstreams::default();
    let layer = two(1, 1);
    let mut svc = layer.layer(up.client());
    let mut other = layer.layer(up.client());
    layer.set_weights(&[0, 3]).unwrap();
    assert_eq!(layer.weights(), [0, 3]);
    for _ in 0..3 {
        assert_eq!(send(&mut svc).await.unwrap(), 200);
        assert_eq!(send(&mut other).await.unwrap(), 200);
    }
    assert_eq!((up.count("a.test"), up.count("b.test:8080")), (0, 6));
    // Back to an even split; a wrong length changes nothing.
    assert!(layer.set_weights(&[1]).is_err());
    assert_eq!(layer.weights(), [0, 3]);
    layer.set_weights(&[1, 1]).unwrap();
    up.clear();
    for _ in 0..4 {
        assert_eq!(send(&mut svc).await.unwrap(), 200);
    }
    assert_eq!((up.count("a.test"), up.count("b.test:8080")), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn a_dead_endpoint_loses_its_traffic_and_gets_it_back_when_it_recovers() {
    let up = Upstreams::default();
    let layer = two(1, 1);
    let handles = layer.handles();
    let mut svc = layer.layer(up.client());
    up.set("a.test", Behaviour::Refused);
    // Every call succeeds for the caller: a refused connection moves on to b.
    for _ in 0..8 {
        assert_eq!(send(&mut svc).await.unwrap(), 200);
    }
    assert_eq!(handles[0].1.state(), State::Open);
    assert_eq!(up.count("b.test:8080"), 8);
    up.clear();
    for _ in 0..10 {
        send(&mut svc).await.unwrap();
    }
    assert_eq!(up.count("b.test:8080"), 10, "a is open: no attempt at all");
    // a recovers; after the wait its probes pass and it closes.
    up.set("a.test", Behaviour::Ok);
    advance(Duration::from_secs(30)).await;
    up.clear();
    for _ in 0..20 {
        send(&mut svc).await.unwrap();
    }
    assert_eq!(handles[0].1.state(), State::Closed);
    assert!(
        up.count("a.test") >= 8,
        "traffic came back: {:?}",
        up.hits()
    );
}

#[tokio::test(start_paused = true)]
async fn a_503_moves_on_but_a_500_is_returned() {
    let up = Upstreams::default();
    let mut svc = two(1, 1).layer(up.client());
    up.set("a.test", Behaviour::Status(503));
    assert_eq!(send(&mut svc).await.unwrap(), 200);
    assert_eq!(up.hits(), ["a.test", "b.test:8080"]);
    up.clear();
    up.set("a.test", Behaviour::Status(500));
    up.set("b.test:8080", Behaviour::Status(500));
    assert_eq!(send(&mut svc).await.unwrap(), 500);
    assert_eq!(
        up.hits().len(),
        1,
        "a 500 may have reached a model: not resent"
    );
    // Both overloaded: the last answer (a 503) reaches the caller.
    up.clear();
    up.set("a.test", Behaviour::Status(503));
    up.set("b.test:8080", Behaviour::Status(503));
    assert_eq!(send(&mut svc).await.unwrap(), 503);
    assert_eq!(up.hits().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_slow_endpoint_gets_weight_zero_then_comes_back() {
    let up = Upstreams::default();
    let layer = two_probing(1, 1, Duration::from_secs(20));
    let handles = layer.handles();
    let mut svc = layer.layer(up.client());
    up.set("a.test", Behaviour::Slow(Duration::from_secs(5)));
    for _ in 0..4 {
        send(&mut svc).await.unwrap();
    }
    assert!(handles[0].1.metrics().latency.unwrap() > Duration::from_secs(2));
    up.clear();
    for _ in 0..10 {
        send(&mut svc).await.unwrap();
    }
    // Weight 0: no traffic to a (its next probe is not due yet).
    assert_eq!(up.count("b.test:8080"), 10, "{:?}", up.hits());
    // a is fast again: the next probe restores it.
    up.set("a.test", Behaviour::Ok);
    advance(Duration::from_secs(20)).await;
    up.clear();
    for _ in 0..10 {
        send(&mut svc).await.unwrap();
    }
    assert!(up.count("a.test") >= 4, "{:?}", up.hits());
}

#[tokio::test(start_paused = true)]
async fn all_endpoints_open_fails_fast_with_a_typed_error() {
    let up = Upstreams::default();
    let layer = two(1, 1);
    for (_, h) in layer.handles() {
        h.transition_to_open();
    }
    advance(Duration::from_secs(10)).await;
    let mut svc = layer.layer(up.client());
    let err = send(&mut svc).await.unwrap_err();
    let all = err
        .downcast_ref::<AllEndpointsUnavailable>()
        .expect("typed error");
    assert_eq!(all.retry_after, Duration::from_secs(20));
    let source = std::error::Error::source(all).unwrap();
    assert!(source.downcast_ref::<BreakerOpen>().is_some());
    assert!(up.hits().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_oversized_body_is_refused_before_anything_is_sent() {
    let up = Upstreams::default();
    let layer = FailoverLayer::builder()
        .endpoint(Endpoint::new("http://a.test".parse().unwrap()))
        .body_limit(8)
        .build()
        .unwrap();
    let mut svc = layer.layer(up.client());
    let err = send(&mut svc).await.unwrap_err();
    assert_eq!(err.downcast_ref::<BodyTooLarge>().unwrap().limit(), 8);
    assert!(up.hits().is_empty());
}

#[test]
fn builder_validates() {
    assert_eq!(
        FailoverLayer::builder().build().unwrap_err().field(),
        "endpoints"
    );
    let err = FailoverLayer::builder()
        .endpoint(Endpoint::new("/relative".parse().unwrap()))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "endpoints");
    assert!(err.to_string().contains("scheme"));
    let config: tower_deepseek_breaker::failover::FailoverConfig =
        serde_json::from_str(r#"{"endpoints":[{"base":"http://a b"}]}"#).unwrap();
    let err = config.into_layer().unwrap_err();
    assert_eq!(err.field(), "endpoints");
    assert!(err.to_string().contains("URI"));
    let config: tower_deepseek_breaker::failover::FailoverConfig = serde_json::from_str(
        r#"{"endpoints":[{"base":"http://a.test"}],"breaker":{"failure_rate_threshold":0}}"#,
    )
    .unwrap();
    let err = FailoverLayer::from_config(config).unwrap_err();
    assert_eq!(err.field(), "failure_rate_threshold");
    assert!(err.reason().contains("got 0"), "{err}");
    assert!(
        serde_json::from_str::<tower_deepseek_breaker::failover::FailoverConfig>(r#"{"nope":1}"#)
            .is_err()
    );
}

/// A client that tags each request with its own name, for `layer_each`.
fn tagged(
    up: &Upstreams,
    name: &'static str,
) -> impl Service<
    Request<BufferedBody>,
    Response = Response<Full<Bytes>>,
    Error = BoxError,
    Future = impl std::future::Future<Output = Result<Response<Full<Bytes>>, BoxError>> + Send,
> + Clone
+ Send
+ 'static {
    let inner = up.client();
    tower::service_fn(move |mut req: Request<BufferedBody>| {
        let mut inner = inner.clone();
        req.headers_mut()
            .insert("x-client", http::HeaderValue::from_static(name));
        let index = req.extensions().get::<EndpointIndex>().copied();
        async move {
            assert!(
                index.is_some(),
                "every attempt carries its endpoint's index"
            );
            let resp = inner.ready().await?.call(req).await?;
            Ok::<_, BoxError>(resp)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn each_endpoint_its_own_service() {
    let up = Upstreams::default();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let layer = two(1, 1);
    let mk = |name: &'static str| {
        let seen = seen.clone();
        let inner = tagged(&up, name);
        tower::service_fn(move |req: Request<BufferedBody>| {
            seen.lock()
                .unwrap()
                .push((name, req.uri().authority().unwrap().to_string()));
            inner.clone().oneshot(req)
        })
    };
    let mut svc = layer.layer_each(vec![mk("one"), mk("two")]).unwrap();
    up.set("a.test", Behaviour::Refused);
    for _ in 0..4 {
        assert_eq!(send(&mut svc).await.unwrap(), 200);
    }
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().all(|(n, a)| (*n == "one") == (a == "a.test")),
        "{seen:?}"
    );
    assert!(seen.iter().any(|(n, _)| *n == "two"));
    assert!(
        layer.layer_each(vec![mk("one")]).is_err(),
        "one service per endpoint"
    );
}

#[tokio::test(start_paused = true)]
async fn eject_on_opens_at_once_and_all_ejected_fails_fast() {
    let up = Upstreams::default();
    let layer = FailoverLayer::builder()
        .endpoint(Endpoint::new("http://user:pw@a.test".parse().unwrap()).name("az1"))
        .endpoint(Endpoint::new("http://b.test:8080".parse().unwrap()).name("az2"))
        .breaker(CircuitBreakerLayer::builder().name("fo"))
        .eject_on(|c| matches!(c, tower_deepseek_core::classify::FailureClass::Connect))
        .build()
        .unwrap();
    let handles = layer.handles();
    assert_eq!(
        handles[0].1.name(),
        "fo/az1",
        "a name replaces the authority"
    );
    let mut svc = layer.layer(up.client());
    up.set("user:pw@a.test", Behaviour::Refused);
    assert_eq!(send(&mut svc).await.unwrap(), 200);
    assert_eq!(handles[0].1.state(), State::Open, "one refusal ejects");
    up.clear();
    for _ in 0..4 {
        assert_eq!(send(&mut svc).await.unwrap(), 200);
    }
    assert_eq!(up.count("b.test:8080"), 4);
    // Both refuse: the first call that finds b dead fails with the typed error, not the
    // connect error (nothing left to retry on), and so does the next, without an attempt.
    up.set("b.test:8080", Behaviour::Refused);
    let err = send(&mut svc).await.unwrap_err();
    assert!(
        err.downcast_ref::<AllEndpointsUnavailable>().is_some(),
        "{err}"
    );
    up.clear();
    let err = send(&mut svc).await.unwrap_err();
    assert!(
        err.downcast_ref::<AllEndpointsUnavailable>().is_some(),
        "{err}"
    );
    assert!(up.hits().is_empty());
    // Closed through its handle (an active health check): a takes traffic again.
    handles[0].1.transition_to_closed();
    up.set("user:pw@a.test", Behaviour::Ok);
    assert_eq!(send(&mut svc).await.unwrap(), 200);
    assert_eq!(up.hits(), ["user:pw@a.test"]);
}
