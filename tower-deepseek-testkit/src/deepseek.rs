//! The DeepSeek-compatible answers: chat (JSON and SSE), FIM, models, balance, errors.

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::body::MockBody;
use crate::record::RecordedRequest;
use crate::state::Shared;

/// The `system_fingerprint` of every answer.
pub(crate) const SYSTEM_FINGERPRINT: &str = "fp_testkit_0001";

/// The successful answer of an endpoint, before faults reshape it.
#[derive(Debug)]
pub(crate) enum Payload {
    /// A JSON document (`application/json`).
    Json(Bytes),
    /// SSE events, each a complete `data: ...\n\n`, without the final `data: [DONE]`.
    Sse(Vec<Bytes>),
}

/// An error response that an endpoint sends as is (boxed: it is large).
pub(crate) type Rejection = Box<Response<MockBody>>;

/// An endpoint's answer: a payload to shape, or an error response to send as is.
pub(crate) type Answer = Result<Payload, Rejection>;

// ---------------------------------------------------------------- errors

fn error_defaults(status: StatusCode) -> (&'static str, &'static str) {
    match status.as_u16() {
        400 => ("Invalid Format", "invalid_request_error"),
        401 => ("Authentication Fails", "authentication_error"),
        402 => ("Insufficient Balance", "unknown_error"),
        404 => ("Not Found", "invalid_request_error"),
        405 => ("Method Not Allowed", "invalid_request_error"),
        422 => ("Invalid Parameters", "invalid_request_error"),
        429 => ("Rate Limit Reached", "rate_limit_error"),
        500 => ("Server Error", "api_error"),
        502 => ("Bad Gateway", "api_error"),
        503 => ("Server Overloaded", "api_error"),
        504 => ("Gateway Timeout", "api_error"),
        _ if status.is_server_error() => (
            status.canonical_reason().unwrap_or("Server Error"),
            "api_error",
        ),
        _ => (
            status.canonical_reason().unwrap_or("Error"),
            "invalid_request_error",
        ),
    }
}

/// DeepSeek's error object: `{"error":{"message","type","param":null,"code"}}`.
pub(crate) fn error_json(status: StatusCode, message: Option<&str>) -> Value {
    let (default_message, kind) = error_defaults(status);
    let code = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    json!({"error": {
        "message": message.unwrap_or(default_message),
        "type": kind,
        "param": null,
        "code": code,
    }})
}

pub(crate) fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<MockBody> {
    let mut resp = Response::new(MockBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A response with DeepSeek's error body.
pub(crate) fn error_response(status: StatusCode, message: Option<&str>) -> Response<MockBody> {
    json_response(status, error_json(status, message).to_string())
}

fn reject<T>(status: StatusCode, message: &str) -> Result<T, Rejection> {
    Err(Box::new(error_response(status, Some(message))))
}

/// `****abcd`: never more than the last four characters of a credential, and none of a
/// short one.
pub(crate) fn mask(secret: &str) -> String {
    let n = secret.chars().count();
    if n >= 8 {
        let tail: String = secret.chars().skip(n - 4).collect();
        format!("****{tail}")
    } else {
        "****".to_owned()
    }
}

/// Checks `Authorization: Bearer` when the server requires auth.
pub(crate) fn check_auth(shared: &Shared, req: &RecordedRequest) -> Result<(), Rejection> {
    if !shared.config.require_auth {
        return Ok(());
    }
    match req.bearer() {
        Some(key) if shared.config.api_keys.iter().any(|k| k == key) || shared.token_valid(key) => {
            Ok(())
        }
        Some(key) => reject(
            StatusCode::UNAUTHORIZED,
            &format!(
                "Authentication Fails, Your api key: {} is invalid",
                mask(key)
            ),
        ),
        None => reject(
            StatusCode::UNAUTHORIZED,
            "Authentication Fails, no api key in the Authorization header",
        ),
    }
}

fn method_not_allowed(allowed: &'static str) -> Response<MockBody> {
    let mut resp = error_response(StatusCode::METHOD_NOT_ALLOWED, None);
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allowed));
    resp
}

// ---------------------------------------------------------------- helpers

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Mock token count: a quarter of the UTF-8 bytes, rounded up.
fn tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// The longest prefix of `text` that fits in `max` tokens, cut on a char boundary.
fn truncate_to_tokens(text: &str, max: u64) -> &str {
    let limit = usize::try_from(max.saturating_mul(4)).unwrap_or(usize::MAX);
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Splits before every space, so that the pieces concatenate back to `text`.
fn word_pieces(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c == ' ' && i > start {
            pieces.push(&text[start..i]);
            start = i;
        }
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

/// Splits into pieces of at most `size` bytes (on char boundaries).
fn fixed_pieces(text: &str, size: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + size).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        pieces.push(&text[start..end]);
        start = end;
    }
    pieces
}

