//! Single-flight and L1 expiry against in-process upstreams, with tokio's paused clock.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_deepseek_cache::{CacheLayer, ResponseBody};
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::BufferedBody;

/// A response body fed through a channel: `Ok` chunks, or an error.
struct ChannelBody(mpsc::UnboundedReceiver<Result<Bytes, std::io::Error>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

type Tx = mpsc::UnboundedSender<Result<Bytes, std::io::Error>>;

fn json_answer(text: &str) -> Bytes {
    Bytes::from(
        json!({"id":"c1","object":"chat.completion","created":1,"model":"m",
            "choices":[{"index":0,"message":{"role":"assistant","content":text},"finish_reason":"stop"}]})
        .to_string(),
    )
}

fn chunk(delta: Value, finish: Option<&str>) -> Bytes {
    let v = json!({"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",
        "choices":[{"index":0,"delta":delta,"finish_reason":finish}]});
    Bytes::from(format!("data: {v}\n\n"))
}

fn request(stream: bool) -> Request<BufferedBody> {
    let body = json!({"model":"m","temperature":0,"stream":stream,"messages":[{"role":"user","content":"hi"}]});
    Request::post("/chat/completions")
        .body(BufferedBody::from(body.to_string()))
        .unwrap()
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

async fn next_data<B>(body: &mut ResponseBody<B>) -> Option<Bytes>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    loop {
        match body.frame().await? {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    return Some(d);
                }
            }
            Err(_) => return None,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn l1_entries_expire_after_their_ttl() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = CacheLayer::builder()
        .l1_ttl(Duration::from_secs(300))
        .build()
        .unwrap()
        .layer(service_fn(move |_r: Request<BufferedBody>| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(BufferedBody::new(json_answer("x")))) }
        }));
    let get = |svc: &_| {
        let svc: tower_deepseek_cache::Cache<_> = Clone::clone(svc);
        async move {
            let r = svc.oneshot(request(false)).await.unwrap();
            let xc = r.headers()["x-cache"].to_str().unwrap().to_owned();
            r.into_body().collect().await.unwrap();
            xc
        }
    };
    assert_eq!(get(&svc).await, "miss");
    tokio::time::advance(Duration::from_secs(299)).await;
    assert_eq!(get(&svc).await, "hit-l1");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(get(&svc).await, "miss");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// An upstream whose answers the test scripts: each call takes the next channel.
fn scripted(
    script: Vec<Result<(StatusCode, &'static str, ChannelBodyHandle), ()>>,
    gate: Arc<Semaphore>,
) -> (
    impl Service<
        Request<BufferedBody>,
        Response = Response<ChannelBody>,
        Error = std::io::Error,
        Future = impl Send,
    > + Clone
    + Send
    + 'static,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let script = Arc::new(std::sync::Mutex::new(
        script
            .into_iter()
            .collect::<std::collections::VecDeque<_>>(),
    ));
    let c = calls.clone();
    let svc = service_fn(move |_r: Request<BufferedBody>| {
        c.fetch_add(1, Ordering::SeqCst);
        let next = script.lock().unwrap().pop_front().expect("scripted call");
        let gate = gate.clone();
        async move {
            gate.acquire().await.unwrap().forget();
            match next {
                Ok((status, ct, h)) => Ok(Response::builder()
                    .status(status)
                    .header("content-type", ct)
                    .body(h.0)
                    .unwrap()),
                Err(()) => Err(std::io::Error::other("connection reset")),
            }
        }
    });
    (svc, calls)
}

struct ChannelBodyHandle(ChannelBody);

fn channel() -> (Tx, ChannelBodyHandle) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, ChannelBodyHandle(ChannelBody(rx)))
}

