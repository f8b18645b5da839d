//! [`ChatView`]: a request body parsed once, shared by every layer that reads it.
//!
//! Several layers read the chat request: the redactor (its text fields), the cache (its
//! canonical key, temperature and stream flag), the rate limiter (model and `max_tokens` for
//! its token estimate), the keyed breaker (the model) and audit (the model of a failed call).
//! The first of them that needs the body parses it into a `ChatView` and leaves the view in the
//! request's extensions; the others read it there instead of parsing the same bytes again.
//!
//! A view is a flat tape of the document's values in order (objects, arrays, strings, numbers,
//! literals), each with its byte range in the body, over the very [`Bytes`] it was parsed
//! from. It decodes nothing up front: a reader asks for the values it needs
//! ([`ChatView::model`], [`JsonRef::get`], [`JsonRef::as_str`]), and a string without escapes
//! is borrowed from the body.
//!
//! # Never about other bytes
//!
//! A view holds a handle on the buffer it describes, so [`ChatView::describes`] can check in
//! O(1) that a body is the very same buffer (address and length; the handle keeps the buffer
//! alive, so equal means equal bytes, as with the response side's
//! [`FrameTrace`](crate::classify::FrameTrace)). Every reader takes the view only through that
//! check ([`ChatView::get`], [`ChatView::get_or_parse`]): a layer in between that rewrites the
//! body without knowing of views (a user's own) makes the readers below parse what they
//! received, never use a view of other bytes. A layer that rewrites the body on purpose (the
//! redactor) hands the layers below a view of what it sends, built as it writes
//! ([`ChatView::replace_strings`]), not by parsing its own output.
//!
//! ```
//! use bytes::Bytes;
//! use tower_deepseek_core::view::ChatView;
//!
//! let body = Bytes::from_static(br#"{"model":"deepseek-chat","stream":true,
//!     "messages":[{"role":"user","content":"Hi \"you\""}],"max_tokens":64}"#);
//! let view = ChatView::parse(body.clone()).unwrap();
//! assert_eq!(view.model().as_deref(), Some("deepseek-chat"));
//! assert!(view.is_stream());
//! assert_eq!(view.max_tokens(), Some(64));
//! let content = view.root().get("messages").unwrap().items().next().unwrap().get("content");
//! assert_eq!(content.unwrap().as_str().as_deref(), Some("Hi \"you\""));
//! assert!(view.describes(&body));
//! assert!(!view.describes(&Bytes::copy_from_slice(&body)));
//!
//! // Mask the content: the new view describes the new body, and nothing was parsed again.
//! let masked = view.replace_strings([(content.unwrap().id(), "[MASKED]")]).unwrap();
//! assert_eq!(
//!     masked.root().get("messages").unwrap().items().next().unwrap()
//!         .get("content").unwrap().as_str().as_deref(),
//!     Some("[MASKED]"),
//! );
//! assert_eq!(masked.model().as_deref(), Some("deepseek-chat"));
//! ```

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Extensions;

/// How many objects and arrays may enclose one another (`[[1]]` is two levels). A deeper
/// document is [`ViewError::TooDeep`].
pub const MAX_DEPTH: usize = 256;

/// Why a body could not be parsed into a [`ChatView`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ViewError {
    /// The body is not UTF-8.
    NotUtf8,
    /// The body is not one valid JSON document.
    Syntax,
    /// Objects and arrays nested deeper than [`MAX_DEPTH`].
    TooDeep,
}

impl fmt::Display for ViewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ViewError::NotUtf8 => "request body is not UTF-8",
            ViewError::Syntax => "request body is not valid JSON",
            ViewError::TooDeep => "request body is nested too deeply",
        })
    }
}

impl std::error::Error for ViewError {}