/// The text of a message: its string content, or its text parts joined by spaces.
fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn uuid_like(shared: &Shared) -> String {
    let h = shared.unique_hex(32);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn sse_event(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, Rejection> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => reject(
            StatusCode::BAD_REQUEST,
            "Invalid Format: the request body must be a JSON object",
        ),
        Err(err) => reject(
            StatusCode::BAD_REQUEST,
            &format!("Invalid Format: failed to parse the request body as JSON: {err}"),
        ),
    }
}

fn max_tokens(obj: &Map<String, Value>) -> Result<Option<u64>, Rejection> {
    match obj.get("max_tokens") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Ok(Some(n)),
            _ => reject(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid Parameters: max_tokens must be a positive integer",
            ),
        },
    }
}

fn wants_stream(obj: &Map<String, Value>) -> (bool, bool) {
    let stream = obj.get("stream").and_then(Value::as_bool) == Some(true);
    let include_usage = stream
        && obj
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            == Some(true);
    (stream, include_usage)
}

// ---------------------------------------------------------------- routing

/// The chat completion paths.
pub(crate) const CHAT_PATHS: [&str; 2] = ["/chat/completions", "/v1/chat/completions"];

/// The normal answer of the endpoint `req` targets (everything but the token endpoint).
pub(crate) fn answer(shared: &Shared, req: &RecordedRequest, finish: Option<&str>) -> Answer {
    let path = req.path_without_query();
    let (allowed, post) = match path {
        p if CHAT_PATHS.contains(&p) || p == "/beta/completions" => ("POST", true),
        "/models" | "/v1/models" | "/user/balance" | "/v1/user/balance" => ("GET", false),
        _ => {
            return reject(
                StatusCode::NOT_FOUND,
                &format!("Not Found: no route for {path}"),
            );
        }
    };
    let method_ok = if post {
        req.method == Method::POST
    } else {
        req.method == Method::GET || req.method == Method::HEAD
    };
    if !method_ok {
        return Err(Box::new(method_not_allowed(allowed)));
    }
    check_auth(shared, req)?;
    match path {
        "/beta/completions" => fim(shared, req, finish),
        "/models" | "/v1/models" => Ok(Payload::Json(Bytes::from(
            json!({"object": "list", "data": [
                {"id": "deepseek-chat", "object": "model", "owned_by": "deepseek"},
                {"id": "deepseek-reasoner", "object": "model", "owned_by": "deepseek"},
            ]})
            .to_string(),
        ))),
        "/user/balance" | "/v1/user/balance" => Ok(Payload::Json(Bytes::from(
            json!({"is_available": true, "balance_infos": [{
                "currency": "CNY",
                "total_balance": "110.00",
                "granted_balance": "10.00",
                "topped_up_balance": "100.00",
            }]})
            .to_string(),
        ))),
        _ => chat(shared, req, finish),
    }
}

// ---------------------------------------------------------------- chat

struct Usage {
    prompt: u64,
    hit: u64,
    completion: u64,
    reasoning: u64,
}

impl Usage {
    fn to_json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
            "prompt_cache_hit_tokens": self.hit,
            "prompt_cache_miss_tokens": self.prompt - self.hit,
            "prompt_tokens_details": {"cached_tokens": self.hit},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning},
        })
    }
}

struct ToolCall {
    id: String,
    name: String,
    arguments: String,
}

/// The content of the mock's answer to a chat whose last user message is `text`.
pub(crate) fn echo(text: &str) -> String {
    format!("Echo: {text}")
}

/// The reasoning of the mock's answer in thinking mode.
pub(crate) fn reasoning_for(text: &str) -> String {
    format!("Thinking about: {text}")
}

