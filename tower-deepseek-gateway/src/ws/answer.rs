//! One request of a connection: through the gateway's own proxy handler inside its layers
//! (the same path, key check, stack and accounting as `POST /v1/chat/completions`), its answer
//! turned into messages.

use std::sync::Arc;

use axum::body::Body;
use http::header::RETRY_AFTER;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;
use tokio::sync::mpsc;
use tower_deepseek::core::classify::is_event_stream;
use tower_deepseek::core::meta::X_REQUEST_ID;
use tower_deepseek::core::sse::SseParser;

use super::message::{self, error_member, gateway_error, json_object};
use tower::ServiceExt;

use crate::{Route, Shared, layers};

/// The most of an error answer's body read (its JSON error object).
const ERROR_BODY_LIMIT: usize = 1024 * 1024;

/// Answers `req`: its chunks (or its completion) go out through `tx`, each tagged with `tag`;
/// the final message (`done` or `error`) is returned, for the connection to send once every
/// message before it is out.
pub(crate) async fn answer(
    s: Arc<Shared>,
    req: Request<Body>,
    tag: Option<Value>,
    tx: mpsc::Sender<String>,
) -> String {
    let res = match layers::service(&s, Route::Chat).oneshot(req).await {
        Ok(res) => res,
        Err(never) => match never {},
    };
    let request_id = res
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let rid = request_id.as_deref();
    let tag = tag.as_ref();
    let status = res.status();
    if !status.is_success() {
        let retry_after = res
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let bytes = Limited::new(res.into_body(), ERROR_BODY_LIMIT)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .ok();
        let err = bytes
            .as_deref()
            .and_then(json_object)
            .and_then(error_member)
            .map(ToOwned::to_owned)
            .unwrap_or_else(|| {
                let kind = if status.is_server_error() {
                    "api_error"
                } else {
                    "invalid_request_error"
                };
                gateway_error(
                    kind,
                    "upstream_error",
                    &format!("the request failed with status {}", status.as_u16()),
                )
            });
        return message::error(tag, &err, Some(status), retry_after, rid);
    }
    if is_event_stream(res.headers()) {
        stream(res.into_body(), tag, rid, &tx).await
    } else {
        whole(res.into_body(), tag, rid, &tx).await
    }
}

fn interrupted(tag: Option<&Value>, rid: Option<&str>) -> String {
    message::error(
        tag,
        &gateway_error(
            "api_error",
            "stream_interrupted",
            "the answer was interrupted before its end; it is incomplete, retry the request",
        ),
        None,
        None,
        rid,
    )
}

fn invalid_event(tag: Option<&Value>, rid: Option<&str>) -> String {
    message::error(
        tag,
        &gateway_error(
            "api_error",
            "invalid_upstream_event",
            "the upstream sent an event that is not a JSON object; the answer is incomplete, retry the request",
        ),
        None,
        None,
        rid,
    )
}

/// An event stream: one `chunk` message per `data:` event, `done` at `data: [DONE]`, the
/// error of an error event (the final event of a stream that failed, see `stream.rs`).
async fn stream(
    mut body: Body,
    tag: Option<&Value>,
    rid: Option<&str>,
    tx: &mpsc::Sender<String>,
) -> String {
    let mut parser = SseParser::new();
    let mut last: Option<String> = None;
    // An event that is not JSON: the answer cannot end well, whatever follows.
    let mut garbled = false;
    while let Some(frame) = body.frame().await {
        let data = match frame {
            Ok(f) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
            Err(_) => {
                if last.is_none() {
                    last = Some(interrupted(tag, rid));
                }
                break;
            }
        };
        // Once the answer is over, the rest is read but not sent: the layers observe the end
        // of the stream as it is (audit, metrics).
        if last.is_some() {
            continue;
        }
        let events = match parser.feed(&data) {
            Ok(e) => e,
            Err(_) => {
                last = Some(invalid_event(tag, rid));
                continue;
            }
        };
        for event in events {
            if event.is_done() {
                last = Some(if garbled {
                    invalid_event(tag, rid)
                } else {
                    message::done(tag, rid)
                });
                break;
            }
            match json_object(event.data()) {
                Some(raw) => match error_member(raw) {
                    Some(e) => {
                        last = Some(message::error(tag, e, None, None, rid));
                        break;
                    }
                    None => {
                        if tx.send(message::chunk(tag, raw)).await.is_err() {
                            // The connection is gone: dropping the body cancels the call.
                            return interrupted(tag, rid);
                        }
                    }
                },
                None => {
                    tracing::debug!(target: "tower_deepseek_gateway", "websocket: an event of the answer is not a JSON object");
                    garbled = true;
                }
            }
        }
    }
    last.unwrap_or_else(|| {
        if garbled {
            invalid_event(tag, rid)
        } else {
            interrupted(tag, rid)
        }
    })
}

/// A whole answer (`stream` not asked for): one `completion` message, then `done`.
async fn whole(
    body: Body,
    tag: Option<&Value>,
    rid: Option<&str>,
    tx: &mpsc::Sender<String>,
) -> String {
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => return interrupted(tag, rid),
    };
    let Some(raw) = json_object(&bytes) else {
        return message::error(
            tag,
            &gateway_error(
                "api_error",
                "invalid_upstream_response",
                "the upstream's answer is not a JSON object",
            ),
            Some(StatusCode::BAD_GATEWAY),
            None,
            rid,
        );
    };
    if let Some(e) = error_member(raw) {
        return message::error(tag, e, None, None, rid);
    }
    let _ = tx.send(message::completion(tag, raw)).await;
    message::done(tag, rid)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(body: &'static str) -> (Vec<String>, String) {
        let (tx, mut rx) = mpsc::channel(16);
        let tag = Value::from("t");
        let last = stream(Body::from(body), Some(&tag), Some("r"), &tx).await;
        drop(tx);
        let mut sent = Vec::new();
        while let Some(m) = rx.recv().await {
            sent.push(m);
        }
        (sent, last)
    }

    #[tokio::test]
    async fn events_become_chunks_and_done_ends_the_answer() {
        let (sent, last) =
            run("data: {\"a\":1}\n\n: keep-alive\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n").await;
        assert_eq!(
            sent,
            [
                r#"{"id":"t","chunk":{"a":1}}"#,
                r#"{"id":"t","chunk":{"b":2}}"#
            ]
        );
        assert_eq!(last, r#"{"id":"t","done":true,"request_id":"r"}"#);
    }

    #[tokio::test]
    async fn an_error_event_ends_the_answer_with_its_error() {
        let (sent, last) = run("data: {\"a\":1}\n\ndata: {\"error\":{\"message\":\"m\",\"code\":\"stream_interrupted\"}}\n\n").await;
        assert_eq!(sent.len(), 1);
        let v: Value = serde_json::from_str(&last).unwrap();
        assert_eq!(v["error"]["code"], "stream_interrupted");
        assert_eq!(v["id"], "t");
    }

    #[tokio::test]
    async fn a_stream_without_done_or_with_garbage_is_not_taken_for_whole() {
        let (_, last) = run("data: {\"a\":1}\n\n").await;
        let v: Value = serde_json::from_str(&last).unwrap();
        assert_eq!(v["error"]["code"], "stream_interrupted");

        let (sent, last) = run("data: {\"a\":1}\n\ndata: {\"a\"\n\ndata: [DONE]\n\n").await;
        assert_eq!(sent.len(), 1);
        let v: Value = serde_json::from_str(&last).unwrap();
        assert_eq!(v["error"]["code"], "invalid_upstream_event");
    }
}
