//! An incremental Server-Sent Events codec.
//!
//! [`SseParser`] turns a byte stream, cut into chunks anywhere, into [`SseEvent`]s. It gives the
//! same events whatever the chunking (one byte at a time included), and follows the parsing rules
//! of the HTML standard's `text/event-stream` format:
//!
//! - lines end with LF, CRLF or CR (a CRLF split across two chunks counts once);
//! - lines starting with `:` are comments (DeepSeek's `: keep-alive`): they are counted, never
//!   turned into events;
//! - `data:` lines accumulate (joined with `\n`), `event:`, `id:` and `retry:` set fields, unknown
//!   fields are ignored, one space after the colon is dropped;
//! - a blank line dispatches the event, if it carried at least one `data` line; blank lines alone
//!   (DeepSeek's keep-alives in non-streaming answers, or padding) dispatch nothing;
//! - an event that is not terminated by a blank line when the stream ends is not dispatched:
//!   [`SseParser::has_partial`] tells whether bytes were left over.
//!
//! # Zero copy
//!
//! A `data:` payload that arrives within one chunk is handed out as a [`Bytes`] slice of that
//! chunk: no copy. Only a line split across chunks, or an event with several `data:` lines, is
//! assembled in a buffer.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use tower_deepseek_core::sse::SseParser;
//!
//! let mut parser = SseParser::new();
//! let mut events = Vec::new();
//! for chunk in [": keep-alive\n\nda", "ta: {\"a\":1}\r\n\r\ndata: [DONE]\n\n"] {
//!     parser.push(&Bytes::from(chunk), |event| events.push(event)).unwrap();
//! }
//! assert_eq!(events.len(), 2);
//! assert_eq!(events[0].data(), &b"{\"a\":1}"[..]);
//! assert!(events[1].is_done());
//! assert_eq!(parser.comments_seen(), 1);
//! ```

use std::fmt;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

/// The `data` payload DeepSeek (and OpenAI) send to end a stream.
pub const DONE: &[u8] = b"[DONE]";

/// The complete terminating event, as written on the wire.
pub const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

/// The default limit on the size of one event (or one line) that the parser will buffer.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 16 * 1024 * 1024;

/// One dispatched Server-Sent Event.
#[derive(Clone, PartialEq, Eq)]
pub struct SseEvent {
    event: Option<Bytes>,
    data: Bytes,
    id: Option<Bytes>,
    retry: Option<u64>,
}

impl SseEvent {
    /// An event with only a `data` payload.
    pub fn new(data: impl Into<Bytes>) -> Self {
        Self {
            event: None,
            data: data.into(),
            id: None,
            retry: None,
        }
    }

    /// Sets the `event:` type.
    #[must_use]
    pub fn with_event(mut self, event: impl Into<Bytes>) -> Self {
        self.event = Some(event.into());
        self
    }

    /// Sets the `id:` field.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<Bytes>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets the `retry:` field, in milliseconds.
    #[must_use]
    pub fn with_retry(mut self, millis: u64) -> Self {
        self.retry = Some(millis);
        self
    }

    /// The `data` payload (several `data:` lines joined with `\n`).
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Consumes the event, returning its payload.
    pub fn into_data(self) -> Bytes {
        self.data
    }

    /// The payload as UTF-8, if it is.
    pub fn data_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.data).ok()
    }

    /// The `event:` type, `None` for the default type `message`.
    pub fn event(&self) -> Option<&[u8]> {
        self.event.as_deref()
    }

    /// The `id:` field of this event, if it set one.
    pub fn id(&self) -> Option<&[u8]> {
        self.id.as_deref()
    }

    /// The `retry:` field, if this event carried a valid one.
    pub fn retry(&self) -> Option<Duration> {
        self.retry.map(Duration::from_millis)
    }

    /// Whether this is the `data: [DONE]` terminator.
    pub fn is_done(&self) -> bool {
        self.event.is_none() && self.data.as_ref() == DONE
    }

    /// Appends the wire form of this event to `buf` (see [`encode_event`]).
    pub fn encode(&self, buf: &mut BytesMut) {
        if let Some(event) = &self.event {
            write_field(buf, b"event", event);
        }
        if let Some(id) = &self.id {
            write_field(buf, b"id", id);
        }
        if let Some(retry) = self.retry {
            buf.put_slice(b"retry: ");
            buf.put_slice(retry.to_string().as_bytes());
            buf.put_u8(b'\n');
        }
        write_data(buf, &self.data);
        buf.put_u8(b'\n');
    }

    /// The wire form of this event.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.data.len() + 16);
        self.encode(&mut buf);
        buf.freeze()
    }
}

