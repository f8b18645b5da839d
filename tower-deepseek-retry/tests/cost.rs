//! Cost accounting and budgets: exact costs in the metric and the response extension for a
//! scripted mix of calls (cache hits and misses, JSON and streams, two models, a price-window
//! boundary), budgets that stop the next call, and one budget shared through a real Redis.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::{Layer, Service, ServiceExt};
use tower_deepseek_core::BoxError;
use tower_deepseek_core::meta::TenantId;
use tower_deepseek_core::protocol::{CallCost, Money};
use tower_deepseek_retry::cost::{
    BudgetExceeded, BudgetKind, BudgetLimits, BudgetPeriod, CostBudgets, CostLayer, ModelPrice,
    PriceTable, PriceWindow, Weekday,
};

fn m(s: &str) -> Money {
    s.parse().unwrap()
}

/// A clock the test sets.
#[derive(Clone)]
struct TestClock(Arc<Mutex<SystemTime>>);

impl TestClock {
    fn at(rfc3339: &str) -> Self {
        let c = TestClock(Arc::new(Mutex::new(SystemTime::UNIX_EPOCH)));
        c.set(rfc3339);
        c
    }

    fn set(&self, rfc3339: &str) {
        let t: jiff::Timestamp = rfc3339.parse().unwrap();
        *self.0.lock().unwrap() = SystemTime::from(t);
    }

    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}

/// Answers from a script, in order: (status, content type, body).
#[derive(Clone, Default)]
struct Upstream(Arc<Mutex<VecDeque<Answer>>>);

/// (status, content type, body)
type Answer = (u16, &'static str, String);

impl Upstream {
    fn push(&self, status: u16, content_type: &'static str, body: impl Into<String>) {
        self.0
            .lock()
            .unwrap()
            .push_back((status, content_type, body.into()));
    }

    fn json(&self, model: &str, usage: serde_json::Value) {
        let body = serde_json::json!({
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": usage,
        });
        self.push(200, "application/json", body.to_string());
    }

    fn stream(&self, model: &str, usage: serde_json::Value) {
        let chunk = serde_json::json!({"model": model, "choices": [{"index": 0, "delta": {"content": "hi"}}]});
        let last = serde_json::json!({"model": model, "choices": [], "usage": usage});
        let body = format!(
            ": keep-alive\n\ndata: {chunk}\n\ndata: {{\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\ndata: {last}\n\ndata: [DONE]\n\n"
        );
        self.push(200, "text/event-stream", body);
    }
}

impl Service<Request<Full<Bytes>>> for Upstream {
    type Response = Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Response<Full<Bytes>>, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<Full<Bytes>>) -> Self::Future {
        let (status, ct, body) = self
            .0
            .lock()
            .unwrap()
            .pop_front()
            .expect("a scripted answer");
        std::future::ready(Ok(Response::builder()
            .status(status)
            .header("content-type", ct)
            .body(Full::new(Bytes::from(body)))
            .unwrap()))
    }
}

fn req(tenant: &str) -> Request<Full<Bytes>> {
    let mut r = Request::post("/chat/completions")
        .body(Full::new(Bytes::from_static(
            b"{\"model\":\"deepseek-chat\",\"messages\":[]}",
        )))
        .unwrap();
    r.extensions_mut().insert(TenantId::new(tenant));
    r
}

fn usage(hit: Option<u64>, miss: Option<u64>, prompt: u64, out: u64) -> serde_json::Value {
    let mut u = serde_json::json!({
        "prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out,
    });
    if let Some(h) = hit {
        u["prompt_cache_hit_tokens"] = h.into();
    }
    if let Some(ms) = miss {
        u["prompt_cache_miss_tokens"] = ms.into();
    }
    u
}

