//! Puts placeholders back in responses, JSON answers and SSE streams alike.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use serde_json::Value;
use tower_deepseek_core::body::ChunkTransform;
use tower_deepseek_core::sse::{SseEvent, SseParser};

use crate::json::escape_into;
use crate::redactor::Vault;

/// Whether SSE bytes may contain a placeholder: a `<`, or its JSON escape `\u003c`.
fn may_hold_placeholder(b: &[u8]) -> bool {
    static ESCAPED: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\\u003c"));
    // One pass in the common case (neither byte present).
    match memchr::memchr2(b'<', b'\\', b) {
        None => false,
        Some(i) if b[i] == b'<' => true,
        Some(i) => memchr::memchr(b'<', &b[i..]).is_some() || ESCAPED.find(&b[i..]).is_some(),
    }
}

/// Restores the placeholders in `data` into `out`. With `hold`, a tail that may be the start
/// of a placeholder is not written; the number of bytes consumed is returned.
fn restore_bytes(data: &[u8], vault: &Vault, json: bool, hold: bool, out: &mut Vec<u8>) -> usize {
    let mut pos = 0;
    let mut from = 0;
    while let Some(off) = memchr::memchr(b'<', &data[from..]) {
        let k = from + off;
        let window = &data[k..data.len().min(k + vault.max_len())];
        match memchr::memchr(b'>', window) {
            Some(g) => {
                let cand = &window[..=g];
                if let Some(value) = std::str::from_utf8(cand).ok().and_then(|c| vault.lookup(c)) {
                    out.extend_from_slice(&data[pos..k]);
                    if json {
                        escape_into(out, value);
                    } else {
                        out.extend_from_slice(value.as_bytes());
                    }
                    pos = k + cand.len();
                    from = pos;
                    continue;
                }
            }
            None => {
                if hold && vault.is_prefix(&data[k..]) {
                    out.extend_from_slice(&data[pos..k]);
                    return k;
                }
            }
        }
        from = k + 1;
    }
    out.extend_from_slice(&data[pos..]);
    data.len()
}

/// Restores placeholders in a text or JSON stream (not SSE), holding back only a tail that
/// may be the start of a placeholder.
#[derive(Debug)]
pub(crate) struct TextRestorer {
    vault: Vault,
    json: bool,
    held: Vec<u8>,
}

impl TextRestorer {
    pub(crate) fn new(vault: Vault, json: bool) -> Self {
        Self {
            vault,
            json,
            held: Vec::new(),
        }
    }
}

impl ChunkTransform for TextRestorer {
    fn transform(&mut self, chunk: Bytes) -> Bytes {
        if self.held.is_empty() && memchr::memchr(b'<', &chunk).is_none() {
            return chunk;
        }
        let data: Vec<u8> = if self.held.is_empty() {
            chunk.to_vec()
        } else {
            let mut d = std::mem::take(&mut self.held);
            d.extend_from_slice(&chunk);
            d
        };
        let mut out = Vec::with_capacity(data.len() + 32);
        let used = restore_bytes(&data, &self.vault, self.json, true, &mut out);
        self.held = data[used..].to_vec();
        Bytes::from(out)
    }

    fn finish(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.held))
    }
}

/// Which string of a chunk a carried fragment belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Field {
    Content,
    Reasoning,
    Text,
    Arguments(u64),
}

/// Restores placeholders inside the JSON string deltas of an SSE stream: a placeholder split
/// across chunks or across events (`<CN_MO` in one delta, `BILE_1>` in the next) is
/// reassembled. Events without a placeholder, or a fragment of one, are forwarded as their
/// original bytes; a changed event is re-encoded.
#[derive(Debug)]
pub(crate) struct SseRestorer {
    vault: Vault,
    /// Bytes of an event not yet terminated by a blank line.
    partial: BytesMut,
    /// Held-back fragments, per (choice index, field).
    carry: HashMap<(u64, Field), String>,
    /// The last parsed chunk, as the envelope of synthetic flush events.
    template: Option<Value>,
}

impl SseRestorer {
    pub(crate) fn new(vault: Vault) -> Self {
        Self {
            vault,
            partial: BytesMut::new(),
            carry: HashMap::new(),
            template: None,
        }
    }

    /// Splits `data` into complete raw events (ending in a blank line) and a rest.
    pub(crate) fn complete_len(data: &[u8]) -> usize {
        let mut i = 0;
        let mut line_start = 0;
        let mut last_end = 0;
        while let Some(off) = memchr::memchr2(b'\n', b'\r', &data[i..]) {
            let t = i + off;
            let term_len = if data[t] == b'\r' {
                match data.get(t + 1) {
                    Some(b'\n') => 2,
                    Some(_) => 1,
                    // A CR at the end may be the first half of a CRLF: wait.
                    None => break,
                }
            } else {
                1
            };
            if t == line_start {
                last_end = t + term_len;
            }
            i = t + term_len;
            line_start = i;
        }
        last_end
    }

