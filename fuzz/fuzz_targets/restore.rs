//! The restorer: a text (arbitrary, with PII values spliced in) is masked by `RedactLayer` on
//! the way up; the upstream streams the masked text back as SSE content deltas cut anywhere,
//! in frames cut anywhere; the caller must read the original text (secrets stay labelled, as
//! the layer documents), whatever the chunking.
#![no_main]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use tower::{ServiceExt, service_fn};
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::BufferedBody;
use tower_deepseek_core::sse::SseParser;
use tower_deepseek_redact::{EntityType, Mode, RedactContext, RedactLayer, Redactor};
use tower_layer::Layer;

struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

const PII: &[&str] = &[
    "13800138000",
    "a.b@example.com",
    "11010519491231002X",
    "4111 1111 1111 1111",
    "+86 139 0013 9000",
    "sk-0123456789abcdef0123456789abcdef",
    "192.168.1.20",
    "<CN_MOBILE_1>",
    "<EMAIL_",
];

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    })
}

fn cut_at(len: usize, raw: &[u8]) -> Vec<usize> {
    let mut v: Vec<usize> = raw
        .iter()
        .map(|&b| usize::from(b) * 7 % (len + 1))
        .collect();
    v.push(0);
    v.push(len);
    v.sort_unstable();
    v.dedup();
    v
}

fuzz_target!(|data: &[u8]| {
    // [n][n cut bytes for deltas][n cut bytes for frames][text; 0x01 k splices PII[k]]
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 12).min(rest.len() / 2);
    let (delta_cuts, rest) = rest.split_at(n);
    let (frame_cuts, rest) = rest.split_at(n);
    let mut text = String::new();
    let mut it = String::from_utf8_lossy(rest)
        .into_owned()
        .into_bytes()
        .into_iter();
    let mut buf = Vec::new();
    while let Some(b) = it.next() {
        if b == 1 {
            let k = it.next().unwrap_or(0);
            buf.extend_from_slice(PII[usize::from(k) % PII.len()].as_bytes());
        } else {
            buf.push(b);
        }
    }
    text.push_str(&String::from_utf8_lossy(&buf));

    let masked_seen = Arc::new(Mutex::new(String::new()));
    let m2 = masked_seen.clone();
    let (dc, fc) = (delta_cuts.to_vec(), frame_cuts.to_vec());
    let svc = RedactLayer::new().layer(service_fn(move |req: Request<BufferedBody>| {
        let v: serde_json::Value = serde_json::from_slice(req.body().bytes()).unwrap();
        let masked = v["messages"][0]["content"].as_str().unwrap().to_owned();
        *m2.lock().unwrap() = masked.clone();
        let mut wire = String::from(": keep-alive\n\n");
        let bounds: Vec<usize> = cut_at(masked.len(), &dc)
            .into_iter()
            .filter(|c| masked.is_char_boundary(*c))
            .collect();
        for w in bounds.windows(2) {
            let ev = serde_json::json!({"id": "x", "choices": [{"index": 0, "delta": {"content": &masked[w[0]..w[1]]}, "finish_reason": null}]});
            wire.push_str(&format!("data: {ev}\n\n"));
        }
        wire.push_str("data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
        wire.push_str("data: [DONE]\n\n");
        let b = wire.into_bytes();
        let frames: VecDeque<Bytes> = cut_at(b.len(), &fc)
            .windows(2)
            .map(|w| Bytes::copy_from_slice(&b[w[0]..w[1]]))
            .collect();
        async move {
            Ok::<_, BoxError>(
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Chunks(frames))
                    .unwrap(),
            )
        }
    }));
    let body = serde_json::json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": text}]});
    let req = Request::post("/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let wire = rt().block_on(async {
        let res = svc.oneshot(req).await.unwrap();
        res.into_body().collect().await.unwrap().to_bytes()
    });
    let mut p = SseParser::new();
    let mut out = String::new();
    let mut done = false;
    p.push(&wire, |e| {
        if e.is_done() {
            done = true;
            return;
        }
        let v: serde_json::Value = serde_json::from_slice(e.data()).unwrap();
        if let Some(s) = v["choices"][0]["delta"]["content"].as_str() {
            out.push_str(s);
        }
    })
    .unwrap();
    assert!(done, "the stream lost its [DONE]");

    // Expected: the text as masked, with every placeholder of the vault put back.
    let r = Redactor::builder()
        .default_mode(Mode::Placeholder)
        .build()
        .unwrap();
    let mut ctx = RedactContext::new(None);
    let masked = r
        .redact(&text, &mut ctx)
        .unwrap()
        .unwrap_or_else(|| text.clone());
    assert_eq!(
        *masked_seen.lock().unwrap(),
        masked,
        "the layer masked differently"
    );
    let mut pairs = Vec::new();
    for kind in EntityType::builtin() {
        for i in 1..=64 {
            let ph = format!("<{}_{}>", kind.as_str(), i);
            if let Some(v) = ctx.vault.lookup(&ph) {
                pairs.push((ph, v.to_owned()));
            }
        }
    }
    // One pass, left to right (a restored value is never rescanned).
    let mut expected = String::new();
    let mut rest = masked.as_str();
    'outer: while !rest.is_empty() {
        for (ph, v) in &pairs {
            if let Some(tail) = rest.strip_prefix(ph.as_str()) {
                expected.push_str(v);
                rest = tail;
                continue 'outer;
            }
        }
        let c = rest.chars().next().unwrap();
        expected.push(c);
        rest = &rest[c.len_utf8()..];
    }
    assert_eq!(out, expected, "restored text differs");
});