/// The kind of a JSON value in a [`ChatView`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JsonKind {
    /// `null`
    Null,
    /// `true` or `false`
    Bool,
    /// A number, kept as written ([`JsonRef::raw`]).
    Number,
    /// A string.
    String,
    /// An array.
    Array,
    /// An object.
    Object,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    kind: JsonKind,
    /// A string with at least one escape (decoding copies it).
    escaped: bool,
    start: usize,
    end: usize,
    /// The index just past this value's subtree (its next sibling, if any).
    next: usize,
    /// Children of an array, members of an object (each member is a key node then a value).
    count: usize,
}

struct Inner {
    bytes: Bytes,
    /// Pre-order: a container is followed by its children (object members as key, value).
    nodes: Vec<Node>,
    depth: usize,
}

/// A chat (or FIM, or any JSON) request body parsed once: see the [module docs](self).
///
/// Cheap to clone (one reference count). As a request extension, it describes the request's
/// body only if [`describes`](Self::describes) says so; read it with [`get`](Self::get) or
/// [`get_or_parse`](Self::get_or_parse), which check.
#[derive(Clone)]
pub struct ChatView(Arc<Inner>);

impl fmt::Debug for ChatView {
    // Never prints the body: it carries prompts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatView")
            .field("len", &self.0.bytes.len())
            .field("values", &self.0.nodes.len())
            .field("depth", &self.0.depth)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "scan-counter")]
static PARSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many request bodies [`ChatView::parse`] has parsed in this process (feature
/// `scan-counter`): a test reads it before and after a call to check that a request is parsed
/// once in a stack.
#[cfg(feature = "scan-counter")]
#[cfg_attr(docsrs, doc(cfg(feature = "scan-counter")))]
pub fn requests_parsed() -> u64 {
    PARSED.load(std::sync::atomic::Ordering::Relaxed)
}

impl ChatView {
    /// Parses `body` (one JSON document; whitespace around it is fine). The view keeps `body`
    /// (a reference count, no copy).
    ///
    /// # Errors
    ///
    /// [`ViewError`]: not UTF-8, not valid JSON, or nested deeper than [`MAX_DEPTH`].
    pub fn parse(body: Bytes) -> Result<ChatView, ViewError> {
        #[cfg(feature = "scan-counter")]
        PARSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Validated once, whole: every span is then a `&str` slice.
        std::str::from_utf8(&body).map_err(|_| ViewError::NotUtf8)?;
        let mut p = Parser {
            b: &body,
            i: 0,
            // A chat request has a value every 50 to 100 bytes: one allocation, rarely two.
            nodes: Vec::with_capacity(body.len() / 64 + 8),
            depth: 0,
        };
        p.ws();
        p.value(0)?;
        p.ws();
        if p.i != body.len() {
            return Err(ViewError::Syntax);
        }
        let (nodes, depth) = (p.nodes, p.depth);
        Ok(ChatView(Arc::new(Inner {
            bytes: body,
            nodes,
            depth,
        })))
    }

    /// Whether this view describes `body`: the same buffer (address and length). The view
    /// holds that buffer, so it cannot have been freed and reused: the same buffer means the
    /// same bytes. A copy of the bytes is not the same buffer (a reader then parses again).
    pub fn describes(&self, body: &Bytes) -> bool {
        let own = &self.0.bytes;
        own.len() == body.len() && std::ptr::eq(own.as_ptr(), body.as_ptr())
    }

    /// The view in `ext` if it describes `body`, else `None`.
    pub fn get(ext: &Extensions, body: &Bytes) -> Option<ChatView> {
        ext.get::<ChatView>().filter(|v| v.describes(body)).cloned()
    }

    /// The view in `ext` if it describes `body`; else `body` parsed, and the new view
    /// [published](Self::publish) in `ext` for the layers below.
    ///
    /// # Errors
    ///
    /// As [`parse`](Self::parse); `ext` is then left without a view (a stale one is removed).
    pub fn get_or_parse(ext: &mut Extensions, body: &Bytes) -> Result<ChatView, ViewError> {
        if let Some(v) = Self::get(ext, body) {
            return Ok(v);
        }
        match ChatView::parse(body.clone()) {
            Ok(v) => {
                v.publish(ext);
                Ok(v)
            }
            Err(e) => {
                ext.remove::<ChatView>();
                Err(e)
            }
        }
    }

    /// Puts this view in `ext` for the layers below (replacing any other), and in the
    /// [`ViewSlot`] of a layer above, if there is one.
    pub fn publish(&self, ext: &mut Extensions) {
        if let Some(slot) = ext.get::<ViewSlot>() {
            slot.set(self.clone());
        }
        ext.insert(self.clone());
    }

    /// The body this view describes.
    pub fn bytes(&self) -> &Bytes {
        &self.0.bytes
    }

    /// The body's length in bytes.
    pub fn len(&self) -> usize {
        self.0.bytes.len()
    }

    /// Whether the body is empty (never, for a parsed document).
    pub fn is_empty(&self) -> bool {
        self.0.bytes.is_empty()
    }

    /// How many objects and arrays enclose the deepest value (`{"a":[1]}` is 2).
    pub fn depth(&self) -> usize {
        self.0.depth
    }

    /// The whole document.
    pub fn root(&self) -> JsonRef<'_> {
        JsonRef {
            view: &self.0,
            idx: 0,
        }
    }

    /// The value with this [`id`](JsonRef::id), if there is one.
    pub fn node(&self, id: usize) -> Option<JsonRef<'_>> {
        (id < self.0.nodes.len()).then_some(JsonRef {
            view: &self.0,
            idx: id,
        })
    }

    /// The top-level `model`, when it is a string.
    pub fn model(&self) -> Option<Cow<'_, str>> {
        self.root().get("model")?.as_str()
    }

    /// Whether the top-level `stream` is `true`.
    pub fn is_stream(&self) -> bool {
        self.root()
            .get("stream")
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
    }

    /// Whether a streamed answer was asked to end with usage (`stream_options.include_usage`).
    pub fn includes_usage(&self) -> bool {
        self.root()
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
    }

    /// The top-level `max_tokens`, else `max_completion_tokens`, when an unsigned integer.
    pub fn max_tokens(&self) -> Option<u64> {
        let root = self.root();
        root.get("max_tokens")
            .and_then(|v| v.as_u64())
            .or_else(|| root.get("max_completion_tokens").and_then(|v| v.as_u64()))
    }

    /// A view of this body with the strings or numbers named by `edits` (value [`id`]s, in
    /// increasing order) replaced by JSON strings of the given texts (escaped), every other
    /// byte as it was. The new view is built as the new body is written: nothing is parsed.
    ///
    /// No edits: this very view.
    ///
    /// # Errors
    ///
    /// [`EditError`]: an id that is out of range, not a string or number, or not after the
    /// previous one.
    ///
    /// [`id`]: JsonRef::id
    pub fn replace_strings<I, S>(&self, edits: I) -> Result<ChatView, EditError>
    where
        I: IntoIterator<Item = (usize, S)>,
        S: AsRef<str>,
    {
        let old = &*self.0;
        let b = &old.bytes[..];
        let mut out: Vec<u8> = Vec::new();
        // (old end, cumulative shift after this edit), in order.
        let mut shifts: Vec<(usize, isize, usize)> = Vec::new();
        let mut last_end = 0usize;
        let mut last_id: Option<usize> = None;
        let mut delta: isize = 0;
        for (id, text) in edits {
            let node = old.nodes.get(id).ok_or(EditError)?;
            if !matches!(node.kind, JsonKind::String | JsonKind::Number)
                || last_id.is_some_and(|l| id <= l)
                || node.start < last_end
            {
                return Err(EditError);
            }
            if out.capacity() == 0 {
                out.reserve(b.len() + 64);
            }
            out.extend_from_slice(&b[last_end..node.start]);
            let new_start = out.len();
            out.push(b'"');
            escape_json_into(&mut out, text.as_ref());
            out.push(b'"');
            delta += (out.len() - new_start) as isize - (node.end - node.start) as isize;
            shifts.push((node.end, delta, id));
            last_end = node.end;
            last_id = Some(id);
        }
        if shifts.is_empty() {
            return Ok(self.clone());
        }
        out.extend_from_slice(&b[last_end..]);
        // The shift of a byte position: the sum of the edits that end at or before it.
        let shift_at = |pos: usize| -> isize {
            let n = shifts.partition_point(|(end, _, _)| *end <= pos);
            if n == 0 { 0 } else { shifts[n - 1].1 }
        };
        let mut nodes = old.nodes.clone();
        let mut e = 0;
        for (i, n) in nodes.iter_mut().enumerate() {
            if e < shifts.len() && shifts[e].2 == i {
                let before = if e == 0 { 0 } else { shifts[e - 1].1 };
                let after = shifts[e].1;
                n.start = (n.start as isize + before) as usize;
                n.end = (n.end as isize + after) as usize;
                n.kind = JsonKind::String;
                n.escaped = out[n.start + 1..n.end - 1].contains(&b'\\');
                e += 1;
            } else {
                n.start = (n.start as isize + shift_at(n.start)) as usize;
                n.end = (n.end as isize + shift_at(n.end)) as usize;
            }
        }
        Ok(ChatView(Arc::new(Inner {
            bytes: Bytes::from(out),
            nodes,
            depth: old.depth,
        })))
    }
}

