//! The streaming rewriter of an SSE answer's string deltas, shared by the restore of
//! [`RedactLayer`](crate::RedactLayer) and by [`ContentFilterLayer`](crate::ContentFilterLayer).
//!
//! A chat stream sends each choice's text in pieces: `delta.content`, `delta.reasoning_content`,
//! `delta.tool_calls[].function.arguments`, and FIM's `text`. What a layer looks for (a
//! placeholder, a keyword) may be split across chunks, and across events. [`DeltaRewriter`]
//! cuts the byte stream into whole events, and for each (choice, field) joins the text held
//! back from earlier events with the new delta, hands it to the layer's [`DeltaEdit`], sends
//! what the edit lets go, and holds the rest. A held tail is flushed as a synthetic event
//! (built on the envelope of the last chunk, without its `usage`) when the choice finishes,
//! before `[DONE]`, or at the end of the stream. An event that is not changed goes out as its
//! original bytes; a changed one is re-encoded (with its `event` and `id`).

use std::collections::HashMap;
use std::fmt;

use bytes::{Bytes, BytesMut};
use serde_json::Value;
use tower_deepseek_core::body::ChunkTransform;
use tower_deepseek_core::sse::{SseEvent, SseParser};

/// Which string of a chunk a held fragment belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Field {
    Content,
    Reasoning,
    Text,
    Arguments(u64),
}

/// The edit asked for the end of the stream: nothing more is sent after
/// [`DeltaEdit::blocked`]'s event.
#[derive(Debug)]
pub(crate) struct Blocked;

/// What a layer does to the text of one field.
pub(crate) trait DeltaEdit {
    /// Whether a new delta, with nothing held before it, needs [`edit`](Self::edit) at all.
    fn wants(&self, delta: &str) -> bool;

    /// Edits `text` (the held text and the new delta). `last`: the choice finished, nothing
    /// may be held. Returns the text to send now and the (possibly empty) text to hold back.
    fn edit(&mut self, text: String, last: bool) -> Result<(String, String), Blocked>;

    /// A held text that must go out now (before `[DONE]`, at the end of the stream).
    fn flush(&mut self, text: String) -> Result<String, Blocked>;

    /// A chunk of whole events, with nothing held: whether it goes out as it is, checked
    /// without parsing (`false`: look at it).
    #[inline(always)]
    fn passes(&self, _chunk: &[u8]) -> bool {
        false
    }

    /// Whole events, with nothing held, edited in their raw bytes without parsing: `None`
    /// when the events must be parsed; `Some(None)` when nothing changes (the caller keeps
    /// its bytes: zero copy).
    fn in_place(&self, _raw: &[u8]) -> Option<Option<Bytes>> {
        None
    }

    /// Writes the event that ends a [`Blocked`] stream.
    fn blocked(&mut self, _out: &mut BytesMut) {}
}

/// Outcome of rewriting one field, or one event.
enum Step {
    Unchanged,
    Changed,
    Block,
}

/// Rewrites the string deltas of an SSE stream with a [`DeltaEdit`] (see the module docs).
pub(crate) struct DeltaRewriter<E> {
    pub(crate) edit: E,
    /// Bytes of an event not yet terminated by a blank line.
    partial: BytesMut,
    /// Held-back text, per (choice index, field).
    carry: HashMap<(u64, Field), String>,
    /// The last parsed chunk, as the envelope of synthetic flush events.
    template: Option<Value>,
    /// The edit blocked the stream: nothing more goes out.
    blocked: bool,
}

impl<E> fmt::Debug for DeltaRewriter<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeltaRewriter")
            .field("partial", &self.partial.len())
            .field("held", &self.carry.len())
            .field("blocked", &self.blocked)
            .finish_non_exhaustive()
    }
}

/// Whether a chunk ends with a blank line, i.e. holds whole events only.
#[inline]
pub(crate) fn ends_events(chunk: &[u8]) -> bool {
    chunk.ends_with(b"\n\n") || chunk.ends_with(b"\r\n\r\n")
}

/// The length of the complete raw events (each ending in a blank line) at the start of
/// `data`; the rest waits for more bytes.
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

impl<E: DeltaEdit> DeltaRewriter<E> {
    /// A rewriter that applies `edit`.
    pub(crate) fn with_edit(edit: E) -> Self {
        Self {
            edit,
            partial: BytesMut::new(),
            carry: HashMap::new(),
            template: None,
            blocked: false,
        }
    }

    /// Whether `chunk` goes out unchanged: whole events, nothing held or carried, and the
    /// edit's fast check passes. Inlined into the body's poll.
    #[inline(always)]
    pub(crate) fn passes(&self, chunk: &[u8]) -> bool {
        self.partial.is_empty()
            && self.carry.is_empty()
            && ends_events(chunk)
            && self.edit.passes(chunk)
    }