    fn process(&mut self, raw: Bytes, out: &mut BytesMut) {
        if self.carry.is_empty() && !may_hold_placeholder(&raw) {
            out.extend_from_slice(&raw);
            return;
        }
        if self.carry.is_empty() && self.restore_in_place(&raw, out) {
            return;
        }
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        if parser.push(&raw, |e| events.push(e)).is_err() || events.is_empty() {
            out.extend_from_slice(&raw);
            return;
        }
        let mut changed = false;
        let mut encoded = BytesMut::new();
        for ev in events {
            if ev.is_done() {
                self.flush_all(&mut encoded);
                changed = true;
                ev.encode(&mut encoded);
                continue;
            }
            let mut value: Value = match serde_json::from_slice(ev.data()) {
                Ok(v) => v,
                Err(_) => {
                    ev.encode(&mut encoded);
                    continue;
                }
            };
            if self.rewrite(&mut value) {
                changed = true;
                let data = serde_json::to_vec(&value).expect("a Value serializes");
                let mut ne = SseEvent::new(data);
                if let Some(name) = ev.event() {
                    ne = ne.with_event(Bytes::copy_from_slice(name));
                }
                if let Some(id) = ev.id() {
                    ne = ne.with_id(Bytes::copy_from_slice(id));
                }
                ne.encode(&mut encoded);
            } else {
                ev.encode(&mut encoded);
            }
            if value.get("choices").is_some() {
                self.template = Some(value);
            }
        }
        if changed {
            out.extend_from_slice(&encoded);
        } else {
            out.extend_from_slice(&raw);
        }
    }

    /// The common case without parsing: every `<` in the raw event either starts a complete
    /// placeholder of this vault, or cannot start one (within its JSON string). Placeholders
    /// only occur inside JSON strings, so they are replaced in the raw bytes, JSON-escaped.
    /// Returns false (and writes nothing) when the event needs the full path.
    fn restore_in_place(&self, raw: &[u8], out: &mut BytesMut) -> bool {
        static ESCAPED: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
            std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\\u003c"));
        if ESCAPED.find(raw).is_some() {
            return false;
        }
        for k in memchr::memchr_iter(b'<', raw) {
            let rest = &raw[k..];
            let end = memchr::memchr3(b'>', b'"', b'\\', rest).unwrap_or(rest.len());
            if rest.get(end) == Some(&b'>') {
                if std::str::from_utf8(&rest[..=end])
                    .ok()
                    .and_then(|p| self.vault.lookup(p))
                    .is_some()
                {
                    continue;
                }
            } else if self.vault.is_prefix(&rest[..end]) {
                // A fragment at the end of a string: it must be carried to the next event.
                return false;
            }
        }
        let mut buf = Vec::with_capacity(raw.len() + 32);
        restore_bytes(raw, &self.vault, true, false, &mut buf);
        out.extend_from_slice(&buf);
        true
    }

    /// Rewrites the string deltas of one chunk; returns whether anything changed.
    fn rewrite(&mut self, v: &mut Value) -> bool {
        let Some(choices) = v.get_mut("choices").and_then(Value::as_array_mut) else {
            return false;
        };
        let mut changed = false;
        for (pos, choice) in choices.iter_mut().enumerate() {
            let idx = choice
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(pos as u64);
            let finished = choice.get("finish_reason").is_some_and(|f| !f.is_null());
            let Some(obj) = choice.as_object_mut() else {
                continue;
            };
            if obj.contains_key("text") || self.carry.contains_key(&(idx, Field::Text)) {
                changed |= self.field(idx, Field::Text, obj, "text", finished);
            }
            let Some(delta) = obj.get_mut("delta").and_then(Value::as_object_mut) else {
                continue;
            };
            changed |= self.field(idx, Field::Content, delta, "content", finished);
            if delta.get("reasoning_content").is_some_and(Value::is_string)
                || self.carry.contains_key(&(idx, Field::Reasoning))
            {
                changed |= self.field(idx, Field::Reasoning, delta, "reasoning_content", finished);
            }
            if let Some(calls) = delta.get_mut("tool_calls").and_then(Value::as_array_mut) {
                for (tpos, call) in calls.iter_mut().enumerate() {
                    let t = call
                        .get("index")
                        .and_then(Value::as_u64)
                        .unwrap_or(tpos as u64);
                    if let Some(f) = call.get_mut("function").and_then(Value::as_object_mut) {
                        changed |= self.field(idx, Field::Arguments(t), f, "arguments", finished);
                    }
                }
            }
        }
        changed
    }

    fn field(
        &mut self,
        idx: u64,
        field: Field,
        obj: &mut serde_json::Map<String, Value>,
        name: &str,
        finished: bool,
    ) -> bool {
        let carried = self.carry.remove(&(idx, field));
        let current = obj.get(name).and_then(Value::as_str);
        if carried.is_none() && current.is_none_or(|s| !s.contains('<')) {
            return false;
        }
        let mut text = carried.unwrap_or_default();
        text.push_str(current.unwrap_or(""));
        let mut out = Vec::with_capacity(text.len());
        let used = restore_bytes(text.as_bytes(), &self.vault, false, !finished, &mut out);
        if used < text.len() {
            self.carry.insert((idx, field), text[used..].to_owned());
        }
        let new = String::from_utf8(out).expect("restored from UTF-8 text and values");
        if current == Some(new.as_str()) {
            return false;
        }
        obj.insert(name.to_owned(), Value::String(new));
        true
    }

