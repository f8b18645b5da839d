//! The shared classifier's end-of-body verdict on a complete JSON 2xx answer, as retry, breaker,
//! audit and the rate limiter pay it on every non-streaming answer. Baselines of the same run:
//! serde_json skipping the whole body (`IgnoredAny`: the least any full validation costs), and
//! the classifier's former probe (a `Vec` of choices and owned strings), shared with the property
//! test as its reference.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::de::IgnoredAny;
use tower_deepseek_core::classify::{ClassifiedResponse, Classifier};

const CHAT: &[u8] = br#"{"id":"1","object":"chat.completion","model":"deepseek-chat","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}"#;

/// A longer answer: a paragraph of content, reasoning, fingerprint, cache usage fields.
const LONG: &[u8] = br#"{"id":"930c60df-bf64-41c9-a88e-3ec75f81e00e","object":"chat.completion","created":1705651092,"model":"deepseek-reasoner","system_fingerprint":"fp_a49d71b8a1","choices":[{"index":0,"message":{"role":"assistant","content":"Tower middleware composes: each layer wraps a service and returns a service, so retries, timeouts and rate limits stack in the order you list them. Put the rate limiter outside the retry layer so that a retry does not take a second slot.","reasoning_content":"The user asks about ordering of layers. Explain briefly."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":16,"completion_tokens":70,"total_tokens":86,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":12},"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":16}}"#;

/// Issue 17's 2 KB answer, shared with the layers' benches.
#[path = "../../tower-deepseek-testkit/src/fixture.rs"]
#[allow(dead_code, unreachable_pub)]
mod fixture;

#[path = "../tests/common/former_probe.rs"]
mod former_probe;
use former_probe::RefProbe as OldProbe;

fn bodies() -> [(&'static str, Bytes); 3] {
    [
        ("chat_230b", Bytes::from_static(CHAT)),
        ("long_800b", Bytes::from_static(LONG)),
        ("answer_2k", fixture::answer_2k()),
    ]
}

fn bench(c: &mut Criterion) {
    let classifier = Classifier::new();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let mut g = c.benchmark_group("classify_json");
    for (name, body) in bodies() {
        g.bench_function(format!("{name}/serde_ignored_any_floor"), |b| {
            b.iter(|| black_box(serde_json::from_slice::<IgnoredAny>(black_box(&body)).is_ok()))
        });
        g.bench_function(format!("{name}/former_probe_parse"), |b| {
            b.iter(|| black_box(serde_json::from_slice::<OldProbe>(black_box(&body)).is_ok()))
        });
        g.bench_function(format!("{name}/classify_head_on_data_finish"), |b| {
            b.iter(
                || match classifier.classify_head(StatusCode::OK, &headers) {
                    ClassifiedResponse::RequiresEos(mut eos) => {
                        eos.on_data(black_box(&body));
                        black_box(eos.finish().is_ok())
                    }
                    ClassifiedResponse::Ready(_) => unreachable!(),
                },
            )
        });
        let lean = Classifier::new().summary(false);
        g.bench_function(format!("{name}/classify_verdict_only"), |b| {
            b.iter(|| match lean.classify_head(StatusCode::OK, &headers) {
                ClassifiedResponse::RequiresEos(mut eos) => {
                    eos.on_data(black_box(&body));
                    black_box(eos.finish().is_ok())
                }
                ClassifiedResponse::Ready(_) => unreachable!(),
            })
        });
    }
    g.finish();
}

/// The machine is shared: every variant in interleaved rounds, each one's best round kept
/// (the figure least disturbed by other processes). Printed to stderr.
fn interleaved(_c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let classify = |c: Classifier, body: &Bytes| match c.classify_head(StatusCode::OK, &headers) {
        ClassifiedResponse::RequiresEos(mut eos) => {
            eos.on_data(black_box(body));
            eos.finish().is_ok()
        }
        ClassifiedResponse::Ready(_) => unreachable!(),
    };
    const N: u32 = 20_000;
    for (name, body) in bodies() {
        let runs: [(&str, &dyn Fn() -> bool); 4] = [
            ("serde_ignored_any_floor", &|| {
                serde_json::from_slice::<IgnoredAny>(black_box(&body)).is_ok()
            }),
            ("former_probe_parse", &|| {
                serde_json::from_slice::<OldProbe>(black_box(&body)).is_ok()
            }),
            ("classify_head_on_data_finish", &|| {
                classify(Classifier::new(), &body)
            }),
            ("classify_verdict_only", &|| {
                classify(Classifier::new().summary(false), &body)
            }),
        ];
        let mut best = [f64::MAX; 4];
        for _ in 0..40 {
            for (b, (_, f)) in best.iter_mut().zip(&runs) {
                let start = std::time::Instant::now();
                for _ in 0..N {
                    black_box(f());
                }
                *b = b.min(start.elapsed().as_nanos() as f64 / f64::from(N));
            }
        }
        eprintln!("interleaved best-of-40 rounds, {name}:");
        for ((n, _), b) in runs.iter().zip(best) {
            eprintln!("  {n:30} {b:7.0} ns");
        }
    }
}

criterion_group!(benches, bench, interleaved);

/// `CLASSIFY_DRIVE=<body> CLASSIFY_ITERS=<n>`: only `n` verdict-only classifications of that
/// body (`chat_230b`, `long_800b`, `answer_2k`), for callgrind (run with `n` and 0, subtract);
/// with `CLASSIFY_FLOOR=1`, serde_json skipping the same body instead.
fn main() {
    if let Ok(name) = std::env::var("CLASSIFY_DRIVE") {
        let iters: u32 = std::env::var("CLASSIFY_ITERS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1000);
        let (_, body) = bodies()
            .into_iter()
            .find(|(n, _)| *n == name)
            .expect("a body name");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let lean = Classifier::new().summary(false);
        if std::env::var("CLASSIFY_FLOOR").is_ok() {
            for _ in 0..iters {
                black_box(serde_json::from_slice::<IgnoredAny>(black_box(&body)).is_ok());
            }
            return;
        }
        for _ in 0..iters {
            match lean.classify_head(StatusCode::OK, &headers) {
                ClassifiedResponse::RequiresEos(mut eos) => {
                    eos.on_data(black_box(&body));
                    black_box(eos.finish().is_ok());
                }
                ClassifiedResponse::Ready(_) => unreachable!(),
            }
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
