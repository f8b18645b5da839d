//! The exact-request fast path: a byte-identical repeat of a request answered from L1 skips the
//! JSON parse and the canonical key, and never crosses a tenant or changes an answer.

mod common;

use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use serde_json::json;
use tower::Layer;
use tower_deepseek_cache::CacheLayer;
use tower_deepseek_core::meta::TenantId;
use tower_deepseek_testkit::MockServer;

fn exact_hits(snapshotter: &metrics_util::debugging::Snapshotter) -> u64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, _, _, _)| k.key().name() == "deepseek_cache_exact_hits_total")
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(c) => c,
            _ => 0,
        })
        .sum()
}

#[test]
fn identical_repeats_take_the_fast_path_and_stay_scoped() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let server = MockServer::start().await;
            let svc = CacheLayer::builder()
                .build()
                .unwrap()
                .layer(upstream(&server));
            let body = chat_body("the same prompt", json!({}));
            let tenant = |name: &str| {
                let mut r = post(&body);
                r.extensions_mut().insert(TenantId::new(name));
                r
            };

            let (first, a) = call(&svc, tenant("a")).await;
            assert_eq!(first, "miss");
            // The first hit is found the canonical way and remembers the exact request.
            let (second, b) = call(&svc, tenant("a")).await;
            assert_eq!(second, "hit-l1");
            assert_eq!(exact_hits(&snapshotter), 0);
            // From then on, identical bytes go straight to the entry.
            let (third, c) = call(&svc, tenant("a")).await;
            assert_eq!(third, "hit-l1");
            assert_eq!(exact_hits(&snapshotter), 1);
            let (fourth, _) = call(&svc, tenant("a")).await;
            assert_eq!(fourth, "hit-l1");
            assert_eq!(a, b);
            assert_eq!(b, c, "the fast path replays the same answer");

            // The same bytes for another tenant never use tenant a's alias or entry.
            let (other, _) = call(&svc, tenant("b")).await;
            assert_eq!(other, "miss");
            assert_eq!(
                exact_hits(&snapshotter),
                1,
                "the fourth call, not tenant b's"
            );
            assert_eq!(server.chat_count(), 2);

            // A reformatted body misses the fast path but still hits canonically.
            let spaced = serde_json::to_string_pretty(&body).unwrap();
            let mut r = post(&serde_json::from_str(&spaced).unwrap());
            *r.body_mut() = spaced.into();
            r.extensions_mut().insert(TenantId::new("a"));
            let (reformatted, _) = call(&svc, r).await;
            assert_eq!(reformatted, "hit-l1");
            // (snapshots drain counters: none since the last one)
            assert_eq!(exact_hits(&snapshotter), 0);
            assert_eq!(server.chat_count(), 2);
        });
    });
}
