//! The stored form of an answer, and how it is replayed as JSON or as SSE. How a passing
//! response is recorded into it: [`record`](crate::record).

use std::sync::{Mutex, OnceLock};

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

/// A cached answer. Nothing is rendered at insertion; each form is made once, the first time it
/// is asked for: the JSON completion by a non-streaming hit, the SSE events by a streaming one,
/// the compact stored bytes by the L2 write (off the request path) or given as read from L2.
///
/// A streamed answer is stored in the stored form, accumulated as it passed. A JSON answer is
/// stored as the answer's own bytes, already judged whole and successful by the end check, and
/// read into the stored form the first time the entry is used ([`stored`](Self::stored)), so
/// that a miss does not parse the answer a second time for a hit that may never come. An
/// answer that does not read into the stored form (no finish reason on a choice, say) then
/// counts as absent, as it was never stored before.
pub(crate) struct Entry {
    /// The stored form: set at creation, or read from `answer` at first use (`None`: the
    /// answer is not one the cache replays).
    stored: OnceLock<Option<Stored>>,
    /// The JSON answer not read yet, and its endpoint kind; let go once read.
    answer: Mutex<Option<(Bytes, Kind)>>,
    /// The compact stored form (what L2 holds).
    stored_bytes: OnceLock<Bytes>,
    /// The answer as a JSON completion.
    json: OnceLock<Bytes>,
    /// The answer as SSE events without the usage chunk and `[DONE]`, and the usage chunk
    /// (`choices: []`), sent when the request asked for `stream_options.include_usage`.
    sse: OnceLock<(Bytes, Option<Bytes>)>,
    /// What the L1 weigher counts: an estimate of all three forms, fixed at insertion so that
    /// rendering later never changes an entry's weight.
    weight: usize,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("bytes", &self.weight())
            .finish_non_exhaustive()
    }
}

impl Entry {
    /// An entry of `stored`, nothing rendered yet.
    pub(crate) fn new(stored: Stored) -> Entry {
        let weight = estimate_weight(&stored);
        Entry {
            stored: OnceLock::from(Some(stored)),
            answer: Mutex::new(None),
            stored_bytes: OnceLock::new(),
            json: OnceLock::new(),
            sse: OnceLock::new(),
            weight,
        }
    }

    /// An entry of a whole JSON answer, judged successful, read into the stored form when it
    /// is first used. Its weight is estimated from the answer's length, as
    /// [`estimate_weight`] does from the text: the answer's text, head and framing are at most
    /// its length (escapes decoded), and the answer's bytes are let go once read.
    pub(crate) fn from_answer(body: Bytes, kind: Kind) -> Entry {
        let weight = 3 * (body.len() + 256) + 160;
        Entry {
            stored: OnceLock::new(),
            answer: Mutex::new(Some((body, kind))),
            stored_bytes: OnceLock::new(),
            json: OnceLock::new(),
            sse: OnceLock::new(),
            weight,
        }
    }

    /// The stored form, read from the recorded answer the first time it is asked for. `None`
    /// if the answer is not one the cache replays: the entry is then dropped as absent.
    pub(crate) fn stored(&self) -> Option<&Stored> {
        self.stored
            .get_or_init(|| {
                let answer = self.answer.lock().ok().and_then(|mut a| a.take());
                answer.and_then(|(body, kind)| crate::record::stored_from_json(&body, kind))
            })
            .as_ref()
    }

    /// Parses the stored form read from L2. `None` if it is not ours (another version, garbage).
    pub(crate) fn from_stored_bytes(bytes: Bytes) -> Option<Entry> {
        let stored: Stored = serde_json::from_slice(&bytes).ok()?;
        if stored.v != STORED_VERSION || stored.choices.is_empty() {
            return None;
        }
        let entry = Entry::new(stored);
        let _ = entry.stored_bytes.set(bytes);
        Some(entry)
    }

    /// The compact stored form (what L2 holds), serialised the first time it is asked for.
    pub(crate) fn stored_bytes(&self) -> Option<Bytes> {
        let stored = self.stored()?;
        Some(
            self.stored_bytes
                .get_or_init(|| {
                    Bytes::from(serde_json::to_vec(stored).expect("stored form serialises"))
                })
                .clone(),
        )
    }

    /// The answer as a JSON completion, rendered the first time it is asked for.
    pub(crate) fn json(&self) -> Option<Bytes> {
        let stored = self.stored()?;
        Some(
            self.json
                .get_or_init(|| Bytes::from(render_json(stored).to_string()))
                .clone(),
        )
    }

    fn sse(&self) -> Option<&(Bytes, Option<Bytes>)> {
        let stored = self.stored()?;
        Some(self.sse.get_or_init(|| render_sse(stored)))
    }

    /// Bytes held by this entry (what the L1 weigher counts), estimated at insertion.
    pub(crate) fn weight(&self) -> usize {
        self.weight
    }

    /// The body frames of an SSE replay, the events rendered the first time they are asked for.
    pub(crate) fn sse_frames(&self, include_usage: bool) -> Option<Vec<Bytes>> {
        let (events, usage) = self.sse()?;
        let mut frames = Vec::with_capacity(3);
        frames.push(events.clone());
        if include_usage {
            if let Some(u) = usage {
                frames.push(u.clone());
            }
        }
        frames.push(Bytes::from_static(DONE_EVENT));
        Some(frames)
    }

    /// Whether the stored form is made (at creation, or read from the answer since).
    #[cfg(test)]
    pub(crate) fn is_read(&self) -> bool {
        self.stored.get().is_some()
    }

    /// Which forms are rendered: (stored bytes, JSON, SSE).
    #[cfg(test)]
    pub(crate) fn rendered(&self) -> (bool, bool, bool) {
        (
            self.stored_bytes.get().is_some(),
            self.json.get().is_some(),
            self.sse.get().is_some(),
        )
    }
}

/// The weight of an entry's three forms, estimated from its text: each form carries the text
/// once (JSON-escaped), plus its own framing (ids, field names, one SSE event per chunk).
fn estimate_weight(s: &Stored) -> usize {
    let text: usize = s
        .choices
        .iter()
        .map(|c| {
            c.content.as_ref().map_or(0, String::len)
                + c.reasoning_content.as_ref().map_or(0, String::len)
                + c.tool_calls
                    .iter()
                    .map(|t| t.arguments.len() + t.name.len() + 64)
                    .sum::<usize>()
                + c.logprobs.as_ref().map_or(0, |v| v.to_string().len())
                + 128
        })
        .sum();
    let head = s.id.len() + s.model.len() + s.system_fingerprint.as_ref().map_or(0, String::len);
    3 * (text + head + 256) + 160
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