impl fmt::Debug for SseEvent {
    // The payload is model output or user text: keep it out of logs, print only its size.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseEvent")
            .field("event", &self.event.as_deref().map(String::from_utf8_lossy))
            .field("data_len", &self.data.len())
            .field("done", &self.is_done())
            .finish()
    }
}

fn write_field(buf: &mut BytesMut, name: &[u8], value: &[u8]) {
    // A field value cannot hold a line break; keep only the first line.
    let end = memchr::memchr2(b'\n', b'\r', value).unwrap_or(value.len());
    buf.put_slice(name);
    buf.put_slice(b": ");
    buf.put_slice(&value[..end]);
    buf.put_u8(b'\n');
}

fn write_data(buf: &mut BytesMut, data: &[u8]) {
    // Each line of the payload becomes its own `data:` line; CRLF and CR count as one break.
    let mut rest = data;
    loop {
        buf.put_slice(b"data: ");
        match memchr::memchr2(b'\n', b'\r', rest) {
            None => {
                buf.put_slice(rest);
                buf.put_u8(b'\n');
                return;
            }
            Some(i) => {
                buf.put_slice(&rest[..i]);
                buf.put_u8(b'\n');
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
            }
        }
    }
}

/// Appends an event with an optional `event:` type and a `data` payload to `buf`.
///
/// A payload with line breaks is written as several `data:` lines, which the parser joins back.
pub fn encode_event(buf: &mut BytesMut, event: Option<&str>, data: &[u8]) {
    if let Some(event) = event {
        write_field(buf, b"event", event.as_bytes());
    }
    write_data(buf, data);
    buf.put_u8(b'\n');
}

/// The wire form of a `data`-only event.
pub fn encode_data(data: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(data.len() + 8);
    encode_event(&mut buf, None, data);
    buf.freeze()
}

/// The wire form of a comment (`: text\n\n`). Comments are never events: a client ignores them.
pub fn encode_comment(text: &str) -> Bytes {
    let end = memchr::memchr2(b'\n', b'\r', text.as_bytes()).unwrap_or(text.len());
    let mut buf = BytesMut::with_capacity(end + 4);
    buf.put_slice(b": ");
    buf.put_slice(&text.as_bytes()[..end]);
    buf.put_slice(b"\n\n");
    buf.freeze()
}

/// The parser met an event or line larger than its limit.
///
/// The stream is not valid DeepSeek output (or is hostile); the parser stops producing events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventTooLarge {
    /// The limit that was passed, in bytes.
    pub limit: usize,
}

impl fmt::Display for EventTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "server-sent event larger than the {} byte limit; the stream is not a valid chat stream",
            self.limit
        )
    }
}

impl std::error::Error for EventTooLarge {}

#[derive(Debug, Default)]
enum DataBuf {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl DataBuf {
    fn len(&self) -> usize {
        match self {
            DataBuf::Empty => 0,
            DataBuf::One(b) => b.len(),
            DataBuf::Many(b) => b.len(),
        }
    }
}

/// An incremental `text/event-stream` parser. See the [module docs](self).
#[derive(Debug)]
pub struct SseParser {
    /// An unterminated line carried over from the previous chunk.
    pending: BytesMut,
    /// The previous chunk ended in CR: a leading LF in the next chunk belongs to it.
    skip_lf: bool,
    data: DataBuf,
    has_data: bool,
    event: Option<Bytes>,
    id: Option<Bytes>,
    retry: Option<u64>,
    comments: u64,
    events: u64,
    max_event_size: usize,
    failed: bool,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    /// A parser with the default event size limit ([`DEFAULT_MAX_EVENT_SIZE`]).
    pub fn new() -> Self {
        Self::with_max_event_size(DEFAULT_MAX_EVENT_SIZE)
    }

    /// A parser that refuses events (and lines) larger than `limit` bytes.
    pub fn with_max_event_size(limit: usize) -> Self {
        Self {
            pending: BytesMut::new(),
            skip_lf: false,
            data: DataBuf::Empty,
            has_data: false,
            event: None,
            id: None,
            retry: None,
            comments: 0,
            events: 0,
            max_event_size: limit,
            failed: false,
        }
    }

    /// How many comment lines (such as `: keep-alive`) the parser has skipped.
    pub fn comments_seen(&self) -> u64 {
        self.comments
    }

    /// How many events the parser has dispatched.
    pub fn events_seen(&self) -> u64 {
        self.events
    }

    /// Whether bytes of an unfinished line or event are waiting for more input.
    ///
    /// At the end of a stream, `true` means the stream was cut inside an event.
    pub fn has_partial(&self) -> bool {
        !self.pending.is_empty() || self.has_data || self.event.is_some()
    }