    /// [`ChunkTransform::transform`] of a chunk that did not [`pass`](Self::passes): its
    /// check is not repeated.
    pub(crate) fn transform_failed(&mut self, chunk: Bytes) -> Bytes {
        if self.partial.is_empty() && self.carry.is_empty() && ends_events(&chunk) {
            self.whole_events(chunk)
        } else {
            self.general(chunk)
        }
    }

    /// Whole events, nothing held or carried: edited in place when possible (the same bytes
    /// when nothing changes).
    #[inline(never)]
    fn whole_events(&mut self, chunk: Bytes) -> Bytes {
        match self.edit.in_place(&chunk) {
            Some(out) => out.unwrap_or(chunk),
            None => self.general(chunk),
        }
    }

    /// Any chunk: complete events are rewritten, the rest of an event is held until its blank
    /// line arrives.
    #[inline(never)]
    fn general(&mut self, chunk: Bytes) -> Bytes {
        if self.blocked {
            return Bytes::new();
        }
        let data = if self.partial.is_empty() {
            chunk
        } else {
            self.partial.extend_from_slice(&chunk);
            self.partial.split().freeze()
        };
        let n = complete_len(&data);
        let mut out = BytesMut::new();
        if n > 0 {
            let complete = data.slice(..n);
            // The whole events as a block when nothing is carried (a zero-copy slice when
            // nothing changes); event by event otherwise.
            let block = if self.carry.is_empty() {
                self.edit.in_place(&complete)
            } else {
                None
            };
            match block {
                Some(b) => {
                    if n < data.len() {
                        self.partial.extend_from_slice(&data[n..]);
                    }
                    return b.unwrap_or(complete);
                }
                None => {
                    let mut start = 0;
                    while start < n && !self.blocked {
                        let len = complete_len_first(&complete[start..]);
                        self.process(complete.slice(start..start + len), &mut out);
                        start += len;
                    }
                }
            }
        }
        if n < data.len() && !self.blocked {
            self.partial.extend_from_slice(&data[n..]);
        }
        out.freeze()
    }

    /// Ends the stream with the edit's event.
    fn block(&mut self, out: &mut BytesMut) {
        self.blocked = true;
        self.carry.clear();
        self.edit.blocked(out);
    }

