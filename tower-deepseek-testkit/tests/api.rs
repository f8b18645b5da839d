//! The DeepSeek-compatible endpoints, auth, the token endpoint and recording.

mod common;

use std::time::Duration;

use base64::Engine as _;
use http::{Method, StatusCode, header};
use serde_json::{Value, json};
use tower_deepseek_testkit::{MockServer, TOKEN_PATH};

use common::*;

fn assert_usage_consistent(usage: &Value) {
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    let completion = usage["completion_tokens"].as_u64().unwrap();
    let hit = usage["prompt_cache_hit_tokens"].as_u64().unwrap();
    let miss = usage["prompt_cache_miss_tokens"].as_u64().unwrap();
    assert!(prompt >= 1);
    assert_eq!(hit + miss, prompt, "{usage}");
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), prompt + completion);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], hit);
    assert!(usage["completion_tokens_details"]["reasoning_tokens"].is_u64());
}

#[tokio::test]
async fn chat_json_answer() {
    let server = MockServer::start().await;
    let client = client();
    let body = json!({
        "model": "deepseek-v4-flash",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hello <PERSON_1>"},
        ],
        "temperature": 0.2,
        "some_future_field": {"kept": true},
    });
    let resp = send(&client, post_json(&server, "/chat/completions", &body)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    let v = body_json(resp).await;
    assert!(v["id"].is_string());
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].is_u64());
    assert_eq!(v["model"], "deepseek-v4-flash");
    assert!(v["system_fingerprint"].is_string());
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "Echo: Hello <PERSON_1>");
    assert!(choice["message"].get("reasoning_content").is_none());
    assert!(choice["logprobs"].is_null());
    assert_eq!(choice["finish_reason"], "stop");
    assert_usage_consistent(&v["usage"]);
    assert_eq!(v["usage"]["prompt_cache_hit_tokens"], 0);

    // Same request again: the whole prefix is now cached.
    let v = body_json(send(&client, post_json(&server, "/chat/completions", &body)).await).await;
    assert_usage_consistent(&v["usage"]);
    assert_eq!(
        v["usage"]["prompt_cache_hit_tokens"],
        v["usage"]["prompt_tokens"]
    );

    // A longer conversation with the same start: a partial hit.
    let mut longer = body.clone();
    let messages = longer["messages"].as_array_mut().unwrap();
    messages.push(json!({"role": "assistant", "content": "Echo: Hello <PERSON_1>"}));
    messages.push(json!({"role": "user", "content": "And again, with more words"}));
    let v =
        body_json(send(&client, post_json(&server, "/v1/chat/completions", &longer)).await).await;
    assert_usage_consistent(&v["usage"]);
    let hit = v["usage"]["prompt_cache_hit_tokens"].as_u64().unwrap();
    assert!(hit > 0 && hit < v["usage"]["prompt_tokens"].as_u64().unwrap());
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Echo: And again, with more words"
    );
}