    /// Parses `chunk`, calling `on_event` for every event it completes.
    ///
    /// # Errors
    ///
    /// [`EventTooLarge`] when a line or an event passes the limit; the parser then stays failed.
    pub fn push(
        &mut self,
        chunk: &Bytes,
        mut on_event: impl FnMut(SseEvent),
    ) -> Result<(), EventTooLarge> {
        if self.failed {
            return Err(EventTooLarge {
                limit: self.max_event_size,
            });
        }
        let bytes = chunk.as_ref();
        let len = bytes.len();
        let mut pos = 0;
        if len == 0 {
            return Ok(());
        }
        if self.skip_lf {
            self.skip_lf = false;
            if bytes[0] == b'\n' {
                pos = 1;
            }
        }
        if !self.pending.is_empty() {
            match memchr::memchr2(b'\n', b'\r', &bytes[pos..]) {
                None => {
                    self.pending.extend_from_slice(&bytes[pos..]);
                    return self.check_size(self.pending.len());
                }
                Some(i) => {
                    self.pending.extend_from_slice(&bytes[pos..pos + i]);
                    self.check_size(self.pending.len())?;
                    let line = self.pending.split().freeze();
                    pos = self.after_terminator(bytes, pos + i);
                    self.line(line, &mut on_event)?;
                }
            }
        }
        while pos < len {
            match memchr::memchr2(b'\n', b'\r', &bytes[pos..]) {
                None => {
                    self.pending.extend_from_slice(&bytes[pos..]);
                    return self.check_size(self.pending.len());
                }
                Some(i) => {
                    let line = chunk.slice(pos..pos + i);
                    pos = self.after_terminator(bytes, pos + i);
                    self.line(line, &mut on_event)?;
                }
            }
        }
        Ok(())
    }

    /// Parses `chunk` and returns the events it completes.
    ///
    /// # Errors
    ///
    /// As [`push`](Self::push).
    pub fn feed(&mut self, chunk: &Bytes) -> Result<Vec<SseEvent>, EventTooLarge> {
        let mut out = Vec::new();
        self.push(chunk, |e| out.push(e))?;
        Ok(out)
    }

    /// Position after the line terminator at `at` (which is CR or LF).
    fn after_terminator(&mut self, bytes: &[u8], at: usize) -> usize {
        if bytes[at] == b'\r' {
            match bytes.get(at + 1) {
                Some(b'\n') => at + 2,
                Some(_) => at + 1,
                None => {
                    self.skip_lf = true;
                    at + 1
                }
            }
        } else {
            at + 1
        }
    }

    fn check_size(&mut self, size: usize) -> Result<(), EventTooLarge> {
        if size > self.max_event_size {
            self.failed = true;
            self.pending = BytesMut::new();
            self.data = DataBuf::Empty;
            Err(EventTooLarge {
                limit: self.max_event_size,
            })
        } else {
            Ok(())
        }
    }