    /// One complete raw event (or several, parsed together).
    fn process(&mut self, raw: Bytes, out: &mut BytesMut) {
        if self.carry.is_empty() {
            if let Some(b) = self.edit.in_place(&raw) {
                out.extend_from_slice(b.as_deref().unwrap_or(&raw));
                return;
            }
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
                if self.blocked {
                    out.extend_from_slice(&encoded);
                    return;
                }
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
            match self.rewrite(&mut value) {
                Step::Block => {
                    // Nothing of this event, nor anything after it, is sent.
                    out.extend_from_slice(&encoded);
                    self.block(out);
                    return;
                }
                Step::Changed => {
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
                }
                Step::Unchanged => ev.encode(&mut encoded),
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

    /// Rewrites the string deltas of one chunk.
    fn rewrite(&mut self, v: &mut Value) -> Step {
        let Some(choices) = v.get_mut("choices").and_then(Value::as_array_mut) else {
            return Step::Unchanged;
        };
        let mut changed = false;
        let mut note = |s: Step| match s {
            Step::Block => true,
            Step::Changed => {
                changed = true;
                false
            }
            Step::Unchanged => false,
        };
        for (pos, choice) in choices.iter_mut().enumerate() {
            let idx = choice
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(pos as u64);
            let last = choice.get("finish_reason").is_some_and(|f| !f.is_null());
            let Some(obj) = choice.as_object_mut() else {
                continue;
            };
            if (obj.contains_key("text") || self.carry.contains_key(&(idx, Field::Text)))
                && note(self.field(idx, Field::Text, obj, "text", last))
            {
                return Step::Block;
            }
            let Some(delta) = obj.get_mut("delta").and_then(Value::as_object_mut) else {
                continue;
            };
            if note(self.field(idx, Field::Content, delta, "content", last)) {
                return Step::Block;
            }
            if (delta.get("reasoning_content").is_some_and(Value::is_string)
                || self.carry.contains_key(&(idx, Field::Reasoning)))
                && note(self.field(idx, Field::Reasoning, delta, "reasoning_content", last))
            {
                return Step::Block;
            }
            if let Some(calls) = delta.get_mut("tool_calls").and_then(Value::as_array_mut) {
                for (tpos, call) in calls.iter_mut().enumerate() {
                    let t = call
                        .get("index")
                        .and_then(Value::as_u64)
                        .unwrap_or(tpos as u64);
                    if let Some(f) = call.get_mut("function").and_then(Value::as_object_mut) {
                        if note(self.field(idx, Field::Arguments(t), f, "arguments", last)) {
                            return Step::Block;
                        }
                    }
                }
            }
        }
        if changed {
            Step::Changed
        } else {
            Step::Unchanged
        }
    }

    /// Edits the held text and the new delta of one field; sends what the edit lets go and
    /// holds the rest.
    fn field(
        &mut self,
        idx: u64,
        field: Field,
        obj: &mut serde_json::Map<String, Value>,
        name: &str,
        last: bool,
    ) -> Step {
        let carried = self.carry.remove(&(idx, field));
        let current = obj.get(name).and_then(Value::as_str);
        if carried.is_none() && current.is_none_or(|s| !self.edit.wants(s)) {
            return Step::Unchanged;
        }
        let mut text = carried.unwrap_or_default();
        text.push_str(current.unwrap_or(""));
        let Ok((new, keep)) = self.edit.edit(text, last) else {
            return Step::Block;
        };
        if !keep.is_empty() {
            self.carry.insert((idx, field), keep);
        }
        if current == Some(new.as_str()) {
            return Step::Unchanged;
        }
        obj.insert(name.to_owned(), Value::String(new));
        Step::Changed
    }

    /// Sends every held text as a synthetic event (before `[DONE]` or at the end).
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
            let Ok(text) = self.edit.flush(text) else {
                self.block(out);
                return;
            };
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

impl<E: DeltaEdit> ChunkTransform for DeltaRewriter<E> {
    #[inline]
    fn transform(&mut self, chunk: Bytes) -> Bytes {
        if self.passes(&chunk) {
            return chunk;
        }
        self.transform_failed(chunk)
    }

    fn finish(&mut self) -> Bytes {
        if self.blocked {
            return Bytes::new();
        }
        let mut out = BytesMut::new();
        self.flush_all(&mut out);
        if !self.blocked {
            out.extend_from_slice(&self.partial.split());
        }
        out.freeze()
    }

    fn is_finished(&self) -> bool {
        self.blocked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Upper-cases text and holds back a trailing `x` (as if it might start a match).
    struct Upper;

    impl DeltaEdit for Upper {
        fn wants(&self, delta: &str) -> bool {
            !delta.is_empty()
        }

        fn edit(&mut self, text: String, last: bool) -> Result<(String, String), Blocked> {
            let mut text = text.to_uppercase();
            let keep = if !last && text.ends_with('X') {
                text.split_off(text.len() - 1)
            } else {
                String::new()
            };
            Ok((text, keep))
        }

        fn flush(&mut self, text: String) -> Result<String, Blocked> {
            Ok(text)
        }
    }

    #[test]
    fn event_lengths() {
        assert_eq!(complete_len(b"data: a\n\ndata: b"), 9);
        assert_eq!(complete_len(b"data: a\r\n\r\n"), 11);
        // A CR at the end may be half of a CRLF.
        assert_eq!(complete_len(b"data: a\r\n\r"), 0);
        assert_eq!(complete_len_first(b"data: a\n\ndata: b\n\n"), 9);
        assert!(ends_events(b"data: a\n\n") && !ends_events(b"data: a\n"));
    }

    #[test]
    fn held_text_is_flushed_before_done_and_ids_are_kept() {
        let mut r = DeltaRewriter::with_edit(Upper);
        let mut out = Vec::new();
        for chunk in [
            &b"id: 7\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ax\"}}]}\n"[..],
            b"\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"}}]}\n\n",
            b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"cx\"}}]}\n\ndata: [DONE]\n\n",
        ] {
            out.extend_from_slice(&r.transform(Bytes::copy_from_slice(chunk)));
        }
        out.extend_from_slice(&r.finish());
        let mut contents = Vec::new();
        let mut ids = Vec::new();
        let mut parser = SseParser::new();
        parser
            .push(&Bytes::from(out), |e| {
                ids.push(e.id().map(<[u8]>::to_vec));
                if !e.is_done() {
                    let v: Value = serde_json::from_slice(e.data()).unwrap();
                    contents.push(
                        v["choices"][0]["delta"]["content"]
                            .as_str()
                            .unwrap()
                            .to_owned(),
                    );
                }
            })
            .unwrap();
        assert_eq!(contents, ["A", "XB", "C", "X"]);
        assert_eq!(ids[0].as_deref(), Some(&b"7"[..]));
        assert!(r.finish().is_empty());
    }
}