#[tokio::test]
async fn chat_stream_with_usage() {
    let server = MockServer::start().await;
    let resp = send(
        &client(),
        post_json(
            &server,
            "/chat/completions",
            &stream_body("stream these four words"),
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    let (frames, err) = read_frames(resp).await;
    assert!(err.is_none());
    let body = concat(&frames);
    assert!(body.ends_with("data: [DONE]\n\n"));
    let chunks = sse_chunks(&body);
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let content_events = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .count();
    assert!(content_events >= 4, "content must come in several events");
    assert_eq!(streamed_content(&chunks), "Echo: stream these four words");
    let n = chunks.len();
    assert_eq!(chunks[n - 2]["choices"][0]["finish_reason"], "stop");
    let usage_chunk = &chunks[n - 1];
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_usage_consistent(&usage_chunk["usage"]);
    // One frame per event.
    assert!(frames.len() >= n);

    // Without include_usage, no usage chunk.
    let mut no_usage = stream_body("x");
    no_usage.as_object_mut().unwrap().remove("stream_options");
    let resp = send(
        &client(),
        post_json(&server, "/chat/completions", &no_usage),
    )
    .await;
    let body = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
    assert!(sse_chunks(&body).iter().all(|c| c.get("usage").is_none()));
}

#[tokio::test]
async fn thinking_mode() {
    let server = MockServer::start().await;
    let client = client();
    let body =
        json!({"model": "deepseek-reasoner", "messages": [{"role": "user", "content": "why"}]});
    let v = body_json(send(&client, post_json(&server, "/chat/completions", &body)).await).await;
    let message = &v["choices"][0]["message"];
    assert_eq!(message["content"], "Echo: why");
    assert_eq!(message["reasoning_content"], "Thinking about: why");
    assert!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );

    let body = json!({
        "model": "deepseek-v4-pro",
        "thinking": {"type": "enabled"},
        "messages": [{"role": "user", "content": "think hard"}],
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let resp = send(&client, post_json(&server, "/chat/completions", &body)).await;
    let body = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
    let chunks = sse_chunks(&body);
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": null, "reasoning_content": ""})
    );
    let reasoning: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0)?["delta"]["reasoning_content"].as_str())
        .collect();
    assert_eq!(reasoning, "Thinking about: think hard");
    assert_eq!(streamed_content(&chunks), "Echo: think hard");
    let usage = &chunks.last().unwrap()["usage"];
    assert!(
        usage["completion_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
}

#[tokio::test]
async fn tool_calls() {
    let server = MockServer::start().await;
    let client = client();
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "other"}},
    ]);
    let body = json!({
        "model": "deepseek-chat",
        "messages": [{"role": "user", "content": "weather in Paris?"}],
        "tools": tools,
    });
    let v = body_json(send(&client, post_json(&server, "/chat/completions", &body)).await).await;
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"input": "weather in Paris?"}));

    // Streaming: the deltas rebuild the same call.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let resp = send(&client, post_json(&server, "/chat/completions", &streamed)).await;
    let text = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
    let chunks = sse_chunks(&text);
    let mut name = String::new();
    let mut arguments = String::new();
    for c in &chunks {
        if let Some(calls) = c["choices"][0]["delta"]["tool_calls"].as_array() {
            name.push_str(calls[0]["function"]["name"].as_str().unwrap_or_default());
            arguments.push_str(
                calls[0]["function"]["arguments"]
                    .as_str()
                    .unwrap_or_default(),
            );
        }
    }
    assert_eq!(name, "get_weather");
    assert_eq!(serde_json::from_str::<Value>(&arguments).unwrap(), args);
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("tool_calls")]);

    // After the tool result, a text answer.
    let mut follow_up = body.clone();
    let messages = follow_up["messages"].as_array_mut().unwrap();
    messages.push(json!({"role": "assistant", "content": "", "tool_calls": [call]}));
    messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": "sunny"}));
    let v =
        body_json(send(&client, post_json(&server, "/chat/completions", &follow_up)).await).await;
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Echo: weather in Paris?"
    );
}

#[tokio::test]
async fn max_tokens_truncates() {
    let server = MockServer::start().await;
    let mut body = chat_body("a rather long sentence that will not fit");
    body["max_tokens"] = json!(2);
    let v = body_json(send(&client(), post_json(&server, "/chat/completions", &body)).await).await;
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["choices"][0]["message"]["content"], "Echo: a ");
    assert_eq!(v["usage"]["completion_tokens"], 2);
}

