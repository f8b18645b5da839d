//! Active-active upstreams over loopback with testkit servers: a dead upstream, a slow one,
//! all dead, an active probe, `/readyz` and the per-upstream metrics; JSON and streams.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tower_deepseek_gateway::{Gateway, GatewayConfig, Options};
use tower_deepseek_testkit::{Fault, Match, MockServer};

/// A loopback URL on which nothing listens (connection refused).
async fn dead_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

fn chat(stream: bool) -> Value {
    json!({"model": "deepseek-chat", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

/// Starts the gateway with `config` (no cache, so every call goes upstream).
async fn gateway(config: &str, flags: &[&str]) -> Running {
    let text = format!("[layers]\ncache = false\n[retry]\nmax_attempts = 2\n{config}");
    let cfg = GatewayConfig::from_toml(&text).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut options = Options::new()
        .listen(listener.local_addr().unwrap())
        .config(cfg)
        .api_key(UPSTREAM_KEY);
    for f in flags {
        options = options.add_upstream(*f);
    }
    Running::spawn(Gateway::new(options).unwrap(), listener)
}

async fn call(gw: &Running, stream: bool) -> (u16, String) {
    let res = send(
        &client(),
        chat_request(&gw.url("/v1/chat/completions"), None, chat(stream)),
    )
    .await;
    let status = res.status().as_u16();
    (status, body_string(res).await)
}

async fn readyz(gw: &Running) -> (u16, Value) {
    let res = get(&client(), &gw.url("/readyz"), None).await;
    let status = res.status().as_u16();
    (
        status,
        serde_json::from_str(&body_string(res).await).unwrap(),
    )
}

fn upstream<'a>(ready: &'a Value, name: &str) -> &'a Value {
    ready["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {ready}"))
}

async fn metrics(gw: &Running) -> String {
    body_string(get(&client(), &gw.url("/metrics"), None).await).await
}

fn complete(stream: bool, body: &str) -> bool {
    if stream {
        body.ends_with("data: [DONE]\n\n")
    } else {
        serde_json::from_str::<Value>(body).is_ok_and(|v| v["choices"].is_array())
    }
}

#[tokio::test]
async fn a_dead_upstream_costs_no_client_visible_error() {
    let live = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let dead = dead_url().await;
    let gw = gateway(
        &format!(
            "[[upstreams]]\nname = \"dead\"\nurl = \"{dead}\"\n[[upstreams]]\nname = \"live\"\nurl = \"{}\"\n",
            live.url()
        ),
        &[],
    )
    .await;
    for i in 0..10 {
        let stream = i % 2 == 1;
        let (status, body) = call(&gw, stream).await;
        assert_eq!(status, 200, "call {i}: {body}");
        assert!(complete(stream, &body), "call {i}: {body}");
    }
    assert_eq!(live.chat_count(), 10);
    let (status, ready) = readyz(&gw).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["status"], "ready");
    let d = upstream(&ready, "dead");
    assert_eq!(
        (d["state"].as_str(), d["weight"].as_u64()),
        (Some("out"), Some(0)),
        "{ready}"
    );
    assert_eq!(d["breaker"], "open");
    let l = upstream(&ready, "live");
    assert_eq!(
        (l["state"].as_str(), l["weight"].as_u64()),
        (Some("up"), Some(1)),
        "{ready}"
    );
    let m = metrics(&gw).await;
    assert!(
        m.contains("deepseek_gateway_upstream_up{upstream=\"dead\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("deepseek_gateway_upstream_up{upstream=\"live\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("deepseek_gateway_upstream_state{upstream=\"dead\",state=\"out\"} 1"),
        "{m}"
    );
    assert!(
        m.contains(
            "deepseek_gateway_upstream_calls_total{upstream=\"dead\",outcome=\"connect_error\"} 1"
        ),
        "one attempt only, then the upstream is out: {m}"
    );
    assert!(
        m.contains("deepseek_gateway_upstream_calls_total{upstream=\"live\",outcome=\"ok\"} 10"),
        "{m}"
    );
    assert!(!m.contains(&dead), "no upstream URL in the metrics");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn all_upstreams_dead_is_a_503_at_once_with_retry_after() {
    let (a, b) = (dead_url().await, dead_url().await);
    // Repeated `--upstream`: names upstream-0 and upstream-1.
    let gw = gateway("", &[&a, &b]).await;
    for stream in [false, true] {
        let t = Instant::now();
        let res = send(
            &client(),
            chat_request(&gw.url("/v1/chat/completions"), None, chat(stream)),
        )
        .await;
        let elapsed = t.elapsed();
        assert_eq!(res.status(), 503);
        let retry_after: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=30).contains(&retry_after), "{retry_after}");
        let body: Value = serde_json::from_str(&body_string(res).await).unwrap();
        assert!(body["error"]["message"].is_string(), "{body}");
        assert_eq!(body["error"]["code"], "upstream_unavailable", "{body}");
        assert!(elapsed < Duration::from_millis(500), "{elapsed:?}");
    }
    let (status, ready) = readyz(&gw).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["status"], "unavailable");
    assert_eq!(upstream(&ready, "upstream-0")["state"], "out");
    assert_eq!(upstream(&ready, "upstream-1")["state"], "out");
    let m = metrics(&gw).await;
    assert!(m.contains("deepseek_gateway_upstreams_usable 0"), "{m}");
    gw.stop().await.unwrap();
}

