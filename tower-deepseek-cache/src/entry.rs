//! The stored form of an answer, how a passing response is recorded into it, and how it is
//! replayed as JSON or as SSE.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower_deepseek_core::chat::{ChatResponse, Content, FinishReason, Usage};
use tower_deepseek_core::sse::{DONE_EVENT, SseParser, encode_event};

/// Version of the stored form (inside the stored bytes, and in the Redis key prefix).
pub(crate) const STORED_VERSION: u8 = 1;

/// What kind of endpoint answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// Chat completions: `choices[].message` / `choices[].delta`.
    Chat,
    /// FIM / text completions: `choices[].text`.
    Text,
}

/// The normalised answer: what L1 keeps (pre-rendered) and L2 stores (as compact JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub(crate) v: u8,
    pub(crate) kind: Kind,
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) system_fingerprint: Option<String>,
    pub(crate) choices: Vec<StoredChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) usage: Option<Usage>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub(crate) struct StoredChoice {
    pub(crate) index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reasoning_content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) tool_calls: Vec<StoredToolCall>,
    pub(crate) finish_reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) logprobs: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub(crate) struct StoredToolCall {
    pub(crate) index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<String>,
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) name: String,
    pub(crate) arguments: String,
}

/// A cached answer, ready to replay: both forms are rendered once, at insertion.
#[derive(Clone)]
pub(crate) struct Entry {
    /// The compact stored form (what L2 holds).
    pub(crate) stored: Bytes,
    /// The answer as a JSON completion.
    pub(crate) json: Bytes,
    /// The answer as SSE events, without the usage chunk and `[DONE]`.
    pub(crate) sse: Bytes,
    /// The usage chunk (`choices: []`), sent when the request asked for
    /// `stream_options.include_usage`.
    pub(crate) sse_usage: Option<Bytes>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("bytes", &self.weight())
            .finish_non_exhaustive()
    }
}

impl Entry {
    pub(crate) fn from_stored(stored: &Stored) -> Entry {
        let bytes = Bytes::from(serde_json::to_vec(stored).expect("stored form serialises"));
        Entry::render(stored, bytes)
    }

    /// Parses the stored form read from L2. `None` if it is not ours (another version, garbage).
    pub(crate) fn from_stored_bytes(bytes: Bytes) -> Option<Entry> {
        let stored: Stored = serde_json::from_slice(&bytes).ok()?;
        if stored.v != STORED_VERSION || stored.choices.is_empty() {
            return None;
        }
        Some(Entry::render(&stored, bytes))
    }

    fn render(stored: &Stored, bytes: Bytes) -> Entry {
        let json = Bytes::from(render_json(stored).to_string());
        let (sse, sse_usage) = render_sse(stored);
        Entry {
            stored: bytes,
            json,
            sse,
            sse_usage,
        }
    }

    /// Bytes held by this entry (what the L1 weigher counts), plus a fixed overhead.
    pub(crate) fn weight(&self) -> usize {
        self.stored.len()
            + self.json.len()
            + self.sse.len()
            + self.sse_usage.as_ref().map_or(0, Bytes::len)
            + 160
    }

    /// The body frames of an SSE replay.
    pub(crate) fn sse_frames(&self, include_usage: bool) -> Vec<Bytes> {
        let mut frames = Vec::with_capacity(3);
        frames.push(self.sse.clone());
        if include_usage {
            if let Some(u) = &self.sse_usage {
                frames.push(u.clone());
            }
        }
        frames.push(Bytes::from_static(DONE_EVENT));
        frames
    }
}

fn render_json(s: &Stored) -> Value {
    let choices: Vec<Value> = s
        .choices
        .iter()
        .map(|c| match s.kind {
            Kind::Chat => {
                let mut message = json!({"role": "assistant", "content": c.content});
                if let Some(r) = &c.reasoning_content {
                    message["reasoning_content"] = json!(r);
                }
                if !c.tool_calls.is_empty() {
                    message["tool_calls"] = Value::Array(
                        c.tool_calls
                            .iter()
                            .map(|t| {
                                json!({
                                    "index": t.index,
                                    "id": t.id,
                                    "type": t.kind,
                                    "function": {"name": t.name, "arguments": t.arguments},
                                })
                            })
                            .collect(),
                    );
                }
                json!({
                    "index": c.index,
                    "message": message,
                    "logprobs": c.logprobs,
                    "finish_reason": c.finish_reason,
                })
            }
            Kind::Text => json!({
                "index": c.index,
                "text": c.content.as_deref().unwrap_or(""),
                "logprobs": c.logprobs,
                "finish_reason": c.finish_reason,
            }),
        })
        .collect();
    let mut out = json!({
        "id": s.id,
        "object": match s.kind { Kind::Chat => "chat.completion", Kind::Text => "text_completion" },
        "created": s.created,
        "model": s.model,
        "choices": choices,
    });
    if let Some(fp) = &s.system_fingerprint {
        out["system_fingerprint"] = json!(fp);
    }
    if let Some(u) = &s.usage {
        out["usage"] = serde_json::to_value(u).unwrap_or(Value::Null);
    }
    out
}