fn prices() -> PriceTable {
    let peak = PriceWindow::new("peak", "Asia/Shanghai", m("0.056"), m("0.56"), m("0.84"))
        .days(Weekday::WORKDAYS)
        .hours("09:00-12:00".parse().unwrap())
        .hours("14:00-18:00".parse().unwrap());
    PriceTable::new("USD")
        .model(
            "deepseek-chat",
            ModelPrice::new(m("0.028"), m("0.28"), m("0.42")).window(peak),
        )
        .model(
            "deepseek-reasoner",
            ModelPrice::new(m("0.14"), m("0.55"), m("2.19")),
        )
}

/// Calls once, reads the whole body, and returns the cost slot's amount.
async fn call(
    svc: &mut tower_deepseek_retry::cost::Cost<Upstream>,
    r: Request<Full<Bytes>>,
) -> Result<Option<String>, BoxError> {
    let resp = svc.ready().await?.call(r).await?;
    let slot = resp.extensions().get::<CallCost>().cloned();
    resp.into_body().collect().await?;
    Ok(slot.and_then(|s| s.get().map(|c| c.amount.to_string())))
}

fn counters(snap: metrics_util::debugging::Snapshotter) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for (key, _, _, value) in snap.snapshot().into_vec() {
        let (_, key) = key.into_parts();
        if let DebugValue::Counter(n) = value {
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            out.insert(format!("{}{{{}}}", key.name(), labels.join(",")), n);
        }
    }
    out
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn a_scripted_mix_costs_exactly_what_the_prices_say() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        block_on(async {
            let clock = TestClock::at("2026-12-06T12:00:00Z"); // a Sunday
            let up = Upstream::default();
            let c = clock.clone();
            let layer = CostLayer::builder(prices())
                .clock(move || c.now())
                .build()
                .unwrap();
            let mut svc = layer.layer(up.clone());

            // 1. JSON, hits and misses, no window: 1000 × 0.028 + 2000 × 0.28 + 500 × 0.42.
            up.json("deepseek-chat", usage(Some(1000), Some(2000), 3000, 500));
            let a = call(&mut svc, req("team-a")).await.unwrap();
            assert_eq!(a.as_deref(), Some("0.000798"));

            // 2. A stream, usage in its last chunk; Monday 08:59:59 in Beijing: off-peak.
            clock.set("2026-12-07T00:59:59Z");
            up.stream("deepseek-chat", usage(Some(0), Some(100), 100, 7));
            let a = call(&mut svc, req("team-a")).await.unwrap();
            assert_eq!(a.as_deref(), Some("0.00003094"));

            // 3. One second later the peak window starts: twice the price. No hit/miss split:
            // the prompt tokens are priced as misses.
            clock.set("2026-12-07T01:00:00Z");
            up.json("deepseek-chat", usage(None, None, 100, 7));
            let a = call(&mut svc, req("team-a")).await.unwrap();
            assert_eq!(a.as_deref(), Some("0.00006188"));

            // 3b. A call that started in the window is priced in it, however late it ends.
            up.stream("deepseek-chat", usage(Some(0), Some(100), 100, 7));
            let resp = svc
                .ready()
                .await
                .unwrap()
                .call(req("team-a"))
                .await
                .unwrap();
            clock.set("2026-12-07T04:30:00Z"); // 12:30 in Beijing: off-peak
            let slot = resp.extensions().get::<CallCost>().cloned().unwrap();
            resp.into_body().collect().await.unwrap();
            let cost = slot.get().unwrap();
            assert_eq!(cost.amount.to_string(), "0.00006188");
            assert_eq!(cost.window.as_deref(), Some("peak"));

            // 4. Another model, another tenant.
            up.json("deepseek-reasoner", usage(Some(333), Some(0), 333, 1));
            let a = call(&mut svc, req("team-b")).await.unwrap();
            assert_eq!(a.as_deref(), Some("0.00004881"));

            // 5. An HTTP error: nothing billed, no slot.
            up.push(500, "application/json", r#"{"error":{"message":"x"}}"#);
            assert_eq!(call(&mut svc, req("team-a")).await.unwrap(), None);

            // 6. A stream cut before its usage chunk: nothing known, nothing counted.
            up.push(
                200,
                "text/event-stream",
                "data: {\"model\":\"deepseek-chat\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n",
            );
            assert_eq!(call(&mut svc, req("team-a")).await.unwrap(), None);

            // 7. A model without a price: counted as unpriced, tokens still counted.
            up.json("deepseek-v9", usage(Some(1), Some(1), 2, 1));
            assert_eq!(call(&mut svc, req("team-a")).await.unwrap(), None);
        });
    });
    let c = counters(snap);
    // deepseek-chat for team-a: 798 + 30.94 + 61.88 + 61.88 = 952.70 micro-dollars, counted
    // as whole micros with the rest carried: 952.
    assert_eq!(
        c["deepseek_cost_micros_total{model=deepseek-chat,tenant=team-a}"],
        952
    );
    assert_eq!(
        c["deepseek_cost_micros_total{model=deepseek-reasoner,tenant=team-b}"],
        48
    );
    assert_eq!(
        c["deepseek_cost_tokens_total{kind=cache_hit,model=deepseek-chat,tenant=team-a}"],
        1000
    );
    assert_eq!(
        c["deepseek_cost_tokens_total{kind=cache_miss,model=deepseek-chat,tenant=team-a}"],
        2300
    );
    assert_eq!(
        c["deepseek_cost_tokens_total{kind=output,model=deepseek-chat,tenant=team-a}"],
        521
    );
    assert_eq!(
        c["deepseek_cost_tokens_total{kind=output,model=unpriced,tenant=team-a}"],
        1
    );
    assert_eq!(c["deepseek_cost_unpriced_total{tenant=team-a}"], 1);
    assert!(
        c.keys().all(|k| !k.contains("sk-")),
        "no key in a label: {c:?}"
    );
}

