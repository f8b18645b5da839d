//! ContentFilterLayer on JSON answers and SSE streams (matches across events and frames).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tower::{ServiceExt, service_fn};
use tower_deepseek_core::sse::SseParser;
use tower_deepseek_redact::filter::{ContentFilterLayer, FilterAction};
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

fn sse(pieces: &[&str], frame: usize) -> Vec<Bytes> {
    let mut wire = String::new();
    for p in pieces {
        let ev = serde_json::json!({"id": "x", "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": null}]});
        wire.push_str(&format!("data: {ev}\n\n"));
    }
    wire.push_str("data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
    wire.push_str("data: [DONE]\n\n");
    wire.as_bytes()
        .chunks(frame)
        .map(Bytes::copy_from_slice)
        .collect()
}

async fn run_sse(
    layer: &ContentFilterLayer,
    pieces: &[&str],
    frame: usize,
) -> (String, Vec<String>) {
    let frames = sse(pieces, frame);
    let svc = layer.layer(service_fn(move |_req: Request<()>| {
        let frames = frames.clone();
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Chunks(frames.into()))
                    .unwrap(),
            )
        }
    }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    let wire = res.into_body().collect().await.unwrap().to_bytes();
    let mut p = SseParser::new();
    let mut text = String::new();
    let mut events = Vec::new();
    p.push(&wire, |e| {
        let d = String::from_utf8(e.data().to_vec()).unwrap();
        if !e.is_done() {
            let v: serde_json::Value = serde_json::from_str(&d).unwrap();
            if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
                text.push_str(c);
            }
        }
        events.push(d);
    })
    .unwrap();
    (String::from_utf8(wire.to_vec()).unwrap(), {
        events.insert(0, text);
        events
    })
}

fn json_answer(content: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"id": "x", "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "reasoning_content": "r"}}], "usage": {"prompt_tokens": 1}});
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

#[tokio::test]
async fn json_mask_and_block() {
    let mask = ContentFilterLayer::builder()
        .keywords(["机密", "secret plan"])
        .build()
        .unwrap();
    let svc = mask.layer(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(json_answer("the Secret Plan is 机密 \"quoted\""))
    }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let cl: usize = res.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(cl, body.len());
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "the *** is *** \"quoted\""
    );
    assert_eq!(v["usage"]["prompt_tokens"], 1);

    let block = ContentFilterLayer::builder()
        .regex(r"\bpassword\s*[:=]\s*\S+")
        .action(FilterAction::Block)
        .build()
        .unwrap();
    let svc = block.layer(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(json_answer("your password: hunter2"))
    }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "content_filter");
    assert!(!String::from_utf8_lossy(&body).contains("hunter2"));
}

#[tokio::test]
async fn clean_json_and_errors_pass_untouched() {
    let layer = ContentFilterLayer::builder()
        .keywords(["bad"])
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(json_answer("all good"))
    }));
    let expected = json_answer("all good")
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    let body = svc
        .oneshot(Request::new(()))
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, expected);
    let svc = layer.layer(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .status(429)
                .body(Full::new(Bytes::from_static(b"bad bad")))
                .unwrap(),
        )
    }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        Bytes::from_static(b"bad bad")
    );
}

#[tokio::test]
async fn stream_mask_across_events_and_frames() {
    let layer = ContentFilterLayer::builder()
        .keywords(["badword", "禁止词"])
        .build()
        .unwrap();
    for frame in [1, 3, 17, 10_000] {
        let (_, ev) = run_sse(
            &layer,
            &["this is b", "adw", "ord and 禁", "止", "词 ok"],
            frame,
        )
        .await;
        assert_eq!(ev[0], "this is *** and *** ok", "frame {frame}");
        assert_eq!(ev.last().unwrap(), "[DONE]");
    }
}

#[tokio::test]
async fn stream_block_ends_with_an_error_event() {
    let layer = ContentFilterLayer::builder()
        .keywords(["badword"])
        .action(FilterAction::Block)
        .build()
        .unwrap();
    for frame in [1, 5, 10_000] {
        let (wire, ev) = run_sse(
            &layer,
            &["hello ", "there b", "adword", " more text"],
            frame,
        )
        .await;
        assert!(
            !wire.contains("badword") && !wire.contains("adword") && !wire.contains("more text"),
            "{wire}"
        );
        assert!(!wire.contains("[DONE]"));
        let last: serde_json::Value = serde_json::from_str(ev.last().unwrap()).unwrap();
        assert_eq!(last["error"]["code"], "content_filter");
        assert!(
            ev[0].starts_with("hello"),
            "content before the match flows: {:?}",
            ev[0]
        );
    }
}

#[tokio::test]
async fn clean_stream_keeps_its_text() {
    let layer = ContentFilterLayer::builder()
        .keywords(["zzz"])
        .build()
        .unwrap();
    let (_, ev) = run_sse(&layer, &["a", "b", "cdefg"], 4).await;
    assert_eq!(ev[0], "abcdefg");
}

#[test]
fn config_is_validated() {
    assert_eq!(
        ContentFilterLayer::builder().build().unwrap_err().field(),
        "keywords"
    );
    assert_eq!(
        ContentFilterLayer::builder()
            .regex("(")
            .build()
            .unwrap_err()
            .field(),
        "regexes"
    );
    assert_eq!(
        ContentFilterLayer::builder()
            .keywords(["x"])
            .block_status(StatusCode::OK)
            .build()
            .unwrap_err()
            .field(),
        "block_status"
    );
}