fn chat(shared: &Shared, req: &RecordedRequest, finish: Option<&str>) -> Answer {
    let obj = parse_object(&req.body)?;
    let Some(model) = obj.get("model").and_then(Value::as_str) else {
        return reject(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid Parameters: missing field `model`",
        );
    };
    let Some(messages) = obj
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
    else {
        return reject(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid Parameters: `messages` must be a non-empty array",
        );
    };
    if messages.iter().any(|m| !m.is_object()) {
        return reject(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid Parameters: every message must be an object",
        );
    }
    let max_tokens = max_tokens(&obj)?;
    let (stream, include_usage) = wants_stream(&obj);
    let thinking = model.contains("reasoner")
        || obj
            .get("thinking")
            .and_then(|t| t.get("type"))
            .and_then(Value::as_str)
            == Some("enabled");

    let role = |m: &Value| m.get("role").and_then(Value::as_str).map(str::to_owned);
    let user_text = messages
        .iter()
        .rev()
        .find(|m| role(m).as_deref() == Some("user"))
        .map(message_text)
        .unwrap_or_default();
    let last_is_tool = messages.last().and_then(role).as_deref() == Some("tool");
    if thinking
        && messages.iter().any(|m| {
            role(m).as_deref() == Some("assistant")
                && m.get("tool_calls")
                    .and_then(Value::as_array)
                    .is_some_and(|calls| !calls.is_empty())
                && !m.get("reasoning_content").is_some_and(Value::is_string)
        })
    {
        return reject(
            StatusCode::BAD_REQUEST,
            "The `reasoning_content` in the thinking mode must be passed back to the API.",
        );
    }

    // Prompt tokens per message, and the prompt-cache hit on the longest known prefix.
    let per_message: Vec<u64> = messages.iter().map(|m| tokens(&message_text(m))).collect();
    let prompt = per_message.iter().sum::<u64>().max(1);
    let mut chain: [u8; 32] = Sha256::digest(
        obj.get("user_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .as_bytes(),
    )
    .into();
    let hashes: Vec<[u8; 32]> = messages
        .iter()
        .map(|m| {
            let mut h = Sha256::new();
            h.update(chain);
            h.update(m.to_string().as_bytes());
            chain = h.finalize().into();
            chain
        })
        .collect();
    let seen = shared.seen_prefix(&hashes);
    let hit = per_message[..seen].iter().sum::<u64>().min(prompt);

    // Tool call, when tools are offered and the last turn is not already a tool result.
    let tool = obj
        .get("tools")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())
        .filter(|_| obj.get("tool_choice").and_then(Value::as_str) != Some("none"))
        .filter(|_| !last_is_tool)
        .map(|tools| ToolCall {
            id: format!("call_{}", &hex::encode(Sha256::digest(&req.body))[..24]),
            name: tools[0]
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("tool")
                .to_owned(),
            arguments: json!({ "input": user_text }).to_string(),
        });

    // Texts, cut to max_tokens (reasoning first, as the real API counts it).
    let full_reasoning = thinking.then(|| reasoning_for(&user_text));
    let json_mode = obj
        .get("response_format")
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
        == Some("json_object");
    let full_content = if tool.is_some() {
        String::new()
    } else if json_mode {
        json!({ "echo": user_text }).to_string()
    } else {
        echo(&user_text)
    };
    // `stop` sequences end the content before their first occurrence.
    let stops: Vec<&str> = match obj.get("stop") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let full_content = match stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| full_content.find(s))
        .min()
    {
        Some(at) => full_content[..at].to_owned(),
        None => full_content,
    };
    let budget = max_tokens.unwrap_or(u64::MAX);
    let reasoning = full_reasoning
        .as_deref()
        .map(|r| truncate_to_tokens(r, budget));
    let reasoning_tokens = reasoning.map_or(0, tokens);
    let content = truncate_to_tokens(&full_content, budget.saturating_sub(reasoning_tokens));
    let truncated = content.len() < full_content.len()
        || reasoning.map(str::len) < full_reasoning.as_deref().map(str::len);
    let tool_tokens = tool
        .as_ref()
        .map_or(0, |t| tokens(&t.name) + tokens(&t.arguments));
    let usage = Usage {
        prompt,
        hit,
        completion: reasoning_tokens + tokens(content) + tool_tokens,
        reasoning: reasoning_tokens,
    };
    let finish_reason = match finish {
        Some(f) => f,
        None if tool.is_some() => "tool_calls",
        None if truncated => "length",
        None => "stop",
    };

    let id = uuid_like(shared);
    let created = unix_now();
    if !stream {
        let mut message = json!({"role": "assistant", "content": content});
        if let Some(r) = reasoning {
            message["reasoning_content"] = json!(r);
        }
        if let Some(t) = &tool {
            message["tool_calls"] = json!([{
                "index": 0,
                "id": t.id,
                "type": "function",
                "function": {"name": t.name, "arguments": t.arguments},
            }]);
        }
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
            "usage": usage.to_json(),
        });
        return Ok(Payload::Json(Bytes::from(body.to_string())));
    }

    let chunk = |delta: Value, finish_reason: Value| {
        sse_event(&json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
        }))
    };
    let mut events = Vec::new();
    if thinking {
        events.push(chunk(
            json!({"role": "assistant", "content": null, "reasoning_content": ""}),
            Value::Null,
        ));
        for piece in word_pieces(reasoning.unwrap_or_default()) {
            events.push(chunk(
                json!({"content": null, "reasoning_content": piece}),
                Value::Null,
            ));
        }
    } else {
        events.push(chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        ));
    }
    for piece in word_pieces(content) {
        let delta = if thinking {
            json!({"content": piece, "reasoning_content": null})
        } else {
            json!({ "content": piece })
        };
        events.push(chunk(delta, Value::Null));
    }
    if let Some(t) = &tool {
        events.push(chunk(
            json!({"tool_calls": [{
                "index": 0,
                "id": t.id,
                "type": "function",
                "function": {"name": t.name, "arguments": ""},
            }]}),
            Value::Null,
        ));
        for piece in fixed_pieces(&t.arguments, 16) {
            events.push(chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                Value::Null,
            ));
        }
    }
    events.push(chunk(json!({"content": ""}), json!(finish_reason)));
    if include_usage {
        events.push(sse_event(&json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [],
            "usage": usage.to_json(),
        })));
    }
    Ok(Payload::Sse(events))
}

