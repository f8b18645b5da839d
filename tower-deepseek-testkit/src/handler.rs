//! One request: record it, pick its fault, produce (and shape) the answer.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::watch;

use crate::TOKEN_PATH;
use crate::body::{MockBody, Step, scripted};
use crate::deepseek::{self, Payload, error_json, json_response};
use crate::fault::{Fault, FaultKind};
use crate::oauth;
use crate::record::RecordedRequest;
use crate::server::{ConnCtl, phase_reached};
use crate::state::{Phase, Shared};

const DONE: &[u8] = b"data: [DONE]\n\n";
const KEEPALIVE: &[u8] = b": keep-alive\n\n";
const MALFORMED_JSON: &[u8] =
    br#"{"id": "malformed", "object": "chat.completion", "choices": [ oops ]"#;
const MALFORMED_EVENT: &[u8] =
    b"data: {\"id\": \"malformed\", \"choices\": [{\"delta\": {\"content\": oops}\n\n";

pub(crate) async fn handle(
    shared: Arc<Shared>,
    ctl: ConnCtl,
    req: Request<Incoming>,
) -> Response<MockBody> {
    let (parts, body) = req.into_parts();
    // A body that fails half-way (client gone) is recorded as far as it was read.
    let body = body
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    let rec = RecordedRequest {
        method: parts.method,
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        headers: parts.headers,
        body,
    };
    shared.record(rec.clone());
    let is_token = rec.path_without_query() == TOKEN_PATH;
    if is_token {
        shared.token_fetches.fetch_add(1, Ordering::SeqCst);
    }
    let fault = shared.take_fault(&rec, is_token);
    let mut phase = shared.phase.subscribe();
    let Some(fault) = fault else {
        return respond(&shared, &rec, &Fault::ok(), is_token, phase);
    };
    if let Some(d) = fault.delay {
        tokio::select! {
            () = tokio::time::sleep(d) => {}
            () = phase_reached(&mut phase, Phase::Stopped) => return gone(),
        }
    }
    match &fault.kind {
        FaultKind::Hang => {
            phase_reached(&mut phase, Phase::Draining).await;
            ctl.abort(false);
            ctl.closed().await;
            gone()
        }
        FaultKind::ResetBeforeHeaders => {
            ctl.abort(true);
            ctl.closed().await;
            gone()
        }
        FaultKind::Status(status)
            if fault.body.is_some() || fault.then_empty || !status.is_success() =>
        {
            let body = if fault.then_empty {
                Bytes::new()
            } else if let Some(body) = &fault.body {
                body.clone()
            } else if is_token {
                let description = status.canonical_reason().unwrap_or("error");
                Bytes::from(oauth::oauth_error_json(*status, None, description).to_string())
            } else {
                Bytes::from(error_json(*status, None).to_string())
            };
            let mut resp = json_response(*status, body);
            if is_token {
                oauth::no_store(resp.headers_mut());
            }
            with_headers(resp, &fault.headers)
        }
        FaultKind::Empty200 => {
            let body = if fault.then_empty {
                Bytes::new()
            } else {
                fault.body.clone().unwrap_or_default()
            };
            with_headers(json_response(StatusCode::OK, body), &fault.headers)
        }
        _ => respond(&shared, &rec, &fault, is_token, phase),
    }
}

/// The response a handler returns when its connection is already gone (never sent).
fn gone() -> Response<MockBody> {
    let mut resp = Response::new(MockBody::empty());
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    resp
}

/// Adds a fault's headers: the first value of a name replaces, further ones append.
fn with_headers(
    mut resp: Response<MockBody>,
    headers: &[(HeaderName, HeaderValue)],
) -> Response<MockBody> {
    let mut seen = HashSet::new();
    let map: &mut HeaderMap = resp.headers_mut();
    for (name, value) in headers {
        if seen.insert(name.clone()) {
            map.insert(name.clone(), value.clone());
        } else {
            map.append(name.clone(), value.clone());
        }
    }
    resp
}

