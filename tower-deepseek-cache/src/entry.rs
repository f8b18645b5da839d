//! The stored form of an answer, and how it is replayed as JSON or as SSE. How a passing
//! response is recorded into it: [`record`](crate::record).

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower_deepseek_core::chat::Usage;
use tower_deepseek_core::sse::{DONE_EVENT, encode_event};

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
