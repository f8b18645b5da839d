//! What every service of a failover layer shares: the endpoints, their breakers and the
//! smooth weighted round-robin that picks among them.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Uri, header};
use tokio::time::Instant;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::BufferedBody;
use tower_deepseek_core::classify::FailureClass;

use super::layer::MAX_ENDPOINTS;
use super::per_endpoint::EndpointIndex;
use crate::state::{Permit, State, Striped};

pub(super) type FailoverOn = Arc<dyn Fn(&FailureClass) -> bool + Send + Sync>;

pub(super) struct EndpointState {
    pub(super) base: Uri,
    pub(super) scheme: Scheme,
    pub(super) authority: Authority,
    pub(super) prefix: String,
    /// Its weight: set at build, changed by [`FailoverLayer::set_weights`](super::FailoverLayer::set_weights).
    pub(super) weight: AtomicU32,
    pub(super) breaker: Striped,
}

pub(super) struct Balance {
    pub(super) current: Vec<i64>,
    pub(super) last_probe: Vec<Option<Instant>>,
}

pub(super) struct Shared {
    pub(super) endpoints: Vec<EndpointState>,
    pub(super) balance: Mutex<Balance>,
    pub(super) latency_threshold: Option<f64>,
    pub(super) probe_interval: Duration,
    pub(super) body_limit: usize,
    pub(super) failover_on: FailoverOn,
    pub(super) eject_on: Option<FailoverOn>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failover")
            .field(
                "endpoints",
                &self
                    .endpoints
                    .iter()
                    .map(|e| (&e.base, e.weight.load(Ordering::Relaxed)))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

pub(super) enum Pick {
    Go(usize, Permit),
    Exhausted,
}

impl Shared {
    /// Chooses the next endpoint not yet `tried`, and takes a permit from its breaker.
    /// Endpoints whose breaker rejects are marked tried and their `retry_after` noted.
    pub(super) fn pick(&self, tried: &mut u64, soonest: &mut Option<Duration>) -> Pick {
        let now = Instant::now();
        loop {
            let chosen = {
                let mut bal = self.balance.lock().unwrap_or_else(|p| p.into_inner());
                let mut weights = [0i64; MAX_ENDPOINTS];
                let mut any_weighted = false;
                let mut probe = None;
                let mut fallback: Option<(usize, f64)> = None;
                for (i, e) in self.endpoints.iter().enumerate() {
                    if *tried & (1 << i) != 0 {
                        continue;
                    }
                    let state = e.breaker.breaker().state();
                    if matches!(state, State::Open | State::ForcedOpen) {
                        *tried |= 1 << i;
                        let r = e.breaker.breaker().retry_after().unwrap_or_default();
                        *soonest = Some(soonest.map_or(r, |s| s.min(r)));
                        continue;
                    }
                    let latency = e.breaker.breaker().latency_ewma().unwrap_or(0.0);
                    let slow = self.latency_threshold.is_some_and(|t| latency > t);
                    if slow {
                        // Seeing an endpoint slow for the first time starts its probe clock.
                        let since = *bal.last_probe[i].get_or_insert(now);
                        let due = now.saturating_duration_since(since) >= self.probe_interval;
                        if due && probe.is_none() {
                            probe = Some(i);
                        }
                        if fallback.is_none_or(|(_, l)| latency < l) {
                            fallback = Some((i, latency));
                        }
                        continue;
                    }
                    bal.last_probe[i] = None;
                    let weight = e.weight.load(Ordering::Relaxed);
                    if weight == 0 {
                        if fallback.is_none_or(|(_, l)| latency < l) {
                            fallback = Some((i, latency));
                        }
                        continue;
                    }
                    weights[i] = i64::from(weight);
                    any_weighted = true;
                }
                if let Some(i) = probe {
                    bal.last_probe[i] = Some(now);
                    self.endpoints[i]
                        .breaker
                        .breaker()
                        .replace_latency_on_next_sample();
                    Some(i)
                } else if any_weighted {
                    let total: i64 = weights.iter().sum();
                    let mut best = None::<usize>;
                    for (i, w) in weights.iter().enumerate().take(self.endpoints.len()) {
                        if *w == 0 {
                            continue;
                        }
                        bal.current[i] += w;
                        if best.is_none_or(|b| bal.current[i] > bal.current[b]) {
                            best = Some(i);
                        }
                    }
                    let b = best.expect("a weighted endpoint");
                    bal.current[b] -= total;
                    Some(b)
                } else {
                    fallback.map(|(i, _)| i)
                }
            };
            let Some(i) = chosen else {
                return Pick::Exhausted;
            };
            *tried |= 1 << i;
            match self.endpoints[i].breaker.try_acquire() {
                Ok(permit) => return Pick::Go(i, permit),
                Err(open) => {
                    let r = open.retry_after();
                    *soonest = Some(soonest.map_or(r, |s| s.min(r)));
                }
            }
        }
    }

    /// When every endpoint's breaker is open: the soonest any admits a call again.
    pub(super) fn all_open(&self) -> Option<Duration> {
        let mut soonest: Option<Duration> = None;
        for e in &self.endpoints {
            let b = e.breaker.breaker();
            if !matches!(b.state(), State::Open | State::ForcedOpen) {
                return None;
            }
            let r = b.retry_after().unwrap_or_default();
            soonest = Some(soonest.map_or(r, |s| s.min(r)));
        }
        soonest
    }

    pub(super) fn rewrite(
        &self,
        i: usize,
        parts: &http::request::Parts,
        body: BufferedBody,
    ) -> Result<Request<BufferedBody>, BoxError> {
        let e = &self.endpoints[i];
        let pq = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let path: PathAndQuery = if e.prefix.is_empty() {
            pq.parse()?
        } else {
            format!("{}{}", e.prefix, pq).parse()?
        };
        let uri = Uri::builder()
            .scheme(e.scheme.clone())
            .authority(e.authority.clone())
            .path_and_query(path)
            .build()?;
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers.clone();
        req.headers_mut().remove(header::HOST);
        *req.extensions_mut() = parts.extensions.clone();
        req.extensions_mut().insert(EndpointIndex(i));
        Ok(req)
    }
}