/// The carried remainder makes the counter exact over many calls: 1000 calls of 0.42 micros
/// each count 420, not 0.
#[test]
fn sub_micro_costs_add_up_exactly() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        block_on(async {
            let up = Upstream::default();
            let mut svc = CostLayer::builder(prices())
                .clock(|| SystemTime::UNIX_EPOCH + Duration::from_secs(1_765_022_400)) // a Saturday
                .build()
                .unwrap()
                .layer(up.clone());
            for _ in 0..1000 {
                up.json("deepseek-chat", usage(Some(0), Some(0), 0, 1));
                call(&mut svc, req("t")).await.unwrap();
            }
        });
    });
    assert_eq!(
        counters(snap)["deepseek_cost_micros_total{model=deepseek-chat,tenant=t}"],
        420
    );
}

/// With the cost header on, a non-streaming answer carries `x-ds-cost` (read ahead, whole);
/// a stream does not (its cost is known at its end only) and is not held back.
#[test]
fn the_cost_header_is_on_json_answers_only() {
    block_on(async {
        let up = Upstream::default();
        let mut svc = CostLayer::builder(prices())
            .cost_header(true)
            .clock(|| SystemTime::UNIX_EPOCH + Duration::from_secs(1_765_022_400))
            .build()
            .unwrap()
            .layer(up.clone());
        up.json("deepseek-chat", usage(Some(1000), Some(2000), 3000, 500));
        let resp = svc.ready().await.unwrap().call(req("t")).await.unwrap();
        assert_eq!(resp.headers()["x-ds-cost"], "0.000798 USD");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 500);

        up.stream("deepseek-chat", usage(Some(1000), Some(2000), 3000, 500));
        let resp = svc.ready().await.unwrap().call(req("t")).await.unwrap();
        assert!(!resp.headers().contains_key("x-ds-cost"));
        let slot = resp.extensions().get::<CallCost>().cloned().unwrap();
        assert!(slot.get().is_none(), "the stream was not read ahead");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body.ends_with(b"data: [DONE]\n\n"));
        assert_eq!(slot.get().unwrap().amount, m("0.000798"));

        // Without usage: no header, the answer as it was.
        up.push(200, "application/json", r#"{"choices":[]}"#);
        let resp = svc.ready().await.unwrap().call(req("t")).await.unwrap();
        assert!(!resp.headers().contains_key("x-ds-cost"));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], br#"{"choices":[]}"#);
    });
}