#[tokio::test(start_paused = true)]
async fn streaming_followers_receive_the_stream_live() {
    let (tx, body) = channel();
    let gate = Arc::new(Semaphore::new(0));
    let (up, calls) = scripted(
        vec![Ok((StatusCode::OK, "text/event-stream", body))],
        gate.clone(),
    );
    let svc = CacheLayer::new().layer(up);

    let leader = tokio::spawn(svc.clone().oneshot(request(true)));
    settle().await;
    let follower = tokio::spawn(svc.clone().oneshot(request(true)));
    settle().await;
    gate.add_permits(1);
    let mut leader = leader.await.unwrap().unwrap();
    let mut follower = follower.await.unwrap().unwrap();
    assert_eq!(follower.headers()["x-cache"], "miss");
    assert_eq!(follower.headers()["content-type"], "text/event-stream");

    // Each chunk reaches the follower before the next one even exists.
    let c1 = chunk(json!({"role":"assistant","content":"Hel"}), None);
    tx.send(Ok(c1.clone())).unwrap();
    assert_eq!(next_data(leader.body_mut()).await.unwrap(), c1);
    assert_eq!(next_data(follower.body_mut()).await.unwrap(), c1);
    // A follower that joins now gets the start replayed, then the rest live.
    let late = svc.clone().oneshot(request(true)).await.unwrap();
    let mut late = late;
    assert_eq!(next_data(late.body_mut()).await.unwrap(), c1);

    let c2 = chunk(json!({"content":"lo"}), Some("stop"));
    tx.send(Ok(c2.clone())).unwrap();
    assert_eq!(next_data(follower.body_mut()).await.unwrap(), c2);
    tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n")))
        .unwrap();
    drop(tx);
    assert_eq!(
        next_data(follower.body_mut()).await.unwrap(),
        &b"data: [DONE]\n\n"[..]
    );
    assert!(next_data(follower.body_mut()).await.is_none());
    while next_data(late.body_mut()).await.is_some() {}
    while next_data(leader.body_mut()).await.is_some() {}
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Stored once complete.
    let again = svc.clone().oneshot(request(true)).await.unwrap();
    assert_eq!(again.headers()["x-cache"], "hit-l1");
}

#[tokio::test(start_paused = true)]
async fn leader_error_before_head_hands_over_to_a_follower() {
    let (tx, body) = channel();
    let gate = Arc::new(Semaphore::new(0));
    let (up, calls) = scripted(
        vec![Err(()), Ok((StatusCode::OK, "application/json", body))],
        gate.clone(),
    );
    let svc = CacheLayer::new().layer(up);
    tx.send(Ok(json_answer("second try"))).unwrap();
    drop(tx);

    let leader = tokio::spawn(svc.clone().oneshot(request(false)));
    settle().await;
    let followers: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(request(false))))
        .collect();
    settle().await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    gate.add_permits(2);
    assert!(
        leader.await.unwrap().is_err(),
        "the leader's own error is its caller's"
    );
    for f in followers {
        let resp = f.await.unwrap().unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("second try"));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one follower took over, the rest followed it"
    );
}