    fn line(
        &mut self,
        line: Bytes,
        on_event: &mut impl FnMut(SseEvent),
    ) -> Result<(), EventTooLarge> {
        if line.is_empty() {
            self.dispatch(on_event);
            return Ok(());
        }
        if line[0] == b':' {
            self.comments += 1;
            return Ok(());
        }
        let (name, value) = match memchr::memchr(b':', &line) {
            Some(c) => {
                let start = if line.get(c + 1) == Some(&b' ') {
                    c + 2
                } else {
                    c + 1
                };
                (&line[..c], line.slice(start..))
            }
            None => (&line[..], Bytes::new()),
        };
        match name {
            b"data" => {
                self.has_data = true;
                self.data = match std::mem::take(&mut self.data) {
                    DataBuf::Empty => DataBuf::One(value),
                    DataBuf::One(first) => {
                        let mut buf = BytesMut::with_capacity(first.len() + value.len() + 1);
                        buf.extend_from_slice(&first);
                        buf.put_u8(b'\n');
                        buf.extend_from_slice(&value);
                        DataBuf::Many(buf)
                    }
                    DataBuf::Many(mut buf) => {
                        buf.put_u8(b'\n');
                        buf.extend_from_slice(&value);
                        DataBuf::Many(buf)
                    }
                };
                self.check_size(self.data.len())?;
            }
            b"event" => self.event = Some(value),
            b"id" if memchr::memchr(0, &value).is_none() => self.id = Some(value),
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|s| s.parse().ok());
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(SseEvent)) {
        let event = self.event.take();
        let retry = self.retry.take();
        if !self.has_data {
            // Blank line with no data: nothing to dispatch (keep-alive padding, or a lone
            // `event:` line, which the standard drops too).
            self.data = DataBuf::Empty;
            return;
        }
        self.has_data = false;
        let data = match std::mem::take(&mut self.data) {
            DataBuf::Empty => Bytes::new(),
            DataBuf::One(b) => b,
            DataBuf::Many(b) => b.freeze(),
        };
        self.events += 1;
        on_event(SseEvent {
            event,
            data,
            // The last event id persists across events, as the standard says.
            id: self.id.clone(),
            retry,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> (Vec<SseEvent>, SseParser) {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.push(&Bytes::copy_from_slice(c), |e| out.push(e)).unwrap();
        }
        (out, p)
    }

    #[test]
    fn line_endings_all_count() {
        for text in [
            &b"data: a\n\ndata: b\n\n"[..],
            b"data: a\r\n\r\ndata: b\r\n\r\n",
            b"data: a\r\rdata: b\r\r",
        ] {
            let (ev, _) = parse_all(&[text]);
            let data: Vec<_> = ev.iter().map(|e| e.data().clone()).collect();
            assert_eq!(data, vec![Bytes::from("a"), Bytes::from("b")], "{text:?}");
        }
    }

    #[test]
    fn crlf_split_across_chunks_counts_once() {
        let (ev, p) = parse_all(&[b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"]);
        assert_eq!(ev.len(), 2);
        assert!(!p.has_partial());
    }

    #[test]
    fn comments_and_blank_lines_are_not_events() {
        let (ev, p) = parse_all(&[b": keep-alive\n\n\n\n: keep-alive\r\n\r\n:\n\n"]);
        assert!(ev.is_empty());
        assert_eq!(p.comments_seen(), 3);
    }

    #[test]
    fn multi_line_data_and_fields() {
        let (ev, _) = parse_all(&[b"event: delta\nid: 7\nretry: 1500\ndata: a\ndata:b\ndata\n\n"]);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].data().as_ref(), b"a\nb\n");
        assert_eq!(ev[0].event(), Some(&b"delta"[..]));
        assert_eq!(ev[0].id(), Some(&b"7"[..]));
        assert_eq!(ev[0].retry(), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn invalid_retry_and_nul_id_are_ignored() {
        let (ev, _) = parse_all(&[b"retry: 1x\nid: a\0b\ndata: x\n\n"]);
        assert_eq!(ev[0].retry(), None);
        assert_eq!(ev[0].id(), None);
    }

    #[test]
    fn done_is_recognised_only_without_event_type() {
        let (ev, _) = parse_all(&[b"data: [DONE]\n\nevent: x\ndata: [DONE]\n\n"]);
        assert!(ev[0].is_done());
        assert!(!ev[1].is_done());
    }

    #[test]
    fn single_chunk_payload_is_not_copied() {
        let chunk = Bytes::from_static(b"data: {\"choices\":[]}\n\n");
        let mut p = SseParser::new();
        let ev = p.feed(&chunk).unwrap();
        let payload = ev[0].data();
        // The payload points into the chunk's own memory.
        let start = chunk.as_ptr() as usize;
        let p_start = payload.as_ptr() as usize;
        assert!(p_start >= start && p_start + payload.len() <= start + chunk.len());
    }

    #[test]
    fn truncated_event_is_partial_and_not_dispatched() {
        let (ev, p) = parse_all(&[b"data: {\"a\":1}\n\ndata: {\"b\""]);
        assert_eq!(ev.len(), 1);
        assert!(p.has_partial());
        let (_, p) = parse_all(&[b"data: x\n"]);
        assert!(
            p.has_partial(),
            "data line without blank line is unfinished"
        );
    }

    #[test]
    fn oversized_line_is_an_error_and_sticks() {
        let mut p = SseParser::with_max_event_size(8);
        let err = p
            .feed(&Bytes::from_static(b"data: 0123456789"))
            .unwrap_err();
        assert_eq!(err.limit, 8);
        assert!(p.feed(&Bytes::from_static(b"\n\n")).is_err());
    }

    #[test]
    fn encoder_round_trips() {
        let ev = SseEvent::new("line1\nline2\r\nline3")
            .with_event("x")
            .with_id("9")
            .with_retry(10);
        let wire = ev.to_bytes();
        let (back, _) = parse_all(&[&wire]);
        assert_eq!(back[0].data().as_ref(), b"line1\nline2\nline3");
        assert_eq!(back[0].event(), Some(&b"x"[..]));
        assert_eq!(back[0].retry(), Some(Duration::from_millis(10)));
        assert_eq!(&encode_data(b"[DONE]")[..], DONE_EVENT);
        assert_eq!(&encode_comment("keep-alive")[..], b": keep-alive\n\n");
    }

    #[test]
    fn debug_does_not_print_payload() {
        let ev = SseEvent::new("secret text");
        assert!(!format!("{ev:?}").contains("secret"));
    }
}