fn chunk(s: &Stored, choices: Value) -> Value {
    let mut out = json!({
        "id": s.id,
        "object": match s.kind { Kind::Chat => "chat.completion.chunk", Kind::Text => "text_completion" },
        "created": s.created,
        "model": s.model,
        "choices": choices,
    });
    if let Some(fp) = &s.system_fingerprint {
        out["system_fingerprint"] = json!(fp);
    }
    out
}

fn push_event(buf: &mut BytesMut, v: &Value) {
    encode_event(buf, None, v.to_string().as_bytes());
}

fn render_sse(s: &Stored) -> (Bytes, Option<Bytes>) {
    let mut buf = BytesMut::new();
    for c in &s.choices {
        let one = |delta: Value, logprobs: Option<&Value>, finish: Option<&str>| json!([{"index": c.index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]);
        match s.kind {
            Kind::Chat => {
                let role = if c.reasoning_content.is_some() {
                    json!({"role": "assistant", "content": null, "reasoning_content": ""})
                } else {
                    json!({"role": "assistant", "content": ""})
                };
                push_event(&mut buf, &chunk(s, one(role, None, None)));
                if let Some(r) = c.reasoning_content.as_deref().filter(|r| !r.is_empty()) {
                    push_event(
                        &mut buf,
                        &chunk(s, one(json!({"reasoning_content": r}), None, None)),
                    );
                }
                if let Some(text) = c.content.as_deref().filter(|t| !t.is_empty()) {
                    push_event(
                        &mut buf,
                        &chunk(s, one(json!({"content": text}), c.logprobs.as_ref(), None)),
                    );
                }
                for t in &c.tool_calls {
                    let call = json!({
                        "index": t.index,
                        "id": t.id,
                        "type": t.kind,
                        "function": {"name": t.name, "arguments": t.arguments},
                    });
                    push_event(
                        &mut buf,
                        &chunk(s, one(json!({"tool_calls": [call]}), None, None)),
                    );
                }
                push_event(
                    &mut buf,
                    &chunk(s, one(json!({"content": ""}), None, Some(&c.finish_reason))),
                );
            }
            Kind::Text => {
                let text = c.content.as_deref().unwrap_or("");
                let ch = json!([{"index": c.index, "text": text, "logprobs": c.logprobs, "finish_reason": null}]);
                push_event(&mut buf, &chunk(s, ch));
                let end = json!([{"index": c.index, "text": "", "logprobs": null, "finish_reason": c.finish_reason}]);
                push_event(&mut buf, &chunk(s, end));
            }
        }
    }
    let usage = s.usage.as_ref().map(|u| {
        let mut c = chunk(s, json!([]));
        c["usage"] = serde_json::to_value(u).unwrap_or(Value::Null);
        let mut b = BytesMut::new();
        push_event(&mut b, &c);
        b.freeze()
    });
    (buf.freeze(), usage)
}

// ---------------------------------------------------------------- recording

/// Accumulates a passing response (SSE deltas or a JSON body) into the stored form.
#[derive(Debug)]
pub(crate) struct Recorder {
    mode: RecMode,
    kind: Kind,
    limit: usize,
    seen: usize,
    /// Too large or unparseable: nothing will be stored.
    spoiled: bool,
}

#[derive(Debug)]
enum RecMode {
    Sse {
        parser: Box<SseParser>,
        acc: Box<Accum>,
        done: bool,
    },
    Json {
        chunks: Vec<Bytes>,
    },
}

#[derive(Debug, Default)]
struct Accum {
    id: Option<String>,
    created: Option<u64>,
    model: Option<String>,
    system_fingerprint: Option<String>,
    choices: Vec<AccChoice>,
    usage: Option<Usage>,
}

#[derive(Debug, Default)]
struct AccChoice {
    index: u32,
    content: Option<String>,
    reasoning: Option<String>,
    tools: Vec<StoredToolCall>,
    finish: Option<String>,
    logprobs: Vec<Value>,
    logprobs_other: Option<Value>,
}

impl Accum {
    fn choice(&mut self, index: u32) -> &mut AccChoice {
        let pos = match self.choices.iter().position(|c| c.index == index) {
            Some(p) => p,
            None => {
                self.choices.push(AccChoice {
                    index,
                    ..AccChoice::default()
                });
                self.choices.len() - 1
            }
        };
        &mut self.choices[pos]
    }

    fn absorb(&mut self, chunk: ChatResponse, kind: Kind) {
        if self.id.is_none() && !chunk.id.is_empty() {
            self.id = Some(chunk.id);
        }
        if self.created.is_none() && chunk.created != 0 {
            self.created = Some(chunk.created);
        }
        if self.model.is_none() && !chunk.model.is_empty() {
            self.model = Some(chunk.model);
        }
        if chunk.system_fingerprint.is_some() {
            self.system_fingerprint = chunk.system_fingerprint;
        }
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        for c in chunk.choices {
            let acc = self.choice(c.index);
            if let Some(text) = c.text {
                append(&mut acc.content, &text);
            }
            if let Some(delta) = c.delta {
                if let Some(content) = &delta.content {
                    append(&mut acc.content, &content_text(content));
                }
                if let Some(r) = &delta.reasoning_content {
                    append(&mut acc.reasoning, r);
                }
                for t in delta.tool_calls.into_iter().flatten() {
                    let index = t.index.unwrap_or(acc.tools.len() as u32);
                    let pos = match acc.tools.iter().position(|x| x.index == index) {
                        Some(p) => p,
                        None => {
                            acc.tools.push(StoredToolCall {
                                index,
                                kind: "function".to_owned(),
                                ..StoredToolCall::default()
                            });
                            acc.tools.len() - 1
                        }
                    };
                    let slot = &mut acc.tools[pos];
                    if slot.id.is_none() {
                        slot.id = t.id;
                    }
                    if let Some(k) = t.kind {
                        slot.kind = k;
                    }
                    if let Some(n) = t.function.name {
                        slot.name.push_str(&n);
                    }
                    if let Some(a) = t.function.arguments {
                        slot.arguments.push_str(&a);
                    }
                }
            }
            if let Some(lp) = c.logprobs {
                match lp.get("content").and_then(Value::as_array) {
                    Some(items) if kind == Kind::Chat => acc.logprobs.extend(items.iter().cloned()),
                    _ if !lp.is_null() => acc.logprobs_other = Some(lp),
                    _ => {}
                }
            }
            if let Some(f) = c.finish_reason {
                acc.finish = Some(f.as_str().to_owned());
            }
        }
    }

    fn into_stored(self, kind: Kind) -> Option<Stored> {
        if self.choices.is_empty() {
            return None;
        }
        let mut choices = Vec::with_capacity(self.choices.len());
        for c in self.choices {
            let finish_reason = c.finish?;
            let logprobs = if !c.logprobs.is_empty() {
                Some(json!({"content": c.logprobs}))
            } else {
                c.logprobs_other
            };
            choices.push(StoredChoice {
                index: c.index,
                content: non_empty(c.content),
                reasoning_content: non_empty(c.reasoning),
                tool_calls: c.tools,
                finish_reason,
                logprobs,
            });
        }
        choices.sort_by_key(|c| c.index);
        Some(Stored {
            v: STORED_VERSION,
            kind,
            id: self.id.unwrap_or_default(),
            created: self.created.unwrap_or_default(),
            model: self.model.unwrap_or_default(),
            system_fingerprint: self.system_fingerprint,
            choices,
            usage: self.usage,
        })
    }
}

/// Empty and absent text are the same answer; keep one spelling so that replays compare equal.
fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

fn append(slot: &mut Option<String>, text: &str) {
    match slot {
        Some(s) => s.push_str(text),
        None => *slot = Some(text.to_owned()),
    }
}

fn content_text(c: &Content) -> String {
    c.text().into_owned()
}

/// Turns a complete JSON answer into the stored form.
pub(crate) fn stored_from_json(body: &[u8], kind: Kind) -> Option<Stored> {
    let resp: ChatResponse = serde_json::from_slice(body).ok()?;
    let mut choices = Vec::with_capacity(resp.choices.len());
    for c in resp.choices {
        let finish_reason = c.finish_reason?;
        if finish_reason == FinishReason::InsufficientSystemResource {
            return None;
        }
        let (content, reasoning_content, tool_calls) = match c.message {
            Some(m) => (
                m.content.as_ref().map(content_text),
                m.reasoning_content,
                m.tool_calls
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .map(|(i, t)| StoredToolCall {
                        index: t.index.unwrap_or(i as u32),
                        id: t.id,
                        kind: t.kind.unwrap_or_else(|| "function".to_owned()),
                        name: t.function.name.unwrap_or_default(),
                        arguments: t.function.arguments.unwrap_or_default(),
                    })
                    .collect(),
            ),
            None => (c.text, None, Vec::new()),
        };
        choices.push(StoredChoice {
            index: c.index,
            content: non_empty(content),
            reasoning_content: non_empty(reasoning_content),
            tool_calls,
            finish_reason: finish_reason.as_str().to_owned(),
            logprobs: c.logprobs.filter(|l| !l.is_null()),
        });
    }
    if choices.is_empty() {
        return None;
    }
    Some(Stored {
        v: STORED_VERSION,
        kind,
        id: resp.id,
        created: resp.created,
        model: resp.model,
        system_fingerprint: resp.system_fingerprint,
        choices,
        usage: resp.usage,
    })
}

impl Recorder {
    pub(crate) fn new(stream: bool, kind: Kind, limit: usize) -> Recorder {
        let mode = if stream {
            RecMode::Sse {
                parser: Box::default(),
                acc: Box::default(),
                done: false,
            }
        } else {
            RecMode::Json { chunks: Vec::new() }
        };
        Recorder {
            mode,
            kind,
            limit,
            seen: 0,
            spoiled: false,
        }
    }

    pub(crate) fn on_data(&mut self, chunk: &Bytes) {
        if self.spoiled {
            return;
        }
        self.seen += chunk.len();
        if self.seen > self.limit {
            self.spoil();
            return;
        }
        let kind = self.kind;
        match &mut self.mode {
            RecMode::Sse { parser, acc, done } => {
                let mut bad = false;
                let res = parser.push(chunk, |ev| {
                    if bad || *done {
                        return;
                    }
                    if ev.is_done() {
                        *done = true;
                        return;
                    }
                    if ev.event().is_some_and(|e| e != b"message") {
                        bad = true;
                        return;
                    }
                    match serde_json::from_slice::<ChatResponse>(ev.data()) {
                        Ok(c) if !c.extra.contains_key("error") => acc.absorb(c, kind),
                        _ => bad = true,
                    }
                });
                if bad || res.is_err() {
                    self.spoil();
                }
            }
            RecMode::Json { chunks } => chunks.push(chunk.clone()),
        }
    }

    fn spoil(&mut self) {
        self.spoiled = true;
        self.mode = RecMode::Json { chunks: Vec::new() };
    }

    /// The body ended well (as far as the transport knows): the stored form, if the answer is
    /// complete and ours to keep.
    pub(crate) fn finish(self) -> Option<Stored> {
        if self.spoiled {
            return None;
        }
        match self.mode {
            RecMode::Sse { acc, done, .. } => {
                if !done {
                    return None;
                }
                let stored = acc.into_stored(self.kind)?;
                if stored
                    .choices
                    .iter()
                    .any(|c| c.finish_reason == "insufficient_system_resource")
                {
                    return None;
                }
                Some(stored)
            }
            RecMode::Json { chunks } => {
                let body: Bytes = if chunks.len() == 1 {
                    chunks.into_iter().next().unwrap_or_default()
                } else {
                    let mut b = BytesMut::with_capacity(self.seen);
                    for c in &chunks {
                        b.extend_from_slice(c);
                    }
                    b.freeze()
                };
                stored_from_json(&body, self.kind)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse(events: &[Value]) -> Vec<Bytes> {
        let mut out: Vec<Bytes> = events
            .iter()
            .map(|e| Bytes::from(format!("data: {e}\n\n")))
            .collect();
        out.push(Bytes::from_static(b": keep-alive\n\n"));
        out
    }

    fn stream_fixture() -> Vec<Bytes> {
        let base = |choices: Value| json!({"id":"x1","object":"chat.completion.chunk","created":7,"model":"deepseek-reasoner","system_fingerprint":"fp","choices":choices});
        let mut frames = sse(&[
            base(
                json!([{"index":0,"delta":{"role":"assistant","content":null,"reasoning_content":""}}]),
            ),
            base(json!([{"index":0,"delta":{"reasoning_content":"Think"}}])),
            base(json!([{"index":0,"delta":{"reasoning_content":"ing."}}])),
            base(json!([{"index":0,"delta":{"content":"Hello"}}])),
            base(json!([{"index":0,"delta":{"content":" world"}}])),
            base(
                json!([{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get","arguments":"{\"a\""}}]}}]),
            ),
            base(
                json!([{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]}}]),
            ),
            base(json!([{"index":0,"delta":{"content":""},"finish_reason":"tool_calls"}])),
            {
                let mut u = base(json!([]));
                u["usage"] = json!({"prompt_tokens":3,"completion_tokens":5,"total_tokens":8,"completion_tokens_details":{"reasoning_tokens":2}});
                u
            },
        ]);
        frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
        frames
    }

    fn record(frames: &[Bytes], stream: bool) -> Option<Stored> {
        let mut r = Recorder::new(stream, Kind::Chat, 1 << 20);
        // Re-chunk at odd boundaries to prove chunking does not matter.
        let all: Vec<u8> = frames.iter().flat_map(|b| b.to_vec()).collect();
        for piece in all.chunks(7) {
            r.on_data(&Bytes::copy_from_slice(piece));
        }
        r.finish()
    }

    #[test]
    fn records_reasoning_content_tools_finish_usage() {
        let s = record(&stream_fixture(), true).expect("stored");
        let c = &s.choices[0];
        assert_eq!(c.reasoning_content.as_deref(), Some("Thinking."));
        assert_eq!(c.content.as_deref(), Some("Hello world"));
        assert_eq!(c.tool_calls[0].id.as_deref(), Some("call_1"));
        assert_eq!(c.tool_calls[0].name, "get");
        assert_eq!(c.tool_calls[0].arguments, "{\"a\":1}");
        assert_eq!(c.finish_reason, "tool_calls");
        assert_eq!(s.usage.as_ref().unwrap().reasoning_tokens(), 2);
        assert_eq!(s.system_fingerprint.as_deref(), Some("fp"));
    }

    #[test]
    fn replayed_sse_records_back_to_the_same_answer() {
        let s = record(&stream_fixture(), true).unwrap();
        let e = Entry::from_stored(&s);
        let again = record(&e.sse_frames(true), true).expect("replay is a complete stream");
        assert_eq!(again, s);
        // Without usage requested, no usage chunk.
        let no_usage = record(&e.sse_frames(false), true).unwrap();
        assert!(no_usage.usage.is_none());
        // As JSON, the same answer.
        let from_json = stored_from_json(&e.json, Kind::Chat).unwrap();
        assert_eq!(from_json, s);
        // And a JSON answer replays as SSE with the same content.
        let e2 = Entry::from_stored(&from_json);
        assert_eq!(record(&e2.sse_frames(true), true).unwrap(), s);
        // The stored bytes round-trip.
        let e3 = Entry::from_stored_bytes(e.stored.clone()).unwrap();
        assert_eq!(e3.json, e.json);
        assert_eq!(e3.sse, e.sse);
    }

    #[test]
    fn cut_streams_errors_and_oversize_are_not_stored() {
        let mut frames = stream_fixture();
        frames.pop(); // no [DONE]
        assert!(record(&frames, true).is_none());

        let mut err = stream_fixture();
        err.insert(
            3,
            Bytes::from_static(b"data: {\"error\":{\"message\":\"x\"}}\n\n"),
        );
        assert!(record(&err, true).is_none());

        let mut r = Recorder::new(true, Kind::Chat, 10);
        for f in stream_fixture() {
            r.on_data(&f);
        }
        assert!(r.finish().is_none());

        let no_finish = json!({"id":"a","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"x"},"finish_reason":null}]});
        assert!(stored_from_json(no_finish.to_string().as_bytes(), Kind::Chat).is_none());
        assert!(stored_from_json(b"{\"error\":{}}", Kind::Chat).is_none());
    }

    #[test]
    fn text_completions_round_trip() {
        let body = json!({"id":"f","object":"text_completion","created":3,"model":"m","choices":[{"index":0,"text":"fn main","logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}});
        let s = stored_from_json(body.to_string().as_bytes(), Kind::Text).unwrap();
        let e = Entry::from_stored(&s);
        let mut r = Recorder::new(true, Kind::Text, 1 << 20);
        for f in e.sse_frames(true) {
            r.on_data(&f);
        }
        assert_eq!(r.finish().unwrap(), s);
        assert_eq!(stored_from_json(&e.json, Kind::Text).unwrap(), s);
    }
}