/// The endpoint's normal answer, shaped by a fault that does not replace it.
fn respond(
    shared: &Shared,
    rec: &RecordedRequest,
    fault: &Fault,
    is_token: bool,
    phase: watch::Receiver<Phase>,
) -> Response<MockBody> {
    let finish = match &fault.kind {
        FaultKind::FinishReason(reason) => Some(reason.as_str()),
        _ => None,
    };
    let answer = if is_token {
        oauth::token(shared, rec)
    } else {
        deepseek::answer(shared, rec, finish)
    };
    let payload = match answer {
        Ok(payload) => payload,
        Err(resp) => return with_headers(*resp, &fault.headers),
    };
    let status = match fault.kind {
        FaultKind::Status(status) => status,
        _ => StatusCode::OK,
    };
    let is_sse = matches!(payload, Payload::Sse(_));
    let steps = shape(payload, fault, shared.config.stream_chunk_delay);
    let needs_task = is_sse || steps.iter().any(|s| !matches!(s, Step::Data(_)));
    let body = if needs_task {
        scripted(steps, phase)
    } else {
        let mut all = Vec::new();
        for step in steps {
            if let Step::Data(bytes) = step {
                all.extend_from_slice(&bytes);
            }
        }
        MockBody::full(all)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    if is_sse {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    } else {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    if is_token {
        oauth::no_store(headers);
    }
    with_headers(resp, &fault.headers)
}

/// Turns a payload into body steps according to the fault.
fn shape(payload: Payload, fault: &Fault, chunk_delay: std::time::Duration) -> Vec<Step> {
    let mut steps = Vec::new();
    let preamble = match fault.kind {
        FaultKind::BlankLines { n, interval } => Some((n, interval, &b"\n"[..])),
        FaultKind::KeepaliveComments { n, interval } => Some((n, interval, KEEPALIVE)),
        _ => None,
    };
    if let Some((n, interval, line)) = preamble {
        for _ in 0..n {
            steps.push(Step::Data(Bytes::from_static(line)));
            if !interval.is_zero() {
                steps.push(Step::Sleep(interval));
            }
        }
    }
    if fault.then_empty {
        return steps;
    }
    if let Some(body) = &fault.body {
        steps.push(Step::Data(body.clone()));
        return steps;
    }
    match payload {
        Payload::Json(json) => shape_json(json, fault, &mut steps),
        Payload::Sse(events) => shape_sse(events, fault, chunk_delay, &mut steps),
    }
    steps
}

fn shape_json(json: Bytes, fault: &Fault, steps: &mut Vec<Step>) {
    let half = json.len() / 2;
    match fault.kind {
        FaultKind::CutWithoutDone(_) => steps.push(Step::Data(json.slice(..half))),
        FaultKind::ResetMidStream(_) => {
            steps.push(Step::Data(json.slice(..half)));
            steps.push(Step::Abort);
        }
        FaultKind::SlowDrip(interval) => {
            let size = json.len().div_ceil(8).max(1);
            let mut start = 0;
            while start < json.len() {
                if start > 0 {
                    steps.push(Step::Sleep(interval));
                }
                let end = (start + size).min(json.len());
                steps.push(Step::Data(json.slice(start..end)));
                start = end;
            }
        }
        FaultKind::MalformedJson => steps.push(Step::Data(Bytes::from_static(MALFORMED_JSON))),
        FaultKind::InBandError => steps.push(Step::Data(Bytes::from(
            error_json(StatusCode::INTERNAL_SERVER_ERROR, None).to_string(),
        ))),
        _ => steps.push(Step::Data(json)),
    }
}

fn shape_sse(
    mut events: Vec<Bytes>,
    fault: &Fault,
    chunk_delay: std::time::Duration,
    steps: &mut Vec<Step>,
) {
    let mut gap = chunk_delay;
    let mut done = true;
    let mut abort = false;
    match fault.kind {
        FaultKind::CutWithoutDone(n) => {
            events.truncate(n);
            done = false;
        }
        FaultKind::ResetMidStream(n) => {
            events.truncate(n);
            done = false;
            abort = true;
        }
        FaultKind::InBandError => {
            events.truncate(2);
            let error = error_json(StatusCode::INTERNAL_SERVER_ERROR, None);
            events.push(Bytes::from(format!("data: {error}\n\n")));
            done = false;
        }
        FaultKind::MalformedJson => {
            let at = events.len().min(1);
            events.insert(at, Bytes::from_static(MALFORMED_EVENT));
        }
        FaultKind::SlowDrip(interval) => gap = interval,
        _ => {}
    }
    if done {
        events.push(Bytes::from_static(DONE));
    }
    for (i, event) in events.into_iter().enumerate() {
        if i > 0 && !gap.is_zero() {
            steps.push(Step::Sleep(gap));
        }
        steps.push(Step::Data(event));
    }
    if abort {
        steps.push(Step::Abort);
    }
}