#[tokio::test(start_paused = true)]
async fn leader_cancelled_before_head_hands_over_to_a_follower() {
    let (tx1, body1) = channel();
    let (tx2, body2) = channel();
    let gate = Arc::new(Semaphore::new(0));
    let (up, calls) = scripted(
        vec![
            Ok((StatusCode::OK, "application/json", body1)),
            Ok((StatusCode::OK, "application/json", body2)),
        ],
        gate.clone(),
    );
    let svc = CacheLayer::new().layer(up);
    drop(tx1);
    tx2.send(Ok(json_answer("taken over"))).unwrap();
    drop(tx2);

    let leader = tokio::spawn(svc.clone().oneshot(request(false)));
    settle().await;
    let follower = tokio::spawn(svc.clone().oneshot(request(false)));
    settle().await;
    leader.abort();
    settle().await;
    gate.add_permits(1);
    let resp = follower.await.unwrap().unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("taken over"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn error_answers_are_shared_not_stored_and_broken_streams_break_followers_too() {
    let (tx, body) = channel();
    let (tx2, body2) = channel();
    let (tx3, body3) = channel();
    let gate = Arc::new(Semaphore::new(0));
    let (up, calls) = scripted(
        vec![
            Ok((StatusCode::SERVICE_UNAVAILABLE, "application/json", body)),
            Ok((StatusCode::OK, "text/event-stream", body2)),
            Ok((StatusCode::OK, "text/event-stream", body3)),
        ],
        gate.clone(),
    );
    let svc = CacheLayer::new().layer(up);
    tx.send(Ok(Bytes::from_static(br#"{"error":{"message":"busy"}}"#)))
        .unwrap();
    drop(tx);

    let leader = tokio::spawn(svc.clone().oneshot(request(false)));
    settle().await;
    let follower = tokio::spawn(svc.clone().oneshot(request(false)));
    settle().await;
    gate.add_permits(1);
    for r in [
        leader.await.unwrap().unwrap(),
        follower.await.unwrap().unwrap(),
    ] {
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let b = r.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&b).contains("busy"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A stream that breaks: the follower sees the same break, nothing is stored.
    gate.add_permits(2);
    let mut leader = svc.clone().oneshot(request(true)).await.unwrap();
    let mut follower = svc.clone().oneshot(request(true)).await.unwrap();
    tx2.send(Ok(chunk(json!({"content":"par"}), None))).unwrap();
    tx2.send(Err(std::io::Error::other("reset"))).unwrap();
    assert!(next_data(leader.body_mut()).await.is_some());
    assert!(leader.body_mut().frame().await.unwrap().is_err());
    assert!(next_data(follower.body_mut()).await.is_some());
    let err = follower.body_mut().frame().await.unwrap().unwrap_err();
    assert!(
        err.downcast_ref::<tower_deepseek_core::error::IncompleteResponse>()
            .is_some()
    );
    tx3.send(Ok(chunk(json!({"content":"x"}), Some("stop"))))
        .unwrap();
    drop(tx3);
    let third = svc.clone().oneshot(request(true)).await.unwrap();
    assert_eq!(
        third.headers()["x-cache"],
        "miss",
        "the broken stream was not stored"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn when_every_caller_leaves_the_upstream_is_cancelled_and_nothing_stored() {
    let (tx, body) = channel();
    let (tx2, body2) = channel();
    let gate = Arc::new(Semaphore::new(2));
    let (up, calls) = scripted(
        vec![
            Ok((StatusCode::OK, "text/event-stream", body)),
            Ok((StatusCode::OK, "text/event-stream", body2)),
        ],
        gate,
    );
    let svc = CacheLayer::new().layer(up);
    let mut leader = svc.clone().oneshot(request(true)).await.unwrap();
    tx.send(Ok(chunk(json!({"content":"a"}), None))).unwrap();
    assert!(next_data(leader.body_mut()).await.is_some());
    drop(leader);
    settle().await;
    assert!(tx.is_closed(), "the upstream body was dropped");
    drop(tx2);
    let again = svc.clone().oneshot(request(true)).await.unwrap();
    assert_eq!(again.headers()["x-cache"], "miss");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn l1_is_bounded_by_bytes() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = CacheLayer::builder()
        .l1_max_bytes(16 * 1024)
        .build()
        .unwrap()
        .layer(service_fn(move |r: Request<BufferedBody>| {
            c.fetch_add(1, Ordering::SeqCst);
            let v: Value = serde_json::from_slice(r.body().bytes()).unwrap();
            let text = v["messages"][0]["content"].as_str().unwrap().repeat(40);
            async move { Ok::<_, Infallible>(Response::new(BufferedBody::new(json_answer(&text)))) }
        }));
    let ask = |i: usize| {
        let body = json!({"model":"m","temperature":0,"messages":[{"role":"user","content":format!("question number {i:04}")}]});
        Request::post("/chat/completions")
            .body(BufferedBody::from(body.to_string()))
            .unwrap()
    };
    // 40 answers of ~3 KB (stored and rendered) cannot all fit in 16 KiB.
    for i in 0..40 {
        let r = svc.clone().oneshot(ask(i)).await.unwrap();
        r.into_body().collect().await.unwrap();
    }
    let mut hits = 0;
    for i in 0..40 {
        let r = svc.clone().oneshot(ask(i)).await.unwrap();
        if r.headers()["x-cache"] == "hit-l1" {
            hits += 1;
        }
        r.into_body().collect().await.unwrap();
    }
    assert!(hits < 10, "{hits} entries of ~3 KB fit in 16 KiB?");
    assert!(calls.load(Ordering::SeqCst) > 40 + 30);
}

/// A layer below that classifies the answer (the breaker, when audit asks for call facts)
/// shares its verdict (core's `SharedOutcome`): the cache stores or skips by it instead of
/// parsing the body again. The body is a valid answer either way; only the verdict differs.
#[tokio::test(start_paused = true)]
async fn a_verdict_shared_from_below_decides_what_is_stored() {
    use tower_deepseek_core::classify::{FailureClass, FrameTrace, ResponseSummary, SharedOutcome};

    for (verdict, stored) in [(Ok(()), true), (Err(FailureClass::InBandError), false)] {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let svc = CacheLayer::new().layer(service_fn(move |_r: Request<BufferedBody>| {
            c.fetch_add(1, Ordering::SeqCst);
            let verdict = verdict.clone();
            async move {
                let answer = json_answer("x");
                // The verdict is about the very frame the cache will see.
                let mut frames = FrameTrace::new();
                frames.record(&answer);
                let mut res = Response::new(BufferedBody::new(answer));
                let slot = SharedOutcome::new();
                // Filled before the end reaches the cache, as the breaker does.
                slot.publish(verdict, ResponseSummary::default(), frames);
                res.extensions_mut().insert(slot);
                Ok::<_, Infallible>(res)
            }
        }));
        for _ in 0..2 {
            let r = svc.clone().oneshot(request(false)).await.unwrap();
            r.into_body().collect().await.unwrap();
        }
        let expected = if stored { 1 } else { 2 };
        assert_eq!(calls.load(Ordering::SeqCst), expected, "stored: {stored}");
    }
}

/// A miss whose answer is already whole when its head arrives is judged and stored in the
/// caller's own task, with a plain insert: no task is spawned for it. A body still on its way
/// gets its task (the streaming tests above), so that no caller's pace stalls another.
#[tokio::test(flavor = "current_thread")]
async fn a_whole_answer_is_stored_without_spawning_a_task() {
    let svc = CacheLayer::new().layer(service_fn(|_r: Request<BufferedBody>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .header("content-type", "application/json")
                .body(BufferedBody::new(json_answer("whole")))
                .unwrap(),
        )
    }));
    let metrics = tokio::runtime::Handle::current().metrics();
    let r = svc.clone().oneshot(request(false)).await.unwrap();
    assert_eq!(r.headers()["x-cache"], "miss");
    // Stored before a byte of the body was read, and no task alive to read it.
    assert_eq!(metrics.num_alive_tasks(), 0);
    let hit = svc.oneshot(request(false)).await.unwrap();
    assert_eq!(hit.headers()["x-cache"], "hit-l1");
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, json_answer("whole"));
    let replayed: Value =
        serde_json::from_slice(&hit.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(replayed["choices"][0]["message"]["content"], "whole");
}

/// A JSON answer is judged on the miss and read into the stored form at its first use: one the
/// end check passes but that has a choice without `finish_reason` is never replayed, the
/// next identical request goes upstream (before issue 17 it was refused on the miss; now it
/// is removed at its first look-up), and a good answer is served from L1 as it was stored.
#[tokio::test(start_paused = true)]
async fn an_answer_that_does_not_read_into_the_stored_form_is_never_replayed() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = CacheLayer::new().layer(service_fn(move |_r: Request<BufferedBody>| {
        c.fetch_add(1, Ordering::SeqCst);
        // The last choice ends, so the end check's verdict is a success; the first never does.
        let answer = json!({"id":"c1","object":"chat.completion","created":1,"model":"m",
            "choices":[
                {"index":0,"message":{"role":"assistant","content":"a"},"finish_reason":null},
                {"index":1,"message":{"role":"assistant","content":"b"},"finish_reason":"stop"}]});
        async move { Ok::<_, Infallible>(Response::new(BufferedBody::from(answer.to_string()))) }
    }));
    for n in 1..=3 {
        let r = svc.clone().oneshot(request(false)).await.unwrap();
        assert_eq!(r.headers()["x-cache"], "miss");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            v["choices"][0]["finish_reason"].is_null(),
            "passed through as sent"
        );
        assert_eq!(calls.load(Ordering::SeqCst), n);
    }

    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = CacheLayer::new().layer(service_fn(move |_r: Request<BufferedBody>| {
        c.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, Infallible>(Response::new(BufferedBody::new(json_answer("x")))) }
    }));
    let first = svc.clone().oneshot(request(false)).await.unwrap();
    first.into_body().collect().await.unwrap();
    let hit = svc.clone().oneshot(request(false)).await.unwrap();
    assert_eq!(hit.headers()["x-cache"], "hit-l1");
    let v: Value =
        serde_json::from_slice(&hit.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "x");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