    /// Emits every held fragment as a synthetic event (before `[DONE]` or at the end).
    fn flush_all(&mut self, out: &mut BytesMut) {
        let mut keys: Vec<(u64, Field)> = self.carry.keys().copied().collect();
        keys.sort_by_key(|(i, f)| {
            (
                *i,
                match f {
                    Field::Reasoning => 0,
                    Field::Content => 1,
                    Field::Text => 2,
                    Field::Arguments(t) => 3 + *t,
                },
            )
        });
        for key in keys {
            let text = self.carry.remove(&key).unwrap_or_default();
            let mut envelope = self
                .template
                .clone()
                .unwrap_or_else(|| serde_json::json!({"object": "chat.completion.chunk"}));
            if let Some(o) = envelope.as_object_mut() {
                o.remove("usage");
            }
            let (idx, field) = key;
            let choice = match field {
                Field::Content => {
                    serde_json::json!({"index": idx, "delta": {"content": text}, "finish_reason": null})
                }
                Field::Reasoning => {
                    serde_json::json!({"index": idx, "delta": {"reasoning_content": text}, "finish_reason": null})
                }
                Field::Text => {
                    serde_json::json!({"index": idx, "text": text, "finish_reason": null})
                }
                Field::Arguments(t) => serde_json::json!({"index": idx, "delta": {"tool_calls": [
                    {"index": t, "function": {"arguments": text}}
                ]}, "finish_reason": null}),
            };
            envelope["choices"] = Value::Array(vec![choice]);
            let data = serde_json::to_vec(&envelope).expect("a Value serializes");
            SseEvent::new(data).encode(out);
        }
    }
}

impl ChunkTransform for SseRestorer {
    fn transform(&mut self, chunk: Bytes) -> Bytes {
        // Fast path: whole events in this chunk, nothing held or carried, no `<`: as is.
        if self.partial.is_empty()
            && self.carry.is_empty()
            && chunk.ends_with(b"\n\n")
            && !may_hold_placeholder(&chunk)
        {
            return chunk;
        }
        let mut out = BytesMut::new();
        let data = if self.partial.is_empty() {
            chunk
        } else {
            self.partial.extend_from_slice(&chunk);
            self.partial.split().freeze()
        };
        let n = Self::complete_len(&data);
        if n > 0 {
            let complete = data.slice(..n);
            // Fast path: nothing to restore, nothing carried: forward the bytes as they are.
            if self.carry.is_empty() && !may_hold_placeholder(&complete) {
                if n == data.len() {
                    return complete;
                }
                out.extend_from_slice(&complete);
            } else {
                let mut start = 0;
                while start < n {
                    let len = Self::complete_len_first(&complete[start..]);
                    self.process(complete.slice(start..start + len), &mut out);
                    start += len;
                }
            }
        }
        if n < data.len() {
            self.partial.extend_from_slice(&data[n..]);
        }
        if out.is_empty() {
            Bytes::new()
        } else {
            out.freeze()
        }
    }

    fn finish(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        self.flush_all(&mut out);
        out.extend_from_slice(&self.partial.split());
        out.freeze()
    }
}

impl SseRestorer {
    /// The length of the first complete event in `data` (which holds only complete events).
    pub(crate) fn complete_len_first(data: &[u8]) -> usize {
        let mut i = 0;
        let mut line_start = 0;
        while let Some(off) = memchr::memchr2(b'\n', b'\r', &data[i..]) {
            let t = i + off;
            let term_len = if data[t] == b'\r' && data.get(t + 1) == Some(&b'\n') {
                2
            } else {
                1
            };
            i = t + term_len;
            if t == line_start {
                return i;
            }
            line_start = i;
        }
        data.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::EntityType;

    fn vault() -> Vault {
        let mut v = Vault::new();
        v.placeholder(&EntityType::CN_MOBILE, "13800138000");
        v.placeholder(&EntityType::EMAIL, "a\"b@x.com");
        v
    }

    #[test]
    fn text_split_anywhere() {
        let input = b"{\"c\":\"call <CN_MOBILE_1> or <EMAIL_1> <CN_X> <\"}";
        for cut in 0..input.len() {
            let mut r = TextRestorer::new(vault(), true);
            let mut out = Vec::new();
            out.extend_from_slice(&r.transform(Bytes::copy_from_slice(&input[..cut])));
            out.extend_from_slice(&r.transform(Bytes::copy_from_slice(&input[cut..])));
            out.extend_from_slice(&r.finish());
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "{\"c\":\"call 13800138000 or a\\\"b@x.com <CN_X> <\"}"
            );
        }
    }
}
