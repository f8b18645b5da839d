//! RedactLayer through `service_fn`: JSON-aware masking, modes, policies, restore.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt, service_fn};
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::BufferedBody;
use tower_deepseek_core::error::BodyTooLarge;
use tower_deepseek_core::meta::TenantId;
use tower_deepseek_redact::{
    EntityType, InvalidJsonBody, InvalidJsonReason, Mode, NonJsonPolicy, PiiBlocked, PiiCounts,
    RedactLayer, Redactor, UnparseablePolicy,
};
use tower_layer::Layer;

type Seen = std::sync::Arc<std::sync::Mutex<Vec<Bytes>>>;

/// An upstream that records what it saw and answers with the body as JSON.
fn echo(
    seen: Seen,
) -> impl Service<Request<BufferedBody>, Response = Response<Full<Bytes>>, Error = BoxError> + Clone
{
    service_fn(move |req: Request<BufferedBody>| {
        let seen = seen.clone();
        async move {
            let b = req.into_body().into_bytes();
            seen.lock().unwrap().push(b.clone());
            Ok::<_, BoxError>(
                Response::builder()
                    .header("content-type", "application/json")
                    .header("content-length", b.len())
                    .body(Full::new(b))
                    .unwrap(),
            )
        }
    })
}

fn post(body: &str) -> Request<Full<Bytes>> {
    Request::post("/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

async fn run(layer: RedactLayer, req: Request<Full<Bytes>>) -> (Result<Bytes, BoxError>, Seen) {
    let seen = Seen::default();
    let mut svc = layer.layer(echo(seen.clone()));
    let res = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc)
        .await
        .unwrap()
        .call(req)
        .await;
    let out = match res {
        Ok(r) => Ok(r.into_body().collect().await.unwrap().to_bytes()),
        Err(e) => Err(e),
    };
    (out, seen)
}

#[tokio::test]
async fn only_values_with_pii_change_and_everything_else_is_byte_identical() {
    let body = r#"{ "model" : "deepseek-chat","messages":[
  {"role":"system","content":"sys 13800138000"},
  {"role":"assistant","content":"ok","reasoning_content":"he said 13800138000 \u003c","tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"phone\":\"13800138000\"}"}}]},
  {"role":"user","content":[{"type":"text","text":"我的手机13800138000"},{"type":"image_url","image_url":{"url":"http://x/13800138000"}}]}],
 "user_id":"u13800138000", "temperature": 1.0e0 }"#;
    let (out, seen) = run(RedactLayer::new(), post(body)).await;
    let sent = String::from_utf8(seen.lock().unwrap()[0].to_vec()).unwrap();
    let expected = body
        .replacen("sys 13800138000", "sys <CN_MOBILE_1>", 1)
        .replacen(
            r#"he said 13800138000 \u003c"#,
            "he said <CN_MOBILE_1> <",
            1,
        )
        .replacen(
            r#"{\"phone\":\"13800138000\"}"#,
            r#"{\"phone\":\"<CN_MOBILE_1>\"}"#,
            1,
        )
        .replacen("我的手机13800138000", "我的手机<CN_MOBILE_1>", 1)
        .replacen("http://x/13800138000", "http://x/<CN_MOBILE_1>", 1);
    // `u13800138000` is one run of letters and digits: no mobile number.
    assert_eq!(sent, expected);
    // The answer (here, the echo) has the values back; the re-escaped `\u003c` is `<` now.
    assert_eq!(
        out.unwrap(),
        Bytes::from(body.replacen(r#"\u003c"#, "<", 1))
    );
}

#[tokio::test]
async fn body_without_pii_is_forwarded_as_the_same_bytes() {
    let body = r#"{"model":"m","messages":[{"role":"user","content":"你好，今天2024年6月15日"}]}"#;
    let (out, seen) = run(RedactLayer::new(), post(body)).await;
    assert_eq!(seen.lock().unwrap()[0], Bytes::from(body));
    assert_eq!(out.unwrap(), Bytes::from(body));
}

#[tokio::test]
async fn escaped_strings_are_unescaped_redacted_and_reescaped() {
    let body = r#"{"messages":[{"role":"user","content":"line1\n\"13800138000\"\t\u4f60"}]}"#;
    let (_, seen) = run(RedactLayer::new(), post(body)).await;
    let v: serde_json::Value = serde_json::from_slice(&seen.lock().unwrap()[0]).unwrap();
    assert_eq!(v["messages"][0]["content"], "line1\n\"<CN_MOBILE_1>\"\t你");
}

#[tokio::test]
async fn same_value_same_placeholder_numbered_per_type() {
    let body =
        r#"{"messages":[{"role":"user","content":"13800138000 13900139000 13800138000 a@b.com"}]}"#;
    let (_, seen) = run(RedactLayer::new(), post(body)).await;
    let v: serde_json::Value = serde_json::from_slice(&seen.lock().unwrap()[0]).unwrap();
    assert_eq!(
        v["messages"][0]["content"],
        "<CN_MOBILE_1> <CN_MOBILE_2> <CN_MOBILE_1> <EMAIL_1>"
    );
}

#[tokio::test]
async fn modes() {
    let body = r#"{"messages":[{"role":"user","content":"13800138000 a.b@example.com 123-45-6789 sk-4f8e2a9c1b3d5e7f9a0b2c4d6e8f0a1b"}]}"#;
    let cases = [
        (Mode::Mask, "*** *** *** [API_KEY]"),
        (Mode::Label, "[CN_MOBILE] [EMAIL] [US_SSN] [API_KEY]"),
        (
            Mode::Partial,
            "138****8000 a***@example.com ***-**-6789 [API_KEY]",
        ),
    ];
    for (mode, expected) in cases {
        let layer =
            RedactLayer::with_redactor(Redactor::builder().default_mode(mode).build().unwrap());
        let (out, seen) = run(layer, post(body)).await;
        let v: serde_json::Value = serde_json::from_slice(&seen.lock().unwrap()[0]).unwrap();
        assert_eq!(v["messages"][0]["content"], expected, "{mode:?}");
        // Irreversible modes are not restored.
        assert!(!String::from_utf8_lossy(&out.unwrap()).contains("13800138000"));
    }
}

#[tokio::test]
async fn hash_is_stable_per_tenant_and_differs_across_tenants() {
    let layer = RedactLayer::with_redactor(
        Redactor::builder()
            .default_mode(Mode::Hash)
            .hash_key(b"0123456789abcdef-secret".to_vec())
            .build()
            .unwrap(),
    );
    let body = r#"{"messages":[{"role":"user","content":"13800138000"}]}"#;
    let mut got = Vec::new();
    for tenant in ["a", "a", "b"] {
        let mut req = post(body);
        req.extensions_mut().insert(TenantId::new(tenant));
        let (_, seen) = run(layer.clone(), req).await;
        let v: serde_json::Value = serde_json::from_slice(&seen.lock().unwrap()[0]).unwrap();
        got.push(v["messages"][0]["content"].as_str().unwrap().to_owned());
    }
    assert!(got[0].starts_with("[CN_MOBILE:h") && got[0].len() == "[CN_MOBILE:h]".len() + 16);
    assert_eq!(got[0], got[1]);
    assert_ne!(got[0], got[2]);
    assert!(
        Redactor::builder()
            .default_mode(Mode::Hash)
            .build()
            .is_err()
    );
}

#[tokio::test]
async fn block_refuses_with_the_type_never_the_value() {
    let layer = RedactLayer::with_redactor(
        Redactor::builder()
            .mode(EntityType::CN_ID_CARD, Mode::Block)
            .build()
            .unwrap(),
    );
    let body = r#"{"messages":[{"role":"user","content":"13800138000 身份证11010519491231002X"}]}"#;
    let (out, seen) = run(layer, post(body)).await;
    let err = out.unwrap_err();
    let blocked = err.downcast_ref::<PiiBlocked>().expect("PiiBlocked");
    assert_eq!(blocked.entity, EntityType::CN_ID_CARD);
    let msg = err.to_string();
    assert!(
        msg.contains("CN_ID_CARD") && !msg.contains("11010519491231002X"),
        "{msg}"
    );
    assert!(!format!("{err:?}").contains("11010519491231002X"));
    assert!(seen.lock().unwrap().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn oversized_body_is_a_typed_error() {
    let body = format!(r#"{{"messages":[{{"content":"{}"}}]}}"#, "x".repeat(2000));
    let (out, seen) = run(RedactLayer::new().body_limit(1000), post(&body)).await;
    assert!(out.unwrap_err().is::<BodyTooLarge>());
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn extra_paths_and_counts_in_extensions() {
    // `model` is structural: only an extra path has it scanned.
    let layer = RedactLayer::new().extra_path("model").unwrap();
    assert_eq!(
        RedactLayer::new().extra_path("a..b").unwrap_err().field(),
        "extra_paths"
    );
    let body = r#"{"model":"a@b.com","metadata":{"other":"c@d.com"},"messages":[{"role":"user","content":"13800138000 13900139000"}]}"#;
    let seen = Seen::default();
    let inner = echo(seen.clone());
    let counts_below = std::sync::Arc::new(std::sync::Mutex::new(None));
    let cb = counts_below.clone();
    let inner = service_fn(move |req: Request<BufferedBody>| {
        *cb.lock().unwrap() = req.extensions().get::<PiiCounts>().cloned();
        inner.clone().oneshot(req)
    });
    let res = layer.layer(inner).oneshot(post(body)).await.unwrap();
    // One route: the counts are for the layers below, not copied onto the response.
    assert!(res.extensions().get::<PiiCounts>().is_none());
    let counts = counts_below.lock().unwrap().clone().unwrap();
    assert_eq!(counts.get(&EntityType::CN_MOBILE), 2);
    assert_eq!(counts.get(&EntityType::EMAIL), 2);
    assert_eq!(counts.total(), 4);
    let sent = String::from_utf8(seen.lock().unwrap()[0].to_vec()).unwrap();
    assert!(
        sent.contains(r#""model":"<EMAIL_1>""#) && sent.contains(r#""other":"<EMAIL_2>""#),
        "{sent}"
    );
}

#[tokio::test]
async fn content_length_is_kept_right() {
    let body = r#"{"messages":[{"role":"user","content":"13800138000"}]}"#;
    let mut req = post(body);
    req.headers_mut()
        .insert("content-length", body.len().into());
    let seen = Seen::default();
    let s2 = seen.clone();
    let inner = service_fn(move |req: Request<BufferedBody>| {
        let s2 = s2.clone();
        async move {
            let cl: usize = req.headers()["content-length"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(cl, req.body().bytes().len());
            echo(s2).oneshot(req).await
        }
    });
    let res = RedactLayer::new().layer(inner).oneshot(req).await.unwrap();
    assert!(
        res.headers().get("content-length").is_none(),
        "length changes on restore"
    );
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        Bytes::from(body)
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn from_serde_config() {
    let cfg: tower_deepseek_redact::RedactConfig = serde_json::from_value(serde_json::json!({
        "default_mode": "label",
        "modes": {"CN_ID_CARD": "block", "email": "partial"},
        "disabled": ["IPV4"],
        "custom": [{"name": "EMPLOYEE_ID", "pattern": "EMP-[0-9]{6}"}],
        "extra_paths": ["metadata.note"],
        "body_limit": 4096,
        "unparseable": "reject",
        "non_json": "reject"
    }))
    .unwrap();
    let layer = RedactLayer::from_config(cfg, None).unwrap();
    let body = r#"{"metadata":{"note":"EMP-123456"},"messages":[{"role":"user","content":"13800138000 10.0.0.1 ab@example.com"}]}"#;
    let (_, seen) = run(layer.clone(), post(body)).await;
    let v: serde_json::Value = serde_json::from_slice(&seen.lock().unwrap()[0]).unwrap();
    assert_eq!(
        v["messages"][0]["content"],
        "[CN_MOBILE] 10.0.0.1 a***@example.com"
    );
    assert_eq!(v["metadata"]["note"], "[EMPLOYEE_ID]");
    let (out, _) = run(
        layer.clone(),
        post(r#"{"messages":[{"content":"11010519491231002X"}]}"#),
    )
    .await;
    assert!(out.unwrap_err().is::<PiiBlocked>());
    let (out, _) = run(layer, post("nope")).await;
    assert!(out.unwrap_err().is::<InvalidJsonBody>());
    // Hash mode without a key is a config error.
    let cfg: tower_deepseek_redact::RedactConfig =
        serde_json::from_value(serde_json::json!({"default_mode": "hash"})).unwrap();
    assert_eq!(
        RedactLayer::from_config(cfg.clone(), None)
            .unwrap_err()
            .field(),
        "hash_key"
    );
    assert!(RedactLayer::from_config(cfg, Some(b"0123456789abcdef".to_vec())).is_ok());
}

#[tokio::test]
async fn escaped_placeholders_in_a_stream_are_restored() {
    // Some servers escape `<` and `>` in JSON (`\u003c`).
    let svc = RedactLayer::new().layer(service_fn(|_req: Request<BufferedBody>| async {
        let wire = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x \\u003cCN_MOBILE_1\\u003e y\"}}]}\n\ndata: [DONE]\n\n";
        Ok::<_, BoxError>(
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Full::new(Bytes::from(wire)))
                .unwrap(),
        )
    }));
    let res = svc
        .oneshot(post(
            r#"{"messages":[{"role":"user","content":"13800138000"}]}"#,
        ))
        .await
        .unwrap();
    let body =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(body.contains("x 13800138000 y"), "{body}");
}

// ------------------------------------------------------------ every field, every refusal

mod routes;
use routes::*;

fn with(content_type: Option<&str>, path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    let mut b = Request::post(path);
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    b.body(Full::new(body.into())).unwrap()
}

#[tokio::test]
async fn every_field_that_carries_text_is_masked_and_restored() {
    for (what, body) in field_cases() {
        let text = body.to_string();
        let path = if body.get("prompt").is_some() {
            "/beta/completions"
        } else {
            "/chat/completions"
        };
        let (out, seen) = run(
            RedactLayer::new(),
            with(Some("application/json"), path, text.clone()),
        )
        .await;
        let sent = seen.lock().unwrap()[0].clone();
        assert_no_raw_value(what, &sent);
        let sent: serde_json::Value = serde_json::from_slice(&sent).expect("still JSON");
        // Structural fields are byte-identical.
        assert_eq!(sent["model"], body["model"], "{what}");
        // The echo comes back with the values restored (a masked number comes back as a string).
        let back: serde_json::Value = serde_json::from_slice(&out.unwrap()).unwrap();
        if what.starts_with("a number") {
            assert_eq!(back["metadata"]["phone"], PHONE, "{what}");
        } else {
            assert_eq!(back, body, "{what}");
        }
    }
}

#[tokio::test]
async fn structural_fields_stay_byte_identical() {
    // Identifiers with digit runs that look like phone numbers, names, enums, parameters.
    let body = r#"{"model":"m-13800138000","temperature":0.7,"seed":13800138000,"logit_bias":{"13800138000":1},
"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/a.png","detail":"high"}}]},
{"role":"assistant","content":null,"tool_calls":[{"id":"call_13800138000","type":"function","function":{"name":"get_13800138000","arguments":"{}"}}]},
{"role":"tool","tool_call_id":"call_13800138000","content":"done"}],
"tools":[{"type":"function","function":{"name":"get_13800138000","parameters":{"type":"object"}}}],
"tool_choice":{"type":"function","function":{"name":"get_13800138000"}},
"response_format":{"type":"json_schema","json_schema":{"name":"n_13800138000","schema":{}}},"thinking":{"type":"enabled"}}"#;
    let (out, seen) = run(RedactLayer::new(), post(body)).await;
    assert_eq!(
        seen.lock().unwrap()[0],
        Bytes::from(body),
        "nothing changed"
    );
    assert_eq!(out.unwrap(), Bytes::from(body));
    // An extra path puts one of them back to scanning.
    let layer = RedactLayer::new().extra_path("model").unwrap();
    let (_, seen) = run(layer, post(body)).await;
    let v: serde_json::Value = serde_json::from_slice(&seen.lock().unwrap()[0]).unwrap();
    assert_eq!(v["model"], "m-<CN_MOBILE_1>");
    assert_eq!(v["tools"][0]["function"]["name"], "get_13800138000");
}

#[tokio::test]
async fn urls_are_decoded_then_masked_and_binary_data_urls_pass() {
    let url_body = |url: &str| {
        serde_json::json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}).to_string()
    };
    let sent_url = |seen: &Seen| {
        let v: serde_json::Value = serde_json::from_slice(&seen.lock().unwrap()[0]).unwrap();
        v["messages"][0]["content"][0]["image_url"]["url"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // Percent-encoded and `+`-spaced values are found.
    for (url, expected) in [
        (
            "https://img.example/a.png?email=zhang.san%40example.com&x=1",
            "https://img.example/a.png?email=<EMAIL_1>&x=1",
        ),
        (
            "https://img.example/a.png?phone=138%2D0013%2D8000",
            "https://img.example/a.png?phone=<CN_MOBILE_1>",
        ),
        (
            "https://img.example/a.png?phone=138+0013+8000",
            "https://img.example/a.png?phone=<CN_MOBILE_1>",
        ),
        (
            "https://img.example/u%2F13800138000/a.png",
            "https://img.example/u/<CN_MOBILE_1>/a.png",
        ),
        (
            "data:text/plain,call%2013800138000",
            "data:text/plain,call <CN_MOBILE_1>",
        ),
    ] {
        let (out, seen) = run(RedactLayer::new(), post(&url_body(url))).await;
        assert_eq!(sent_url(&seen), expected, "{url}");
        // The placeholder is restored in the answer (to the decoded value).
        let back: serde_json::Value = serde_json::from_slice(&out.unwrap()).unwrap();
        assert!(!back.to_string().contains('<'), "{back}");
    }
    // Without an entity, a URL (percent-encoding, `+` and signature included) is byte-identical.
    for url in [
        "https://img.example/a%20b.png?sig=abc%2Bdef+ghi&exp=1700000000",
        "data:image/png;base64,iVBORw0KGgo13800138000AAAA/13800138000+Zm9v",
        "DATA:image/jpeg;BASE64,/9j/4AAQSkZJRgABAQ==",
    ] {
        let body = url_body(url);
        let (_, seen) = run(RedactLayer::new(), post(&body)).await;
        assert_eq!(seen.lock().unwrap()[0], Bytes::from(body), "{url}");
    }
    // A blocked type in a URL refuses the request.
    let layer = RedactLayer::with_redactor(
        Redactor::builder()
            .mode(EntityType::EMAIL, Mode::Block)
            .build()
            .unwrap(),
    );
    let (out, seen) = run(
        layer,
        post(&url_body("https://x/a.png?m=zhang.san%40example.com")),
    )
    .await;
    assert!(out.unwrap_err().is::<PiiBlocked>());
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn chat_and_fim_bodies_that_cannot_be_parsed_are_refused_whatever_their_label() {
    for path in [
        "/chat/completions",
        "/v1/chat/completions",
        "/beta/completions",
        "https://api.deepseek.com/v1/completions/",
    ] {
        for ct in [
            Some("application/json"),
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            None,
        ] {
            for (what, body, reason) in unparseable_bodies() {
                let (out, seen) = run(RedactLayer::new(), with(ct, path, body)).await;
                let err = out.expect_err(what);
                let e = err
                    .downcast_ref::<InvalidJsonBody>()
                    .unwrap_or_else(|| panic!("{what}: {err}"));
                assert_eq!(e.reason().as_str(), reason, "{what} {path} {ct:?}");
                assert_no_raw_value(what, err.to_string().as_bytes());
                assert!(
                    seen.lock().unwrap().is_empty(),
                    "{what}: nothing reaches the inner service"
                );
            }
        }
    }
}

#[tokio::test]
async fn depth_256_is_masked_and_257_refused() {
    let body = |arrays: usize| {
        format!(
            r#"{{"messages":[{{"role":"user","content":"call {PHONE}"}}],"metadata":{}"{PHONE}"{}}}"#,
            "[".repeat(arrays),
            "]".repeat(arrays)
        )
    };
    // The document plus 255 nested arrays: 256 levels, within the limit; 200 as in the issue.
    for arrays in [199, 255] {
        let (out, seen) = run(RedactLayer::new(), post(&body(arrays))).await;
        assert_no_raw_value("deep but within the limit", &seen.lock().unwrap()[0]);
        assert_eq!(out.unwrap(), Bytes::from(body(arrays)));
    }
    let (out, seen) = run(RedactLayer::new(), post(&body(256))).await;
    let err = out.unwrap_err();
    let e = err.downcast_ref::<InvalidJsonBody>().unwrap();
    assert_eq!(e.reason(), InvalidJsonReason::TooDeep);
    assert!(err.to_string().contains("256 levels"), "{err}");
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn chat_and_fim_bodies_are_masked_whatever_their_label() {
    let body =
        format!(r#"{{"model":"m","messages":[{{"role":"user","content":"call {PHONE}"}}]}}"#);
    for path in [
        "/chat/completions",
        "/beta/completions",
        "/CHAT/Completions",
        "/chat%2Fcompletions",
    ] {
        for ct in [
            Some("application/json"),
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/octet-stream"),
            None,
        ] {
            let (out, seen) = run(RedactLayer::new(), with(ct, path, body.clone())).await;
            assert_no_raw_value("labelled", &seen.lock().unwrap()[0]);
            assert_eq!(out.unwrap(), Bytes::from(body.clone()), "{path} {ct:?}");
        }
    }
}

#[tokio::test]
async fn passing_unparseable_chat_bodies_is_an_explicit_opt_in() {
    let layer = RedactLayer::new().unparseable(UnparseablePolicy::PassThroughUnsafe);
    for (what, body, _) in unparseable_bodies() {
        let (out, seen) = run(
            layer.clone(),
            with(Some("text/plain"), "/chat/completions", body.clone()),
        )
        .await;
        assert_eq!(seen.lock().unwrap()[0], body, "{what}: passed raw");
        assert_eq!(out.unwrap(), body);
    }
    // Parseable bodies are still masked, and the size limit still refuses.
    let (_, seen) = run(
        layer.clone(),
        with(
            None,
            "/chat/completions",
            format!(r#"{{"content":"{PHONE}"}}"#),
        ),
    )
    .await;
    assert_no_raw_value("opt-in, parseable", &seen.lock().unwrap()[0]);
    let (out, _) = run(layer.body_limit(10), post(&"x".repeat(11))).await;
    assert!(out.unwrap_err().is::<BodyTooLarge>());
    // The same from a config; the default config refuses.
    let cfg: tower_deepseek_redact::RedactConfig =
        serde_json::from_value(serde_json::json!({"unparseable": "pass_through_unsafe"})).unwrap();
    let (out, _) = run(RedactLayer::from_config(cfg, None).unwrap(), post("nope")).await;
    assert_eq!(out.unwrap(), Bytes::from("nope"));
    let cfg = tower_deepseek_redact::RedactConfig::default();
    let (out, _) = run(RedactLayer::from_config(cfg, None).unwrap(), post("nope")).await;
    assert!(out.unwrap_err().is::<InvalidJsonBody>());
    // `pass_through` is no value of `unparseable`: the opt-in says it is unsafe.
    assert!(
        serde_json::from_value::<tower_deepseek_redact::RedactConfig>(
            serde_json::json!({"unparseable": "pass_through"})
        )
        .is_err()
    );
}

#[tokio::test]
async fn other_endpoints_follow_the_non_json_policy() {
    let json = format!(r#"{{"input":"call {PHONE}"}}"#);
    // A JSON body is masked with the same rules.
    let (_, seen) = run(
        RedactLayer::new(),
        with(Some("application/json"), "/embeddings", json.clone()),
    )
    .await;
    assert_eq!(
        seen.lock().unwrap()[0],
        Bytes::from(r#"{"input":"call <CN_MOBILE_1>"}"#)
    );
    // By default, other labels and bodies that cannot be parsed pass untouched.
    for (ct, body) in [
        (Some("text/plain"), format!("call {PHONE}")),
        (Some("multipart/form-data; boundary=x"), json.clone()),
        (Some("application/json"), format!("call {PHONE}")),
        (None, format!("call {PHONE}")),
    ] {
        let (out, seen) = run(RedactLayer::new(), with(ct, "/upload", body.clone())).await;
        assert_eq!(seen.lock().unwrap()[0], Bytes::from(body.clone()), "{ct:?}");
        assert_eq!(out.unwrap(), Bytes::from(body));
    }
    // `Reject`: every endpoint is handled like chat, whatever the label.
    let strict = RedactLayer::new().non_json(NonJsonPolicy::Reject);
    let (_, seen) = run(
        strict.clone(),
        with(Some("text/plain"), "/upload", json.clone()),
    )
    .await;
    assert_no_raw_value("reject, valid JSON labelled text", &seen.lock().unwrap()[0]);
    for (what, body, reason) in unparseable_bodies() {
        let (out, seen) = run(strict.clone(), with(Some("text/plain"), "/upload", body)).await;
        assert_eq!(
            out.unwrap_err()
                .downcast_ref::<InvalidJsonBody>()
                .unwrap()
                .reason()
                .as_str(),
            reason,
            "{what}"
        );
        assert!(seen.lock().unwrap().is_empty());
    }
    // An empty body (a GET) always passes.
    let req = Request::get("/models")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (out, _) = run(strict, req).await;
    assert!(out.unwrap().is_empty());
}