/// An edit list given to [`ChatView::replace_strings`] names a value that is not a string or
/// number, or is out of order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EditError;

impl fmt::Display for EditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("edits must name strings or numbers of the view, in increasing order")
    }
}

impl std::error::Error for EditError {}

/// Appends `s` as the inside of a JSON string (no quotes), escaped: `"`, `\`, `\n`, `\r`,
/// `\t` by their short forms, other control characters as `\u00XX`; everything else as it is.
pub fn escape_json_into(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let mut last = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&b[last..i]);
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(c >> 4) as usize],
                    HEX[(c & 0xf) as usize],
                ]);
                last = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&b[last..i]);
        out.extend_from_slice(esc);
        last = i + 1;
    }
    out.extend_from_slice(&b[last..]);
}

/// A request extension by which a layer above the ones that read the body (audit) asks to be
/// handed the last [`ChatView`] published below it ([`ChatView::publish`]): the view of the
/// body that was sent, when one was built.
#[derive(Clone, Default)]
pub struct ViewSlot(Arc<Mutex<Option<ChatView>>>);

impl fmt::Debug for ViewSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ViewSlot").finish_non_exhaustive()
    }
}

impl ViewSlot {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `view` in the slot (replacing an earlier one).
    pub fn set(&self, view: ChatView) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(view);
    }

    /// The last view put in the slot.
    pub fn get(&self) -> Option<ChatView> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One value of a [`ChatView`].
#[derive(Clone, Copy)]
pub struct JsonRef<'a> {
    view: &'a Inner,
    idx: usize,
}

impl fmt::Debug for JsonRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonRef")
            .field("id", &self.idx)
            .field("kind", &self.kind())
            .field("span", &self.span())
            .finish()
    }
}