#[tokio::test]
async fn request_validation_errors() {
    let server = MockServer::start().await;
    let client = client();
    let resp = send(
        &client,
        request(&server, Method::POST, "/chat/completions", "{not json"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v = body_json(resp).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid Format")
    );

    for body in [
        json!({"messages": [{"role": "user", "content": "x"}]}),
        json!({"model": "deepseek-chat"}),
        json!({"model": "deepseek-chat", "messages": []}),
    ] {
        let resp = send(&client, post_json(&server, "/chat/completions", &body)).await;
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let v = body_json(resp).await;
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("Invalid Parameters")
        );
        assert!(v["error"]["param"].is_null());
    }

    let resp = send(&client, get(&server, "/nope")).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(body_json(resp).await["error"]["message"].is_string());

    let resp = send(&client, get(&server, "/chat/completions")).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn models_balance_and_fim() {
    let server = MockServer::start().await;
    let client = client();
    for path in ["/models", "/v1/models"] {
        let v = body_json(send(&client, get(&server, path)).await).await;
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"][0]["id"], "deepseek-chat");
        assert_eq!(v["data"][0]["object"], "model");
        assert_eq!(v["data"][0]["owned_by"], "deepseek");
        assert_eq!(v["data"][1]["id"], "deepseek-reasoner");
    }
    let v = body_json(send(&client, get(&server, "/user/balance")).await).await;
    assert_eq!(v["is_available"], true);
    assert_eq!(v["balance_infos"][0]["currency"], "CNY");
    assert_eq!(v["balance_infos"][0]["total_balance"], "110.00");

    let body =
        json!({"model": "deepseek-chat", "prompt": "def add(a, b):", "suffix": "    return c"});
    let v = body_json(send(&client, post_json(&server, "/beta/completions", &body)).await).await;
    assert_eq!(v["object"], "text_completion");
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert!(text.contains("def add(a, b):") && text.contains("return c"));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_usage_consistent(&v["usage"]);

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let resp = send(&client, post_json(&server, "/beta/completions", &streamed)).await;
    let sse = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
    let rebuilt: String = sse_chunks(&sse)
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(rebuilt, text);
    assert!(sse.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn auth_required() {
    let server = MockServer::builder()
        .api_key("sk-good-key-0001")
        .api_key("sk-good-key-0002")
        .start()
        .await;
    let client = client();

    let resp = send(
        &client,
        post_json(&server, "/chat/completions", &chat_body("x")),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let v = body_json(resp).await;
    assert_eq!(v["error"]["type"], "authentication_error");
    assert!(v["error"]["param"].is_null());

    let wrong = "sk-wrong-secret-abcd";
    let resp = send(
        &client,
        with_bearer(
            post_json(&server, "/chat/completions", &chat_body("x")),
            wrong,
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let text = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v,
        json!({"error": {
            "message": "Authentication Fails, Your api key: ****abcd is invalid",
            "type": "authentication_error",
            "param": null,
            "code": "invalid_request_error",
        }})
    );
    assert!(!text.contains(wrong));

    for key in ["sk-good-key-0001", "sk-good-key-0002"] {
        let resp = send(&client, with_bearer(get(&server, "/models"), key)).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    // Without keys, no auth by default.
    let open = MockServer::start().await;
    assert_eq!(
        send(&client, get(&open, "/models")).await.status(),
        StatusCode::OK
    );
}

fn basic(id: &str, secret: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    format!("Basic {encoded}")
}

fn token_request(
    server: &MockServer,
    credentials: Option<(&str, &str)>,
    form: &str,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut req = request(server, Method::POST, TOKEN_PATH, form.to_owned());
    req.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/x-www-form-urlencoded".parse().unwrap(),
    );
    if let Some((id, secret)) = credentials {
        req.headers_mut()
            .insert(header::AUTHORIZATION, basic(id, secret).parse().unwrap());
    }
    req
}

#[tokio::test]
async fn token_endpoint() {
    let server = MockServer::builder()
        .oauth_client("my-app", "s3cret")
        .start()
        .await;
    let client = client();
    let creds = Some(("my-app", "s3cret"));

    let resp = send(
        &client,
        token_request(&server, creds, "grant_type=client_credentials&scope=chat"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
    let first = body_json(resp).await;
    assert_eq!(first["token_type"], "Bearer");
    assert_eq!(first["expires_in"], 7200);
    assert_eq!(first["scope"], "chat");
    let token_a = first["access_token"].as_str().unwrap().to_owned();
    assert!(token_a.len() >= 32);

    let second = body_json(
        send(
            &client,
            token_request(&server, creds, "grant_type=client_credentials"),
        )
        .await,
    )
    .await;
    assert_ne!(second["access_token"].as_str().unwrap(), token_a);
    assert!(second.get("scope").is_none());

    // Wrong secret.
    let resp = send(
        &client,
        token_request(
            &server,
            Some(("my-app", "wrong")),
            "grant_type=client_credentials",
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let v = body_json(resp).await;
    assert_eq!(v["error"], "invalid_client");
    assert!(v["error_description"].is_string());

    // No credentials at all.
    let resp = send(
        &client,
        token_request(&server, None, "grant_type=client_credentials"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Credentials in the form body are accepted too.
    let resp = send(
        &client,
        token_request(
            &server,
            None,
            "grant_type=client_credentials&client_id=my-app&client_secret=s3cret",
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);

    // Wrong grant.
    let resp = send(
        &client,
        token_request(&server, creds, "grant_type=password"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body_json(resp).await["error"], "unsupported_grant_type");

    assert_eq!(server.token_fetches(), 6);
    assert_eq!(server.tokens_issued(), 3);
    assert_eq!(server.request_count(TOKEN_PATH), 6);
    assert_eq!(server.chat_count(), 0);
}

#[tokio::test]
async fn omit_expires_in() {
    let server = MockServer::builder().omit_expires_in(true).start().await;
    let v = body_json(
        send(
            &client(),
            token_request(
                &server,
                Some(("test-client", "test-secret")),
                "grant_type=client_credentials",
            ),
        )
        .await,
    )
    .await;
    assert!(v["access_token"].is_string());
    assert!(v.get("expires_in").is_none());
}

async fn fetch_token(server: &MockServer, client: &TestClient) -> String {
    let v = body_json(
        send(
            client,
            token_request(
                server,
                Some(("test-client", "test-secret")),
                "grant_type=client_credentials",
            ),
        )
        .await,
    )
    .await;
    v["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test(start_paused = true)]
async fn token_expiry_and_revocation() {
    let server = MockServer::builder()
        .require_auth(true)
        .token_lifetime(Duration::from_secs(60))
        .start()
        .await;
    let client = client();
    let status = |token: String| {
        let req = with_bearer(get(&server, "/models"), &token);
        let client = client.clone();
        async move { client.request(req).await.unwrap().status() }
    };

    let token = fetch_token(&server, &client).await;
    assert_eq!(status(token.clone()).await, StatusCode::OK);
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(status(token.clone()).await, StatusCode::OK);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(status(token).await, StatusCode::UNAUTHORIZED);

    let fresh = fetch_token(&server, &client).await;
    assert_eq!(status(fresh.clone()).await, StatusCode::OK);
    server.revoke_tokens();
    assert_eq!(status(fresh).await, StatusCode::UNAUTHORIZED);
    let after = fetch_token(&server, &client).await;
    assert_eq!(status(after).await, StatusCode::OK);
    assert_eq!(server.tokens_issued(), 3);
    assert_eq!(server.token_fetches(), 3);
}

#[tokio::test]
async fn tokens_and_keys_together() {
    let server = MockServer::builder()
        .api_key("sk-static-key-1")
        .start()
        .await;
    let client = client();
    let token = fetch_token(&server, &client).await;
    for credential in [token.as_str(), "sk-static-key-1"] {
        let resp = send(&client, with_bearer(get(&server, "/models"), credential)).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn records_requests() {
    let server = MockServer::start().await;
    let client = client();
    let body = chat_body("record me");
    let mut req = with_bearer(
        post_json(&server, "/v1/chat/completions?trace=1", &body),
        "sk-recorded",
    );
    req.headers_mut()
        .insert("x-tenant", "acme".parse().unwrap());
    body_bytes(send(&client, req).await).await;
    body_bytes(send(&client, get(&server, "/models")).await).await;

    let all = server.requests();
    assert_eq!(all.len(), 2);
    let chat = &all[0];
    assert_eq!(chat.method, Method::POST);
    assert_eq!(chat.path, "/v1/chat/completions?trace=1");
    assert_eq!(chat.path_without_query(), "/v1/chat/completions");
    assert_eq!(chat.headers["x-tenant"], "acme");
    assert_eq!(chat.header("content-type"), Some("application/json"));
    assert_eq!(chat.bearer(), Some("sk-recorded"));
    assert_eq!(chat.body, body.to_string());
    assert_eq!(chat.json().unwrap(), body);
    assert_eq!(all[1].method, Method::GET);
    assert_eq!(all[1].path, "/models");
    assert!(all[1].body.is_empty());

    assert_eq!(server.request_count("/v1/chat/completions"), 1);
    assert_eq!(server.requests_to("/v1/chat/completions?trace=1").len(), 1);
    assert_eq!(server.requests_to("/v1/chat/completions?other").len(), 0);
    assert_eq!(server.chat_count(), 1);
    // One client, sequential requests: one kept-alive connection.
    assert_eq!(server.connections(), 1);
    body_bytes(send(&h2_client(), get(&server, "/models")).await).await;
    assert_eq!(server.connections(), 2);

    server.clear_requests();
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn url_and_uri() {
    let server = MockServer::start().await;
    let port = server.addr().port();
    assert_eq!(server.url(), format!("http://127.0.0.1:{port}"));
    assert_eq!(
        server.uri("/models?x=1").to_string(),
        format!("http://127.0.0.1:{port}/models?x=1")
    );
    assert_eq!(server.uri("models").path(), "/models");
    assert_eq!(
        server.token_url(),
        format!("http://127.0.0.1:{port}/oauth2/token")
    );
    let debug = format!("{server:?}");
    assert!(debug.contains("MockServer"));
    server.shutdown().await;
}

#[tokio::test]
async fn thinking_mode_requires_reasoning_content_back() {
    let server = MockServer::start().await;
    let client = client();
    let call =
        json!({"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}});
    let history = |assistant: Value| {
        json!({
            "model": "deepseek-reasoner",
            "messages": [
                {"role": "user", "content": "use the tool"},
                assistant,
                {"role": "tool", "tool_call_id": "call_1", "content": "42"},
            ],
        })
    };
    let without = history(json!({"role": "assistant", "content": "", "tool_calls": [call]}));
    let resp = send(&client, post_json(&server, "/chat/completions", &without)).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_error_shape(
        &body_json(resp).await,
        "The `reasoning_content` in the thinking mode must be passed back to the API.",
    );
    let with = history(json!({
        "role": "assistant", "content": "", "reasoning_content": "I should call f.", "tool_calls": [call],
    }));
    let resp = send(&client, post_json(&server, "/chat/completions", &with)).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn stop_sequences_and_json_mode() {
    let server = MockServer::start().await;
    let client = client();
    let mut body = chat_body("alpha beta gamma");
    body["stop"] = json!(["gamma", " beta"]);
    let v = body_json(send(&client, post_json(&server, "/chat/completions", &body)).await).await;
    assert_eq!(v["choices"][0]["message"]["content"], "Echo: alpha");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    let mut body = chat_body("give me json");
    body["response_format"] = json!({"type": "json_object"});
    let v = body_json(send(&client, post_json(&server, "/chat/completions", &body)).await).await;
    let content: Value =
        serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(content, json!({"echo": "give me json"}));
}

#[test]
fn public_types_are_thread_safe_clones() {
    fn assert_traits<T: Send + Sync + Clone + std::fmt::Debug + 'static>() {}
    assert_traits::<MockServer>();
    assert_traits::<tower_deepseek_testkit::MockServerBuilder>();
    assert_traits::<tower_deepseek_testkit::Fault>();
    assert_traits::<tower_deepseek_testkit::Match>();
    assert_traits::<tower_deepseek_testkit::RecordedRequest>();
}