fn refused(r: Result<Option<String>, BoxError>) -> BudgetExceeded {
    r.unwrap_err()
        .downcast_ref::<BudgetExceeded>()
        .expect("a BudgetExceeded")
        .clone()
}

#[test]
fn a_token_budget_stops_the_next_call_and_resets_with_the_day() {
    block_on(async {
        let clock = TestClock::at("2026-12-06T18:00:00Z");
        let up = Upstream::default();
        let c = clock.clone();
        let mut svc = CostLayer::builder(prices())
            .budgets(CostBudgets::per_tenant(
                BudgetLimits::new().daily_tokens(1000),
            ))
            .clock(move || c.now())
            .build()
            .unwrap()
            .layer(up.clone());
        // 400 tokens a call: 0 → 400 → 800 → 1200; the fourth is refused.
        for _ in 0..3 {
            up.json("deepseek-chat", usage(Some(0), Some(300), 300, 100));
            call(&mut svc, req("team-a")).await.unwrap();
        }
        let e = refused(call(&mut svc, req("team-a")).await);
        assert_eq!(
            (e.period(), e.kind()),
            (BudgetPeriod::Day, BudgetKind::Tokens)
        );
        assert_eq!(e.retry_after(), Duration::from_secs(6 * 3600));
        // Another tenant has its own budget.
        up.json("deepseek-chat", usage(Some(0), Some(300), 300, 100));
        call(&mut svc, req("team-b")).await.unwrap();
        // The next day, the budget is there again.
        clock.set("2026-12-07T00:00:00Z");
        up.json("deepseek-chat", usage(Some(0), Some(300), 300, 100));
        call(&mut svc, req("team-a")).await.unwrap();
    });
}

#[test]
fn a_money_budget_never_cuts_a_call_in_flight() {
    block_on(async {
        let up = Upstream::default();
        let mut svc = CostLayer::builder(prices())
            .budgets(
                CostBudgets::per_tenant(BudgetLimits::new().monthly_cost(m("1")))
                    .tenant("small", BudgetLimits::new().monthly_cost(m("0.001"))),
            )
            .clock(|| SystemTime::UNIX_EPOCH + Duration::from_secs(1_765_022_400))
            .build()
            .unwrap()
            .layer(up.clone());
        // A stream starts while the budget is not spent...
        up.stream("deepseek-chat", usage(Some(1000), Some(2000), 3000, 500));
        let streaming = svc.ready().await.unwrap().call(req("small")).await.unwrap();
        // ...two calls spend it meanwhile: 0 → 0.000798 (under 0.001: the second may start)
        // → 0.001596...
        for _ in 0..2 {
            up.json("deepseek-chat", usage(Some(1000), Some(2000), 3000, 500));
            call(&mut svc, req("small")).await.unwrap();
        }
        let e = refused(call(&mut svc, req("small")).await);
        assert_eq!(
            (e.period(), e.kind()),
            (BudgetPeriod::Month, BudgetKind::Cost)
        );
        // ...and the stream in flight goes on to its end, and is counted.
        let slot = streaming.extensions().get::<CallCost>().cloned().unwrap();
        let body = streaming.into_body().collect().await.unwrap().to_bytes();
        assert!(body.ends_with(b"data: [DONE]\n\n"));
        assert_eq!(slot.get().unwrap().amount, m("0.000798"));
        let e = refused(call(&mut svc, req("small")).await);
        assert_eq!(
            (e.period(), e.kind()),
            (BudgetPeriod::Month, BudgetKind::Cost)
        );
        // The default budget of other tenants is untouched.
        up.json("deepseek-chat", usage(Some(1000), Some(2000), 3000, 500));
        call(&mut svc, req("big")).await.unwrap();
    });
}

#[cfg(feature = "redis")]
mod fleet {
    use super::*;
    use tower_deepseek_retry::fleet::Fleet;