impl<'a> JsonRef<'a> {
    fn node(&self) -> &'a Node {
        &self.view.nodes[self.idx]
    }

    /// This value's position in its view (pre-order), to name it in
    /// [`ChatView::replace_strings`] or [`ChatView::node`].
    pub fn id(&self) -> usize {
        self.idx
    }

    /// The kind of value.
    pub fn kind(&self) -> JsonKind {
        self.node().kind
    }

    /// The value's byte range in the body (a string's quotes included).
    pub fn span(&self) -> Range<usize> {
        let n = self.node();
        n.start..n.end
    }

    /// The value as written in the body.
    pub fn raw(&self) -> &'a str {
        let n = self.node();
        // Validated as UTF-8 when parsed; spans start and end at ASCII delimiters.
        std::str::from_utf8(&self.view.bytes[n.start..n.end]).expect("spans are UTF-8")
    }

    /// Whether a string has escapes (decoding it copies).
    pub fn is_escaped(&self) -> bool {
        self.node().escaped
    }

    /// The text of a string, unescaped (borrowed when it has no escapes). `None` for other
    /// kinds, and for a string whose escapes do not decode (a lone surrogate).
    pub fn as_str(&self) -> Option<Cow<'a, str>> {
        let n = self.node();
        if n.kind != JsonKind::String {
            return None;
        }
        let raw = self.raw();
        if n.escaped {
            serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
        } else {
            Some(Cow::Borrowed(&raw[1..raw.len() - 1]))
        }
    }

    /// The text of a string as UTF-8 bytes, unescaped (borrowed when it has no escapes): what
    /// [`as_str`](Self::as_str) gives, without checking the bytes for UTF-8 again (the view
    /// checked the whole body when it was parsed), for a reader that hashes or compares the
    /// text. `None` for other kinds, and for a string whose escapes do not decode.
    pub fn str_bytes(&self) -> Option<Cow<'a, [u8]>> {
        let n = self.node();
        if n.kind != JsonKind::String {
            return None;
        }
        let bytes: &'a [u8] = &self.view.bytes[n.start..n.end];
        if n.escaped {
            serde_json::from_slice::<String>(bytes)
                .ok()
                .map(|s| Cow::Owned(s.into_bytes()))
        } else {
            Some(Cow::Borrowed(&bytes[1..bytes.len() - 1]))
        }
    }

    /// A boolean's value.
    pub fn as_bool(&self) -> Option<bool> {
        match self.kind() {
            JsonKind::Bool => Some(self.raw() == "true"),
            _ => None,
        }
    }

    /// A number's value, when it is an unsigned integer written without fraction or exponent.
    pub fn as_u64(&self) -> Option<u64> {
        match self.kind() {
            JsonKind::Number => self.raw().parse().ok(),
            _ => None,
        }
    }

    /// Whether this is `null`.
    pub fn is_null(&self) -> bool {
        self.kind() == JsonKind::Null
    }

    /// How many elements (array) or members (object); 0 for other kinds.
    pub fn len(&self) -> usize {
        self.node().count
    }

    /// Whether an array or object is empty (and always for other kinds).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements of an array (nothing for other kinds).
    pub fn items(&self) -> Children<'a> {
        let n = self.node();
        Children {
            view: self.view,
            next: self.idx + 1,
            left: if n.kind == JsonKind::Array {
                n.count
            } else {
                0
            },
        }
    }

    /// The members of an object as (key, value), in document order, duplicates included
    /// (nothing for other kinds).
    pub fn members(&self) -> Members<'a> {
        let n = self.node();
        Members {
            view: self.view,
            next: self.idx + 1,
            left: if n.kind == JsonKind::Object {
                n.count
            } else {
                0
            },
        }
    }

    /// The value of member `key` of an object; the last one when the key repeats (as
    /// serde_json reads it). Keys are compared unescaped.
    pub fn get(&self, key: &str) -> Option<JsonRef<'a>> {
        let mut found = None;
        for (k, v) in self.members() {
            let same = if k.is_escaped() {
                k.as_str().is_some_and(|s| s == key)
            } else {
                let raw = k.raw();
                &raw[1..raw.len() - 1] == key
            };
            if same {
                found = Some(v);
            }
        }
        found
    }
}

/// The elements of an array: [`JsonRef::items`].
#[derive(Debug, Clone)]
pub struct Children<'a> {
    view: &'a Inner,
    next: usize,
    left: usize,
}

impl<'a> Iterator for Children<'a> {
    type Item = JsonRef<'a>;

    fn next(&mut self) -> Option<JsonRef<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let r = JsonRef {
            view: self.view,
            idx: self.next,
        };
        self.next = self.view.nodes[self.next].next;
        Some(r)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Children<'_> {}

/// The members of an object: [`JsonRef::members`].
#[derive(Debug, Clone)]
pub struct Members<'a> {
    view: &'a Inner,
    next: usize,
    left: usize,
}

