//! How a passing response (SSE deltas or a JSON body) is recorded into the stored form of
//! [`entry`](crate::entry).

use bytes::{Bytes, BytesMut};
use serde_json::{Value, json};
use tower_deepseek_core::chat::{ChatResponse, Content, FinishReason, Usage};
use tower_deepseek_core::sse::SseParser;

use crate::entry::{Entry, Kind, STORED_VERSION, Stored, StoredChoice, StoredToolCall};

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

    /// The body ended well and its end check judged it a success: the entry to store, if the
    /// answer is ours to keep. A streamed answer's stored form is made here (its events were
    /// read as they passed); a JSON answer is kept as its bytes and read into the stored form
    /// when the entry is first used ([`Entry::stored`]), not parsed a second time on a miss.
    pub(crate) fn finish(self) -> Option<Entry> {
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
                Some(Entry::new(stored))
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
                Some(Entry::from_answer(body, self.kind))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Entry;

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
        r.finish()?.stored().cloned()
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
        let e = Entry::new(s.clone());
        // Stored without rendering anything; each form is rendered when first asked for.
        assert_eq!(e.rendered(), (false, false, false));
        let again =
            record(&e.sse_frames(true).unwrap(), true).expect("replay is a complete stream");
        assert_eq!(e.rendered(), (false, false, true));
        assert_eq!(again, s);
        // Without usage requested, no usage chunk.
        let no_usage = record(&e.sse_frames(false).unwrap(), true).unwrap();
        assert!(no_usage.usage.is_none());
        // As JSON, the same answer.
        let from_json = stored_from_json(&e.json().unwrap(), Kind::Chat).unwrap();
        assert_eq!(from_json, s);
        assert_eq!(e.rendered(), (false, true, true));
        // And a JSON answer replays as SSE with the same content.
        let e2 = Entry::new(from_json);
        assert_eq!(record(&e2.sse_frames(true).unwrap(), true).unwrap(), s);
        // The stored bytes round-trip; read from L2, they are not serialised again.
        let e3 = Entry::from_stored_bytes(e.stored_bytes().unwrap()).unwrap();
        assert_eq!(e3.rendered(), (true, false, false));
        assert_eq!(e3.json().unwrap(), e.json().unwrap());
        assert_eq!(e3.sse_frames(true).unwrap(), e.sse_frames(true).unwrap());
        // The weight is fixed at insertion, in the range of what the three forms hold.
        let held = e.stored_bytes().unwrap().len()
            + e.json().unwrap().len()
            + e.sse_frames(true)
                .unwrap()
                .iter()
                .map(Bytes::len)
                .sum::<usize>();
        assert!(
            e.weight() >= held / 2 && e.weight() <= held * 4,
            "{} vs {held}",
            e.weight()
        );
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
        let e = Entry::new(s.clone());
        let mut r = Recorder::new(true, Kind::Text, 1 << 20);
        for f in e.sse_frames(true).unwrap() {
            r.on_data(&f);
        }
        assert_eq!(r.finish().unwrap().stored(), Some(&s));
        assert_eq!(stored_from_json(&e.json().unwrap(), Kind::Text).unwrap(), s);
    }

    /// A JSON answer is kept as its bytes on a miss and read into the stored form at its
    /// first use, to the same stored form; one that does not read is absent then.
    #[test]
    fn json_answers_are_read_at_first_use() {
        let body = json!({"id":"a","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"x \"q\""},"logprobs":null,"finish_reason":"stop"}]}).to_string();
        let record_json = |body: &str| {
            let mut r = Recorder::new(false, Kind::Chat, 1 << 20);
            for piece in body.as_bytes().chunks(7) {
                r.on_data(&Bytes::copy_from_slice(piece));
            }
            r.finish().expect("a judged JSON answer is kept")
        };
        let e = record_json(&body);
        assert!(!e.is_read(), "not parsed on the miss");
        assert_eq!(
            e.stored(),
            stored_from_json(body.as_bytes(), Kind::Chat).as_ref()
        );
        assert!(e.is_read() && e.stored().is_some());
        assert_eq!(e.rendered(), (false, false, false));
        assert_eq!(
            stored_from_json(&e.json().unwrap(), Kind::Chat).as_ref(),
            e.stored()
        );
        // The weight fixed at insertion, from the answer's length, in the range of what the
        // three forms hold once rendered, as for an entry made from the stored form.
        let held = e.stored_bytes().unwrap().len()
            + e.json().unwrap().len()
            + e.sse_frames(true)
                .unwrap()
                .iter()
                .map(Bytes::len)
                .sum::<usize>();
        assert!(
            e.weight() >= held / 2 && e.weight() <= held * 4,
            "{} vs {held}",
            e.weight()
        );

        let no_finish = json!({"id":"a","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"x"},"finish_reason":null}]});
        let e = record_json(&no_finish.to_string());
        assert!(e.stored().is_none() && e.json().is_none() && e.sse_frames(true).is_none());
        assert!(e.stored_bytes().is_none());
    }
}