/// Sends calls until `done` holds (at most `limit`), returning how many were sent.
async fn until(gw: &Running, limit: Duration, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < limit, "not within {limit:?}");
        let (status, body) = call(gw, false).await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test]
async fn a_slow_upstream_loses_its_weight_and_gets_it_back() {
    let slow = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let fast = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    // Headers after 2 s: over the 1 s threshold.
    slow.always(Match::chat(), Fault::ok().delay(Duration::from_secs(2)));
    let gw = gateway(
        &format!(
            "[health]\nlatency_threshold_ms = 1000\nlatency_probe_interval_ms = 3000\n\
             [[upstreams]]\nname = \"slow\"\nurl = \"{}\"\n[[upstreams]]\nname = \"fast\"\nurl = \"{}\"\n",
            slow.url(),
            fast.url()
        ),
        &[],
    )
    .await;
    // The first call goes to `slow` (the first of equal weights) and takes 2 s.
    let (status, _) = call(&gw, false).await;
    assert_eq!(status, 200);
    assert_eq!(slow.chat_count(), 1);
    let (_, ready) = readyz(&gw).await;
    let s = upstream(&ready, "slow");
    assert_eq!(
        (s["state"].as_str(), s["weight"].as_u64()),
        (Some("slow"), Some(0)),
        "{ready}"
    );
    assert!(s["latency_ms"].as_u64().unwrap() >= 2000, "{ready}");
    let m = metrics(&gw).await;
    assert!(
        m.contains("deepseek_gateway_upstream_weight{upstream=\"slow\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("deepseek_gateway_upstream_state{upstream=\"slow\",state=\"slow\"} 1"),
        "{m}"
    );
    // Traffic moves: the next calls (streams too) all go to `fast`, quickly.
    let t = Instant::now();
    for i in 0..6 {
        let stream = i % 2 == 0;
        let (status, body) = call(&gw, stream).await;
        assert_eq!(status, 200);
        assert!(complete(stream, &body), "{body}");
    }
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!((slow.chat_count(), fast.chat_count()), (1, 6));
    // It recovers: after the recovery interval one call goes there, is fast, and its weight
    // comes back.
    slow.clear_faults();
    until(&gw, Duration::from_secs(10), || slow.chat_count() >= 2).await;
    let (_, ready) = readyz(&gw).await;
    let s = upstream(&ready, "slow");
    assert_eq!(
        (s["state"].as_str(), s["weight"].as_u64()),
        (Some("up"), Some(1)),
        "{ready}"
    );
    let before = slow.chat_count();
    for _ in 0..4 {
        call(&gw, false).await;
    }
    assert_eq!(slow.chat_count() - before, 2, "an even split again");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn the_active_probe_ejects_and_brings_back() {
    let flaky = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let steady = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    flaky.always(Match::any(), Fault::status(503));
    let gw = gateway(
        &format!(
            "[[upstreams]]\nname = \"flaky\"\nurl = \"{}\"\n[upstreams.probe]\ninterval_ms = 100\ntimeout_ms = 1000\nunhealthy_after = 2\n\
             [[upstreams]]\nname = \"steady\"\nurl = \"{}\"\n",
            flaky.url(),
            steady.url()
        ),
        &[],
    )
    .await;
    // Probes fail: out, without a single call.
    let t = Instant::now();
    loop {
        let (_, ready) = readyz(&gw).await;
        if upstream(&ready, "flaky")["state"] == "out" {
            assert_eq!(upstream(&ready, "flaky")["breaker"], "forced_open");
            assert!(
                upstream(&ready, "flaky")["probe"]["failed"]
                    .as_u64()
                    .unwrap()
                    >= 2
            );
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{ready}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(flaky.requests_to("/models").len() >= 2);
    assert_eq!(flaky.chat_count(), 0);
    for _ in 0..4 {
        assert_eq!(call(&gw, false).await.0, 200);
    }
    assert_eq!(flaky.chat_count(), 0, "out: no calls");
    // Recovered: the next probe closes its breaker and it takes calls again.
    flaky.clear_faults();
    let t = Instant::now();
    loop {
        let (_, ready) = readyz(&gw).await;
        if upstream(&ready, "flaky")["state"] == "up" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{ready}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..4 {
        assert_eq!(call(&gw, false).await.0, 200);
    }
    assert_eq!(flaky.chat_count(), 2);
    let m = metrics(&gw).await;
    assert!(
        m.contains("deepseek_gateway_upstream_probes_total{upstream=\"flaky\",outcome=\"failed\"}"),
        "{m}"
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_5xx_or_429_moves_to_the_next_upstream_and_the_model_is_mapped() {
    let a = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let b = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = gateway(
        &format!(
            "[[upstreams]]\nname = \"a\"\nurl = \"{}\"\n[upstreams.models]\n\"deepseek-chat\" = \"ds-v3-a\"\n\
             [[upstreams]]\nname = \"b\"\nurl = \"{}\"\n",
            a.url(),
            b.url()
        ),
        &[],
    )
    .await;
    a.enqueue(Fault::status(500));
    a.enqueue(Fault::status(429));
    // Round-robin a, b, a, b: each of a's two answers fails before any byte reached the
    // caller, and b answers that call too.
    for _ in 0..4 {
        let (status, body) = call(&gw, false).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!((a.chat_count(), b.chat_count()), (2, 4));
    let sent_a = a.requests_to("/chat/completions");
    assert!(
        sent_a
            .iter()
            .all(|r| r.json().unwrap()["model"] == "ds-v3-a")
    );
    let sent_b = b.requests_to("/chat/completions");
    assert!(
        sent_b
            .iter()
            .all(|r| r.json().unwrap()["model"] == "deepseek-chat")
    );
    assert!(
        sent_a
            .iter()
            .chain(&sent_b)
            .all(|r| r.bearer() == Some(UPSTREAM_KEY))
    );
    let m = metrics(&gw).await;
    assert!(
        m.contains(
            "deepseek_gateway_upstream_calls_total{upstream=\"a\",outcome=\"server_error\"} 1"
        ),
        "{m}"
    );
    assert!(
        m.contains(
            "deepseek_gateway_upstream_calls_total{upstream=\"a\",outcome=\"rate_limited\"} 1"
        ),
        "{m}"
    );
    gw.stop().await.unwrap();
}

/// Two upstreams `a` and `b` at `a_url`, `b_url`, with `extra_a` in `a`'s table. The metrics
/// recorder is the process's: a test that asserts a counter of `a` or `b` asserts only an
/// outcome no other test gives them.
fn two_upstreams(a_url: &str, extra_a: &str, b_url: &str, extra_b: &str) -> String {
    format!(
        "[[upstreams]]\nname = \"a\"\nurl = \"{a_url}\"\n{extra_a}\n[[upstreams]]\nname = \"b\"\nurl = \"{b_url}\"\n{extra_b}\n"
    )
}

#[tokio::test]
async fn nothing_moves_after_the_first_byte_reached_the_caller() {
    let a = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let b = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let gw = gateway(&two_upstreams(&a.url(), "", &b.url(), ""), &[]).await;
    // The first call goes to `a` (the first of equal weights): its stream breaks after one
    // event, once the head and that event were on their way to the caller.
    a.enqueue(Fault::reset_mid_stream(1));
    let (status, body) = call(&gw, true).await;
    assert_eq!(status, 200);
    assert!(body.contains("stream_interrupted"), "{body}");
    assert!(!body.ends_with("data: [DONE]\n\n"), "{body}");
    assert_eq!(
        (a.chat_count(), b.chat_count()),
        (1, 0),
        "never sent again elsewhere"
    );
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn each_upstream_has_its_own_credential() {
    // `a` takes the global API key; `b` its own OAuth2 client.
    let a = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let b = MockServer::builder()
        .oauth_client("pool-client", "pool-secret-0001")
        .start()
        .await;
    let oauth = format!(
        "[upstreams.oauth2]\ntoken_url = \"{}\"\nclient_id = \"pool-client\"\nclient_secret = \"pool-secret-0001\"\n",
        b.token_url()
    );
    let gw = gateway(&two_upstreams(&a.url(), "", &b.url(), &oauth), &[]).await;
    for i in 0..4 {
        let (status, body) = call(&gw, i % 2 == 0).await;
        assert_eq!(status, 200, "call {i}: {body}");
    }
    assert_eq!((a.chat_count(), b.chat_count()), (2, 2));
    assert!(
        a.requests_to("/chat/completions")
            .iter()
            .all(|r| r.bearer() == Some(UPSTREAM_KEY))
    );
    let b_sent = b.requests_to("/chat/completions");
    assert!(
        b_sent
            .iter()
            .all(|r| r.bearer().is_some_and(|t| t != UPSTREAM_KEY)),
        "b gets its own token, never a's key"
    );
    assert_eq!(b.token_fetches(), 1, "one token for b's calls");
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn a_reload_changes_the_weights_and_nothing_else() {
    let a = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let b = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let text = |wa: u32, b_url: &str| {
        format!(
            "[layers]\ncache = false\n{}",
            two_upstreams(&a.url(), &format!("weight = {wa}"), b_url, "")
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = Gateway::new(
        Options::new()
            .listen(listener.local_addr().unwrap())
            .config(GatewayConfig::from_toml(&text(1, &b.url())).unwrap())
            .api_key(UPSTREAM_KEY),
    )
    .unwrap();
    let reloader = gateway.reloader();
    let gw = Running::spawn(gateway, listener);
    for _ in 0..4 {
        assert_eq!(call(&gw, false).await.0, 200);
    }
    assert_eq!((a.chat_count(), b.chat_count()), (2, 2));

    // `a` on standby: every call goes to `b`.
    reloader
        .reload(&GatewayConfig::from_toml(&text(0, &b.url())).unwrap())
        .unwrap();
    for _ in 0..4 {
        assert_eq!(call(&gw, false).await.0, 200);
    }
    assert_eq!((a.chat_count(), b.chat_count()), (2, 6));
    let (status, ready) = readyz(&gw).await;
    assert_eq!(status, 200);
    let s = upstream(&ready, "a");
    assert_eq!(
        (
            s["state"].as_str(),
            s["weight"].as_u64(),
            s["configured_weight"].as_u64()
        ),
        (Some("standby"), Some(0), Some(0)),
        "{ready}"
    );

    // Another URL is a restart's business: the reload fails and changes nothing.
    let err = reloader
        .reload(&GatewayConfig::from_toml(&text(3, "http://127.0.0.1:9")).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("restart"), "{err}");
    assert!(!err.contains("127.0.0.1:9"), "no URL in the error: {err}");
    for _ in 0..2 {
        assert_eq!(call(&gw, false).await.0, 200);
    }
    assert_eq!((a.chat_count(), b.chat_count()), (2, 8));
    gw.stop().await.unwrap();
}

#[tokio::test]
async fn one_plain_upstream_is_ready_and_shown() {
    let up = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    // One `--upstream`: the plain stack, its one breaker; `/readyz` lists it all the same.
    let gw = gateway("", &[&up.url()]).await;
    assert_eq!(call(&gw, false).await.0, 200);
    let (status, ready) = readyz(&gw).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["audit"], "off");
    let u = upstream(&ready, "upstream-0");
    assert_eq!(
        (u["state"].as_str(), u["breaker"].as_str()),
        (Some("up"), Some("closed")),
        "{ready}"
    );
    gw.stop().await.unwrap();
}

const BIN: &str = env!("CARGO_BIN_EXE_deepseek-gateway");

/// The binary with two upstreams from a file: `b`'s key from the variable its `api_key_env`
/// names, `a`'s from `DEEPSEEK_API_KEY`.
#[tokio::test]
async fn the_binary_takes_an_upstream_key_from_its_own_variable() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let a = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let b = MockServer::builder()
        .api_key("sk-upstream-b-0002")
        .start()
        .await;
    let dir = std::env::temp_dir().join(format!("deepseek-gateway-pool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            "[layers]\ncache = false\n{}",
            two_upstreams(
                &a.url(),
                "",
                &b.url(),
                "api_key_env = \"POOL_TEST_KEY_B\"\n[upstreams.models]\n\"deepseek-chat\" = \"b-chat\"\n"
            )
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(&file)
        .env("DEEPSEEK_API_KEY", UPSTREAM_KEY)
        .env("POOL_TEST_KEY_B", "sk-upstream-b-0002")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the gateway starts")
        .unwrap()
        .unwrap();
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap()
        .to_owned();
    for _ in 0..4 {
        let res = send(
            &client(),
            chat_request(
                &format!("http://{addr}/v1/chat/completions"),
                None,
                chat(false),
            ),
        )
        .await;
        let status = res.status();
        let body = body_string(res).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!((a.chat_count(), b.chat_count()), (2, 2));
    assert!(b.requests_to("/chat/completions").iter().all(|r| r.bearer()
        == Some("sk-upstream-b-0002")
        && r.json().unwrap()["model"] == "b-chat"));
    child.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_ejected_upstream_is_tried_again_when_its_breaker_half_opens() {
    let live = MockServer::builder().api_key(UPSTREAM_KEY).start().await;
    let dead = dead_url().await;
    let gw = gateway(
        &format!(
            "[breaker]\nwait_duration_in_open_ms = 200\n\
             [[upstreams]]\nname = \"ejected\"\nurl = \"{dead}\"\n\
             [[upstreams]]\nname = \"steady-2\"\nurl = \"{}\"\n",
            live.url()
        ),
        &[],
    )
    .await;
    assert_eq!(call(&gw, false).await.0, 200);
    let (_, ready) = readyz(&gw).await;
    assert_eq!(upstream(&ready, "ejected")["state"], "out", "{ready}");
    // Once the breaker's wait is over it half-opens: `recovering`, still ready.
    let t = Instant::now();
    let ready = loop {
        let (status, ready) = readyz(&gw).await;
        assert_eq!(status, 200, "{ready}");
        if upstream(&ready, "ejected")["state"] == "recovering" {
            break ready;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{ready}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        upstream(&ready, "ejected")["breaker"],
        "half_open",
        "{ready}"
    );
    assert_eq!(upstream(&ready, "ejected")["weight"], 1, "{ready}");
    // The trial call is refused again: out again, and the caller never sees it.
    for _ in 0..3 {
        assert_eq!(call(&gw, false).await.0, 200);
    }
    let (_, ready) = readyz(&gw).await;
    assert_eq!(upstream(&ready, "ejected")["state"], "out", "{ready}");
    let m = metrics(&gw).await;
    assert!(
        m.contains(
            "deepseek_gateway_upstream_calls_total{upstream=\"ejected\",outcome=\"connect_error\"} 2"
        ),
        "the first call and one trial: {m}"
    );
    assert!(
        m.contains("deepseek_gateway_upstream_state{upstream=\"ejected\",state=\"out\"} 1"),
        "{m}"
    );
    gw.stop().await.unwrap();
}