    fn redis_url() -> Option<String> {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let ok = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .is_ok();
        if !ok {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "no Redis at REDIS_URL under CI=true"
            );
            eprintln!("no Redis at {url}: skipping (CI=true makes this a failure)");
            return None;
        }
        Some(url)
    }

    /// Waits (bounded) until the fleet's tally of `tenant` today holds `tokens`: the settle is
    /// written in the background at the end of each answer.
    async fn settled(url: &str, prefix: &str, tenant: &str, day: &str, tokens: u64) {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let key = format!("{{{prefix}:budget:{}}}:d:{day}", Fleet::digest(tenant));
        for _ in 0..200 {
            let n: Option<u64> = redis::cmd("HGET")
                .arg(&key)
                .arg("tokens")
                .query_async(&mut conn)
                .await
                .unwrap();
            if n == Some(tokens) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the fleet's tally never reached {tokens} tokens");
    }

    #[test]
    fn two_instances_share_one_budget_through_redis() {
        let Some(url) = redis_url() else { return };
        block_on(async {
            let prefix = format!("test-cost-{:x}", fastrand::u64(..));
            let instance = |up: &Upstream| {
                let fleet = Fleet::builder()
                    .redis_url(url.as_str())
                    .key_prefix(prefix.as_str())
                    .timeout(Duration::from_secs(2))
                    .build()
                    .unwrap();
                CostLayer::builder(prices())
                    .budgets(CostBudgets::per_tenant(
                        BudgetLimits::new().daily_tokens(1000),
                    ))
                    .fleet(fleet)
                    .clock(|| SystemTime::UNIX_EPOCH + Duration::from_secs(1_765_022_400))
                    .build()
                    .unwrap()
                    .layer(up.clone())
            };
            let (up_a, up_b) = (Upstream::default(), Upstream::default());
            let (mut a, mut b) = (instance(&up_a), instance(&up_b));
            let day = "2025-12-06";
            // 400 tokens a call, alternating instances: 400 (a), 800 (b), 1200 (a), refused (b).
            up_a.json("deepseek-chat", usage(Some(0), Some(300), 300, 100));
            call(&mut a, req("team-a")).await.unwrap();
            settled(&url, &prefix, "team-a", day, 400).await;
            up_b.json("deepseek-chat", usage(Some(0), Some(300), 300, 100));
            call(&mut b, req("team-a")).await.unwrap();
            settled(&url, &prefix, "team-a", day, 800).await;
            up_a.json("deepseek-chat", usage(Some(0), Some(300), 300, 100));
            call(&mut a, req("team-a")).await.unwrap();
            settled(&url, &prefix, "team-a", day, 1200).await;
            // b alone has spent 400 of 1000: only the shared tally refuses.
            let e = refused(call(&mut b, req("team-a")).await);
            assert_eq!(
                (e.period(), e.kind()),
                (BudgetPeriod::Day, BudgetKind::Tokens)
            );
            let e = refused(call(&mut a, req("team-a")).await);
            assert_eq!(e.kind(), BudgetKind::Tokens);
        });
    }

    /// Redis unavailable: each instance checks its own spending against its share of the
    /// limit (1000 / 2 instances = 500 tokens), never without bound.
    #[test]
    fn without_redis_each_instance_keeps_to_its_share() {
        block_on(async {
            let fleet = Fleet::builder()
                .redis_url("redis://127.0.0.1:1")
                .expected_instances(2)
                .build()
                .unwrap();
            let up = Upstream::default();
            let mut svc = CostLayer::builder(prices())
                .budgets(CostBudgets::per_tenant(
                    BudgetLimits::new().daily_tokens(1000),
                ))
                .fleet(fleet)
                .build()
                .unwrap()
                .layer(up.clone());
            for _ in 0..2 {
                up.json("deepseek-chat", usage(Some(0), Some(300), 300, 100));
                call(&mut svc, req("team-a")).await.unwrap();
            }
            let e = refused(call(&mut svc, req("team-a")).await);
            assert_eq!(e.kind(), BudgetKind::Tokens);
        });
    }
}
