//! The routes by which personal data can reach an upstream, shared by the layer tests, the
//! loopback tests and the gateway's tests (`tower-deepseek-gateway/tests/redaction.rs` includes this
//! file): one body per field that carries text, and bodies that cannot be parsed.
#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;

/// A mainland mobile number.
pub const PHONE: &str = "13800138000";
/// An e-mail address.
pub const MAIL: &str = "zhang.san@example.com";
/// A resident ID card number.
pub const ID: &str = "11010519491231002X";

/// Panics if `sent` holds one of the raw values, plain or percent-encoded.
pub fn assert_no_raw_value(what: &str, sent: &[u8]) {
    let sent = String::from_utf8_lossy(sent);
    for v in [
        PHONE,
        MAIL,
        ID,
        "zhang.san%40example.com",
        "138%2D0013%2D8000",
    ] {
        assert!(!sent.contains(v), "{what}: the upstream got {v:?}:\n{sent}");
    }
}

/// One chat body per field that carries text, each with PII in that field only.
pub fn field_cases() -> Vec<(&'static str, serde_json::Value)> {
    use serde_json::json;
    let chat = |extra: serde_json::Value| {
        let mut v =
            json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}]});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    let msgs = |m: serde_json::Value| chat(json!({"messages": m}));
    let schema = json!({"type": "object", "properties": {
        "who": {"type": "string", "description": format!("the caller, e.g. {MAIL}"),
                "items": {"description": format!("deeper: {PHONE}")}},
        "n": {"enum": [format!("{PHONE}")], "examples": [ID]}}});
    vec![
        (
            "messages[].content (string)",
            msgs(json!([{"role": "user", "content": format!("call {PHONE}")}])),
        ),
        (
            "messages[].content[].text",
            msgs(
                json!([{"role": "user", "content": [{"type": "text", "text": format!("mail {MAIL}")}]}]),
            ),
        ),
        (
            "messages[].content[].text without a type",
            msgs(json!([{"role": "user", "content": [{"text": format!("mail {MAIL}")}]}])),
        ),
        (
            "messages[].name",
            msgs(json!([{"role": "user", "name": MAIL, "content": "hi"}])),
        ),
        ("user", chat(json!({"user": MAIL}))),
        (
            "image_url.url query",
            msgs(
                json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": format!("https://img.example/a.png?phone={PHONE}")}}]}]),
            ),
        ),
        (
            "image_url.url path",
            msgs(
                json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": format!("https://img.example/u/{PHONE}/a.png")}}]}]),
            ),
        ),
        (
            "image_url as a string",
            msgs(
                json!([{"role": "user", "content": [{"type": "image_url", "image_url": format!("https://img.example/a.png?m={MAIL}")}]}]),
            ),
        ),
        (
            "tools[].function.description",
            chat(
                json!({"tools": [{"type": "function", "function": {"name": "lookup", "description": format!("ask {MAIL}"), "parameters": {"type": "object"}}}]}),
            ),
        ),
        (
            "tools[].function.parameters descriptions, enum, examples",
            chat(
                json!({"tools": [{"type": "function", "function": {"name": "lookup", "parameters": schema}}]}),
            ),
        ),
        (
            "functions[] (legacy)",
            chat(
                json!({"functions": [{"name": "lookup", "description": format!("call {PHONE}"), "parameters": schema}]}),
            ),
        ),
        (
            "tool-call arguments",
            msgs(
                json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": format!("{{\"id\":\"{ID}\"}}")}}]}, {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]),
            ),
        ),
        (
            "function_call arguments (legacy)",
            msgs(
                json!([{"role": "assistant", "content": null, "function_call": {"name": "lookup", "arguments": format!("{{\"m\":\"{MAIL}\"}}")}}]),
            ),
        ),
        (
            "reasoning_content of an earlier turn",
            msgs(
                json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok", "reasoning_content": format!("the user is {MAIL}")}, {"role": "user", "content": "go on"}]),
            ),
        ),
        (
            "prefix of the prefix-completion turn",
            msgs(
                json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok", "prefix": format!("Dear {MAIL}")}]),
            ),
        ),
        (
            "tool result content",
            msgs(
                json!([{"role": "tool", "tool_call_id": "call_1", "content": format!("{{\"phone\":\"{PHONE}\"}}")}]),
            ),
        ),
        (
            "response_format.json_schema descriptions",
            chat(
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "out", "description": format!("for {MAIL}"), "schema": schema}}}),
            ),
        ),
        (
            "metadata (an unknown field)",
            chat(json!({"metadata": {"note": format!("id {ID}")}})),
        ),
        (
            "a number that is a phone number",
            chat(json!({"metadata": {"phone": 13800138000_u64}})),
        ),
        ("stop", chat(json!({"stop": [PHONE]}))),
        (
            "FIM prompt",
            json!({"model": "deepseek-chat", "prompt": format!("def call():\n    return '{PHONE}'"), "suffix": "\n"}),
        ),
        (
            "FIM suffix",
            json!({"model": "deepseek-chat", "prompt": "x = ", "suffix": format!("# owner: {MAIL}")}),
        ),
        (
            "completion prompt as a list",
            json!({"model": "m", "prompt": ["a", format!("b {ID}")]}),
        ),
    ]
}

/// Bodies that cannot be parsed, each with PII in it, and the reason each is refused
/// (`InvalidJsonReason::as_str`).
pub fn unparseable_bodies() -> Vec<(&'static str, Bytes, &'static str)> {
    let deep = |levels: usize| {
        format!(
            r#"{{"messages":[{{"role":"user","content":"call {PHONE}"}}],"metadata":{}1{}}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        )
    };
    let mut latin1 =
        format!(r#"{{"messages":[{{"role":"user","content":"call {PHONE} "#).into_bytes();
    latin1.extend_from_slice(b"caf\xe9\"}]}");
    vec![
        (
            "invalid JSON",
            Bytes::from(format!("call me at {PHONE}")),
            "syntax",
        ),
        (
            "truncated JSON",
            Bytes::from(format!(r#"{{"messages":[{{"content":"{PHONE}"}}"#)),
            "syntax",
        ),
        (
            "trailing garbage",
            Bytes::from(format!(r#"{{"messages":[{{"content":"{PHONE}"}}]}} x"#)),
            "syntax",
        ),
        (
            "a form",
            Bytes::from(format!("messages%5B0%5D%5Bcontent%5D={PHONE}")),
            "syntax",
        ),
        ("not UTF-8 (Latin-1)", Bytes::from(latin1), "not_utf8"),
        (
            "UTF-16 with its BOM",
            Bytes::from(
                [0xFF, 0xFE]
                    .into_iter()
                    .chain(
                        format!(r#"{{"content":"{PHONE}"}}"#)
                            .encode_utf16()
                            .flat_map(u16::to_le_bytes),
                    )
                    .collect::<Vec<u8>>(),
            ),
            "not_utf8",
        ),
        (
            "UTF-16 without a BOM (NULs outside strings)",
            Bytes::from(
                format!(r#"{{"content":"{PHONE}"}}"#)
                    .encode_utf16()
                    .flat_map(u16::to_le_bytes)
                    .collect::<Vec<u8>>(),
            ),
            "syntax",
        ),
        (
            "a UTF-8 BOM",
            Bytes::from(format!("\u{feff}{{\"content\":\"{PHONE}\"}}")),
            "syntax",
        ),
        ("nested 300 levels", Bytes::from(deep(300)), "too_deep"),
        ("nested 257 levels", Bytes::from(deep(256)), "too_deep"),
    ]
}