// ---------------------------------------------------------------- FIM

/// The text of the mock's FIM answer.
fn fim_text(prompt: &str, suffix: &str) -> String {
    if suffix.is_empty() {
        echo(prompt)
    } else {
        format!("{} [suffix: {suffix}]", echo(prompt))
    }
}

fn fim(shared: &Shared, req: &RecordedRequest, finish: Option<&str>) -> Answer {
    let obj = parse_object(&req.body)?;
    let Some(model) = obj.get("model").and_then(Value::as_str) else {
        return reject(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid Parameters: missing field `model`",
        );
    };
    let Some(prompt_text) = obj.get("prompt").and_then(Value::as_str) else {
        return reject(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid Parameters: missing field `prompt`",
        );
    };
    let suffix = obj
        .get("suffix")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let max_tokens = max_tokens(&obj)?;
    let (stream, include_usage) = wants_stream(&obj);
    let full = fim_text(prompt_text, suffix);
    let text = truncate_to_tokens(&full, max_tokens.unwrap_or(u64::MAX));
    let finish_reason = finish.unwrap_or(if text.len() < full.len() {
        "length"
    } else {
        "stop"
    });
    let prompt = (tokens(prompt_text) + tokens(suffix)).max(1);
    let usage = Usage {
        prompt,
        hit: 0,
        completion: tokens(text),
        reasoning: 0,
    };
    let id = uuid_like(shared);
    let created = unix_now();
    let completion = |choices: Value| {
        json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        })
    };
    if !stream {
        let mut body = completion(json!([{
            "text": text,
            "index": 0,
            "logprobs": null,
            "finish_reason": finish_reason,
        }]));
        body["usage"] = usage.to_json();
        return Ok(Payload::Json(Bytes::from(body.to_string())));
    }
    let mut events: Vec<Bytes> = word_pieces(text)
        .into_iter()
        .map(|piece| {
            sse_event(&completion(json!([{
                "text": piece, "index": 0, "logprobs": null, "finish_reason": null,
            }])))
        })
        .collect();
    events.push(sse_event(&completion(json!([{
        "text": "", "index": 0, "logprobs": null, "finish_reason": finish_reason,
    }]))));
    if include_usage {
        let mut last = completion(json!([]));
        last["usage"] = usage.to_json();
        events.push(sse_event(&last));
    }
    Ok(Payload::Sse(events))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_concatenate() {
        let text = "Echo: héllo  wörld again";
        let words = word_pieces(text);
        assert_eq!(words.concat(), text);
        assert!(words.len() >= 4);
        let fixed = fixed_pieces(text, 3);
        assert_eq!(fixed.concat(), text);
        assert!(word_pieces("").is_empty());
    }

    #[test]
    fn truncation_on_char_boundary() {
        assert_eq!(truncate_to_tokens("abcdefgh", 1), "abcd");
        assert_eq!(truncate_to_tokens("abc", 1), "abc");
        assert_eq!(truncate_to_tokens("aaaé", 1), "aaa");
        assert_eq!(truncate_to_tokens("abc", 0), "");
    }

    #[test]
    fn masking() {
        assert_eq!(mask("sk-1234567890abcd"), "****abcd");
        assert_eq!(mask("short"), "****");
    }

    #[test]
    fn error_shape() {
        let v = error_json(StatusCode::PAYMENT_REQUIRED, None);
        assert_eq!(v["error"]["message"], "Insufficient Balance");
        assert!(v["error"]["param"].is_null());
        assert_eq!(
            error_json(StatusCode::SERVICE_UNAVAILABLE, None)["error"]["message"],
            "Server Overloaded"
        );
    }
}