impl<'a> Iterator for Members<'a> {
    type Item = (JsonRef<'a>, JsonRef<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let k = JsonRef {
            view: self.view,
            idx: self.next,
        };
        let v = JsonRef {
            view: self.view,
            idx: self.next + 1,
        };
        self.next = self.view.nodes[self.next + 1].next;
        Some((k, v))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Members<'_> {}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatView").finish_non_exhaustive()
    }
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
    nodes: Vec<Node>,
    depth: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        self.i = crate::scan::skip_ws(self.b, self.i);
    }

    fn leaf(&mut self, kind: JsonKind, start: usize, escaped: bool) {
        let next = self.nodes.len() + 1;
        self.nodes.push(Node {
            kind,
            escaped,
            start,
            end: self.i,
            next,
            count: 0,
        });
    }

    fn value(&mut self, depth: usize) -> Result<(), ViewError> {
        let start = self.i;
        match self.b.get(self.i) {
            Some(b'{' | b'[') if depth >= MAX_DEPTH => Err(ViewError::TooDeep),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => {
                let escaped = self.string()?;
                self.leaf(JsonKind::String, start, escaped);
                Ok(())
            }
            Some(b't') => self.lit(b"true", JsonKind::Bool),
            Some(b'f') => self.lit(b"false", JsonKind::Bool),
            Some(b'n') => self.lit(b"null", JsonKind::Null),
            Some(b'-' | b'0'..=b'9') => {
                self.number()?;
                self.leaf(JsonKind::Number, start, false);
                Ok(())
            }
            _ => Err(ViewError::Syntax),
        }
    }

    fn lit(&mut self, l: &[u8], kind: JsonKind) -> Result<(), ViewError> {
        let start = self.i;
        if self.b[self.i..].starts_with(l) {
            self.i += l.len();
            self.leaf(kind, start, false);
            Ok(())
        } else {
            Err(ViewError::Syntax)
        }
    }

    fn number(&mut self) -> Result<(), ViewError> {
        self.i = crate::scan::number_end(self.b, self.i).ok_or(ViewError::Syntax)?;
        Ok(())
    }

    /// Past a string; whether it has escapes.
    fn string(&mut self) -> Result<bool, ViewError> {
        let (end, escaped) =
            crate::scan::string_end(self.b, self.i + 1).ok_or(ViewError::Syntax)?;
        self.i = end;
        Ok(escaped)
    }

    /// Opens a container node; returns its index.
    fn open(&mut self, kind: JsonKind, depth: usize) -> usize {
        self.depth = self.depth.max(depth + 1);
        let idx = self.nodes.len();
        self.nodes.push(Node {
            kind,
            escaped: false,
            start: self.i,
            end: 0,
            next: 0,
            count: 0,
        });
        self.i += 1;
        idx
    }

    fn close(&mut self, idx: usize, count: usize) {
        self.i += 1;
        let next = self.nodes.len();
        let n = &mut self.nodes[idx];
        n.end = self.i;
        n.next = next;
        n.count = count;
    }

    fn object(&mut self, depth: usize) -> Result<(), ViewError> {
        let idx = self.open(JsonKind::Object, depth);
        self.ws();
        let mut count = 0;
        if self.b.get(self.i) == Some(&b'}') {
            self.close(idx, 0);
            return Ok(());
        }
        loop {
            self.ws();
            if self.b.get(self.i) != Some(&b'"') {
                return Err(ViewError::Syntax);
            }
            let start = self.i;
            let escaped = self.string()?;
            self.leaf(JsonKind::String, start, escaped);
            self.ws();
            if self.b.get(self.i) != Some(&b':') {
                return Err(ViewError::Syntax);
            }
            self.i += 1;
            self.ws();
            self.value(depth + 1)?;
            count += 1;
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.close(idx, count);
                    return Ok(());
                }
                _ => return Err(ViewError::Syntax),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), ViewError> {
        let idx = self.open(JsonKind::Array, depth);
        self.ws();
        let mut count = 0;
        if self.b.get(self.i) == Some(&b']') {
            self.close(idx, 0);
            return Ok(());
        }
        loop {
            self.ws();
            self.value(depth + 1)?;
            count += 1;
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.close(idx, count);
                    return Ok(());
                }
                _ => return Err(ViewError::Syntax),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The view's values rebuilt as a serde_json value.
    fn to_value(r: JsonRef<'_>) -> Value {
        match r.kind() {
            JsonKind::Null => Value::Null,
            JsonKind::Bool => Value::Bool(r.as_bool().unwrap()),
            JsonKind::Number => serde_json::from_str(r.raw()).unwrap(),
            JsonKind::String => {
                let text = r.as_str().unwrap();
                // The bytes a hashing reader takes are the same text.
                assert_eq!(r.str_bytes().as_deref(), Some(text.as_bytes()));
                Value::String(text.into_owned())
            }
            JsonKind::Array => Value::Array(r.items().map(to_value).collect()),
            JsonKind::Object => Value::Object(
                r.members()
                    .map(|(k, v)| (k.as_str().unwrap().into_owned(), to_value(v)))
                    .collect(),
            ),
        }
    }

    const DOC: &str = r#" {"model":"deepseek-chat","messages":[{"role":"user","content":"a\"b\u00e9"},
        {"role":"user","content":[{"type":"text","text":"x"},{"type":"image_url","image_url":{"url":"u"}}]}],
        "temperature":0.5,"max_tokens":12,"stream":true,"stream_options":{"include_usage":true},
        "stop":["a",1,-2.5e3,null,false,[],{}],"model":"last"} "#;

    #[test]
    fn parses_like_serde_json() {
        let view = ChatView::parse(Bytes::from_static(DOC.as_bytes())).unwrap();
        let ours = to_value(view.root());
        let theirs: Value = serde_json::from_str(DOC).unwrap();
        assert_eq!(ours, theirs);
        assert_eq!(view.model().as_deref(), Some("last"), "the last key wins");
        assert!(view.is_stream() && view.includes_usage());
        assert_eq!(view.max_tokens(), Some(12));
        assert_eq!(view.depth(), 6);
    }

    #[test]
    fn refuses_what_is_not_one_document() {
        for bad in [
            &b""[..],
            b"{",
            b"{\"a\":1,}",
            b"[1 2]",
            b"{} {}",
            b"\"\x01\"",
            b"\"\\x\"",
            b"01",
            b"1.",
            b"tru",
        ] {
            assert_eq!(
                ChatView::parse(Bytes::from_static(bad)).unwrap_err(),
                ViewError::Syntax,
                "{bad:?}"
            );
        }
        assert_eq!(
            ChatView::parse(Bytes::from_static(b"\"\xff\"")).unwrap_err(),
            ViewError::NotUtf8
        );
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(
            ChatView::parse(Bytes::from(deep)).unwrap_err(),
            ViewError::TooDeep
        );
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert_eq!(ChatView::parse(Bytes::from(ok)).unwrap().depth(), MAX_DEPTH);
    }

    #[test]
    fn a_view_describes_only_its_own_buffer() {
        let body = Bytes::from(DOC.as_bytes().to_vec());
        let view = ChatView::parse(body.clone()).unwrap();
        let mut ext = Extensions::new();
        view.publish(&mut ext);
        assert!(ChatView::get(&ext, &body).is_some());
        // Equal bytes in another buffer: not described.
        let copy = Bytes::copy_from_slice(&body);
        assert!(ChatView::get(&ext, &copy).is_none());
        // A prefix of the same buffer: not described.
        assert!(ChatView::get(&ext, &body.slice(..body.len() - 1)).is_none());
        // get_or_parse replaces the stale view with one of the bytes at hand.
        let fresh = ChatView::get_or_parse(&mut ext, &copy).unwrap();
        assert!(fresh.describes(&copy));
        assert!(ext.get::<ChatView>().unwrap().describes(&copy));
        // A body that does not parse leaves no view behind.
        let bad = Bytes::from_static(b"{");
        assert!(ChatView::get_or_parse(&mut ext, &bad).is_err());
        assert!(ext.get::<ChatView>().is_none());
    }

    #[test]
    fn publishing_fills_a_slot_above() {
        let slot = ViewSlot::new();
        let mut ext = Extensions::new();
        ext.insert(slot.clone());
        let body = Bytes::from_static(b"{\"model\":\"m\"}");
        let v = ChatView::get_or_parse(&mut ext, &body).unwrap();
        assert!(slot.get().unwrap().describes(v.bytes()));
    }

    #[test]
    fn replacing_strings_builds_the_view_of_the_output() {
        let view = ChatView::parse(Bytes::from_static(DOC.as_bytes())).unwrap();
        // Every string and number that is not a key, replaced by something longer or shorter.
        let mut keys = std::collections::HashSet::new();
        fn collect_keys(r: JsonRef<'_>, keys: &mut std::collections::HashSet<usize>) {
            for (k, v) in r.members() {
                keys.insert(k.id());
                collect_keys(v, keys);
            }
            for v in r.items() {
                collect_keys(v, keys);
            }
        }
        collect_keys(view.root(), &mut keys);
        for stride in 1..4 {
            let edits: Vec<(usize, String)> = (0..view.0.nodes.len())
                .filter(|i| {
                    !keys.contains(i)
                        && matches!(view.0.nodes[*i].kind, JsonKind::String | JsonKind::Number)
                })
                .step_by(stride)
                .map(|i| (i, format!("<{i}>{}", "\"\n".repeat(i % 3))))
                .collect();
            let new = view.replace_strings(edits.clone()).unwrap();
            // The edited view equals a fresh parse of its bytes, value by value and span by span.
            let fresh = ChatView::parse(new.bytes().clone()).unwrap();
            assert_eq!(new.0.nodes.len(), fresh.0.nodes.len());
            for (a, b) in new.0.nodes.iter().zip(&fresh.0.nodes) {
                assert_eq!(
                    (a.kind, a.escaped, a.start, a.end, a.next, a.count),
                    (b.kind, b.escaped, b.start, b.end, b.next, b.count)
                );
            }
            for (id, text) in &edits {
                assert_eq!(new.node(*id).unwrap().as_str().unwrap(), *text);
            }
        }
        assert!(view.replace_strings([(0, "x")]).is_err(), "not a string");
        let model = view.root().get("model").unwrap().id();
        assert!(
            view.replace_strings([(model, "a"), (model, "b")]).is_err(),
            "out of order"
        );
        let same = view.replace_strings(Vec::<(usize, &str)>::new()).unwrap();
        assert!(same.describes(view.bytes()));
    }

    proptest::proptest! {
        /// For any bytes: no panic; whatever serde_json reads, the view reads too, to the same
        /// values (and the spans of its values are where they are in the bytes).
        #[test]
        fn reads_what_serde_json_reads(data in proptest::collection::vec(
            proptest::sample::select(b"{}[]\",:01-9e.E+-\\u aA\tnulltruefalse\xc3\xa9".to_vec()), 0..48)) {
            let view = ChatView::parse(Bytes::from(data.clone()));
            if let Ok(v) = serde_json::from_slice::<Value>(&data) {
                let view = view.expect("serde_json read it");
                proptest::prop_assert_eq!(to_value(view.root()), v);
            }
        }
    }

    #[test]
    fn string_bytes_only_of_strings_that_decode() {
        let view = ChatView::parse(Bytes::from_static(br#"["a\u00e9", "\ud800", 1]"#)).unwrap();
        let items: Vec<_> = view.root().items().collect();
        assert_eq!(items[0].str_bytes().as_deref(), Some("a\u{e9}".as_bytes()));
        assert!(items[1].str_bytes().is_none() && items[1].as_str().is_none());
        assert!(items[2].str_bytes().is_none());
    }

    #[test]
    fn escapes_like_serde_json_reads_them() {
        for s in ["plain", "q\"b\\s", "\n\r\t\u{1}\u{1f}", "é你😀", "/"] {
            let mut out = vec![b'"'];
            escape_json_into(&mut out, s);
            out.push(b'"');
            assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), s);
        }
    }
}
