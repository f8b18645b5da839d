//! The audit record carries each call's cost: `AuditLayer` above `CostLayer` reads core's
//! `CallCost` slot at the answer's end (JSON and streams; the usage read from the breaker's
//! shared verdict), and a call without a priced usage has no cost in its record.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_deepseek::ServiceBuilderExt;
use tower_deepseek::core::protocol::{CallCost, TenantId};
use tower_deepseek::redact::audit::{AuditRecord, WriterSink};
use tower_deepseek::retry::{ModelPrice, PriceTable};
use tower_deepseek::{AuditLayer, CircuitBreakerLayer, CostLayer};

/// A writer the test reads back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A body of the given frames, in order.
struct Frames(VecDeque<Bytes>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

const USAGE: &str = r#"{"prompt_tokens":3000,"completion_tokens":500,"total_tokens":3500,"prompt_cache_hit_tokens":1000,"prompt_cache_miss_tokens":2000}"#;

fn answer(kind: &str) -> (&'static str, Vec<Bytes>) {
    match kind {
        "json" => (
            "application/json",
            vec![Bytes::from(format!(
                r#"{{"model":"deepseek-chat","choices":[{{"index":0,"message":{{"role":"assistant","content":"hi"}},"finish_reason":"stop"}}],"usage":{USAGE}}}"#
            ))],
        ),
        "stream" => (
            "text/event-stream",
            vec![
                Bytes::from_static(b"data: {\"model\":\"deepseek-chat\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n"),
                Bytes::from_static(b"data: {\"model\":\"deepseek-chat\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"),
                Bytes::from(format!("data: {{\"model\":\"deepseek-chat\",\"choices\":[],\"usage\":{USAGE}}}\n\n")),
                Bytes::from_static(b"data: [DONE]\n\n"),
            ],
        ),
        // No usage at all.
        _ => (
            "application/json",
            vec![Bytes::from_static(
                br#"{"model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}"#,
            )],
        ),
    }
}

#[tokio::test]
async fn the_audit_record_carries_the_cost() {
    let out = Shared::default();
    let audit = AuditLayer::builder()
        .hmac_key(b"cost-audit-test-key-0123456789".to_vec())
        .sink(WriterSink::new(out.clone()))
        .build()
        .unwrap();
    let prices = PriceTable::new("USD").model(
        "deepseek-chat",
        ModelPrice::new(
            "0.028".parse().unwrap(),
            "0.28".parse().unwrap(),
            "0.42".parse().unwrap(),
        ),
    );
    let stack = ServiceBuilder::new()
        .audit_layer(audit)
        .cost_layer(CostLayer::builder(prices).build().unwrap())
        .circuit_breaker_layer(CircuitBreakerLayer::new());
    for kind in ["json", "stream", "none"] {
        let upstream = tower::service_fn(move |_req: http::Request<_>| async move {
            let (ct, frames) = answer(kind);
            Ok::<_, tower_deepseek::BoxError>(
                http::Response::builder()
                    .header("content-type", ct)
                    .body(Frames(frames.into()))
                    .unwrap(),
            )
        });
        let mut req = http::Request::post("/chat/completions")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"model":"deepseek-chat","messages":[]}"#,
            )))
            .unwrap();
        req.extensions_mut().insert(TenantId::new("team-a"));
        let res = stack.clone().service(upstream).oneshot(req).await.unwrap();
        let slot = res.extensions().get::<CallCost>().cloned();
        res.into_body().collect().await.unwrap();
        let want = (kind != "none").then_some("0.000798");
        assert_eq!(
            slot.as_ref()
                .and_then(CallCost::get)
                .map(|c| c.amount.to_string())
                .as_deref(),
            want,
            "{kind}"
        );
    }
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let records: Vec<AuditRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3);
    for (r, want) in records
        .iter()
        .zip([Some("0.000798"), Some("0.000798"), None])
    {
        assert_eq!(r.outcome, "ok");
        assert_eq!(r.cost.as_deref(), want);
        assert_eq!(r.currency.as_deref(), want.map(|_| "USD"));
    }
    // Without a cost the record is as before: no `cost` member at all.
    assert!(!text.lines().nth(2).unwrap().contains("\"cost\""));
}
