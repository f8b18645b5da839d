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
    EntityType, InvalidJsonBody, Mode, NonJsonPolicy, PiiBlocked, PiiCounts, RedactLayer, Redactor,
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
async fn only_user_text_changes_and_everything_else_is_byte_identical() {
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
            r#"{\"phone\":\"13800138000\"}"#,
            r#"{\"phone\":\"<CN_MOBILE_1>\"}"#,
            1,
        )
        .replacen("我的手机13800138000", "我的手机<CN_MOBILE_1>", 1);
    assert_eq!(sent, expected);
    // The answer (here, the echo) has the value back.
    assert_eq!(out.unwrap(), Bytes::from(body.to_owned()));
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
async fn non_json_policy() {
    for body in [
        "not json 13800138000",
        "{\"messages\":[{\"content\":\"13800138000\"}",
        "{\"a\":1} trailing",
    ] {
        let (out, seen) = run(RedactLayer::new(), post(body)).await;
        assert_eq!(out.unwrap(), Bytes::from(body.to_owned()));
        assert_eq!(
            seen.lock().unwrap()[0],
            Bytes::from(body.to_owned()),
            "passed untouched"
        );
        let (out, seen) = run(
            RedactLayer::new().non_json(NonJsonPolicy::Reject),
            post(body),
        )
        .await;
        let err = out.unwrap_err();
        assert!(err.is::<InvalidJsonBody>(), "{err}");
        assert!(!err.to_string().contains("13800138000"));
        assert!(seen.lock().unwrap().is_empty());
    }
    // A non-JSON content type follows the policy too.
    let req = Request::post("/upload")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from("13800138000")))
        .unwrap();
    let (out, _) = run(RedactLayer::new().non_json(NonJsonPolicy::Reject), req).await;
    assert!(out.unwrap_err().is::<InvalidJsonBody>());
    // An empty body (GET) always passes.
    let req = Request::get("/models")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (out, _) = run(RedactLayer::new().non_json(NonJsonPolicy::Reject), req).await;
    assert!(out.unwrap().is_empty());
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
    let layer = RedactLayer::new().extra_path("metadata.note").unwrap();
    assert!(RedactLayer::new().extra_path("a..b").is_err());
    let body = r#"{"metadata":{"note":"a@b.com","other":"c@d.com"},"messages":[{"role":"user","content":"13800138000 13900139000"}]}"#;
    let seen = Seen::default();
    let inner = echo(seen.clone());
    let counts_below = std::sync::Arc::new(std::sync::Mutex::new(None));
    let cb = counts_below.clone();
    let inner = service_fn(move |req: Request<BufferedBody>| {
        *cb.lock().unwrap() = req.extensions().get::<PiiCounts>().cloned();
        inner.clone().oneshot(req)
    });
    let res = layer.layer(inner).oneshot(post(body)).await.unwrap();
    let counts = res.extensions().get::<PiiCounts>().unwrap().clone();
    assert_eq!(counts.get(&EntityType::CN_MOBILE), 2);
    assert_eq!(counts.get(&EntityType::EMAIL), 1);
    assert_eq!(counts.total(), 3);
    assert_eq!(counts_below.lock().unwrap().as_ref(), Some(&counts));
    let sent = String::from_utf8(seen.lock().unwrap()[0].to_vec()).unwrap();
    assert!(
        sent.contains(r#""note":"<EMAIL_1>""#) && sent.contains(r#""other":"c@d.com""#),
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
        "non_json": "reject"
    }))
    .unwrap();
    let layer = RedactLayer::from_config(&cfg, None).unwrap();
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
    assert!(RedactLayer::from_config(&cfg, None).is_err());
    assert!(RedactLayer::from_config(&cfg, Some(b"0123456789abcdef".to_vec())).is_ok());
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
