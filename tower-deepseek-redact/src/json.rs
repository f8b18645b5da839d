//! A small scanner over raw JSON bytes that finds the string values to rewrite, so that only
//! those strings change and every other byte of the body stays as it was.
//!
//! It selects strings in one of two ways, in the same single pass over the bytes:
//!
//! - at given [`JsonPath`]s (the content filter's answer fields);
//! - every string value of a request except its structural fields ([`find_request_strings`]),
//!   plus extra paths that put structural ones back; the field list is in the
//!   [`RedactLayer`](crate::RedactLayer) docs.

use std::borrow::Cow;
use std::fmt;

use tower_deepseek_core::view::{ChatView, JsonKind, JsonRef};

use crate::ConfigError;

/// One segment of a [`JsonPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    AnyIndex,
}

/// A path to string values in a JSON document: keys joined with `.`, `[]` for any array
/// element, e.g. `messages[].content` or `metadata.notes[]`.
#[derive(Clone, PartialEq, Eq)]
pub struct JsonPath {
    segs: Vec<Seg>,
    /// Only inside objects whose `type` is `"text"` (or that have no `type`).
    text_parts_only: bool,
    source: String,
}

impl fmt::Debug for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl JsonPath {
    /// Parses a path.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an empty path or an empty key.
    pub fn parse(path: &str) -> Result<Self, ConfigError> {
        let mut segs = Vec::new();
        if path.is_empty() {
            return Err(ConfigError::new("path", "must not be empty"));
        }
        for part in path.split('.') {
            let mut key = part;
            let mut idx = 0;
            while let Some(k) = key.strip_suffix("[]") {
                key = k;
                idx += 1;
            }
            if key.is_empty() || key.contains(['[', ']']) {
                return Err(ConfigError::new(
                    "path",
                    format!(
                        "{path:?} is invalid: use keys joined with '.', and '[]' for array elements"
                    ),
                ));
            }
            segs.push(Seg::Key(key.to_owned()));
            segs.extend(std::iter::repeat_n(Seg::AnyIndex, idx));
        }
        Ok(Self {
            segs,
            text_parts_only: false,
            source: path.to_owned(),
        })
    }

    fn text_part(mut self) -> Self {
        self.text_parts_only = true;
        self
    }

    /// The paths that [`RedactLayer`](crate::RedactLayer) scanned before it scanned every
    /// string of a request: `messages[].content` (a string), `messages[].content[].text`
    /// (text parts), `messages[].tool_calls[].function.arguments`, `prompt` and `suffix`.
    #[deprecated(
        since = "0.1.0",
        note = "RedactLayer now scans every string value of a request except its structural fields (see the docs of RedactLayer); JsonPath only names extra paths"
    )]
    pub fn defaults() -> Vec<JsonPath> {
        let p = |s: &str| JsonPath::parse(s).expect("built-in path");
        vec![
            p("messages[].content"),
            p("messages[].content[].text").text_part(),
            p("messages[].tool_calls[].function.arguments"),
            p("prompt"),
            p("suffix"),
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathSeg<'a> {
    Key(Cow<'a, str>),
    Index,
}

/// The byte range of a JSON string (quotes included) or number, whether it holds escapes, and
/// what it is (see [`find_request_strings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StrSpan {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) escaped: bool,
    pub(crate) kind: SpanKind,
}

/// What a reported span holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpanKind {
    /// A string of text.
    Text,
    /// A string that is the URL (or data URL) of a content part.
    Url,
    /// A number (its digits are scanned as text; a masked number becomes a string).
    Number,
}

/// Why the scanner could not read a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// Not valid JSON.
    Syntax,
    /// Objects and arrays nested deeper than [`MAX_DEPTH`].
    TooDeep,
}

/// How many objects and arrays may enclose one another (`[[1]]` is two levels). Deeper is
/// [`Invalid::TooDeep`]: a refusal, never a pass. The scanner recurses once per level, well
/// within a thread's stack.
pub(crate) const MAX_DEPTH: usize = 256;

/// Which strings the scanner reports.
#[derive(Clone, Copy)]
enum Select<'p> {
    /// The strings at these paths.
    Paths(&'p [JsonPath]),
    /// Every string value but a request's structural fields; these paths put some back.
    Request(&'p [JsonPath]),
}

struct Scanner<'a, 'p> {
    b: &'a [u8],
    /// `b` as text, when the caller already validated it as UTF-8: keys are sliced from it
    /// without validating them again.
    text: Option<&'a str>,
    i: usize,
    select: Select<'p>,
    path: Vec<PathSeg<'a>>,
    out: Vec<StrSpan>,
}

/// Finds the strings at `paths` in `b`, which must be one valid JSON document (leading and
/// trailing whitespace allowed). Spans are returned in order. Only the strings it reports are
/// decoded (and checked for UTF-8) by their readers: the content filter uses it on answers. The
/// request path validates a whole body first ([`find_request_strings`] takes a `&str`).
pub(crate) fn find_strings(b: &[u8], paths: &[JsonPath]) -> Result<Vec<StrSpan>, Invalid> {
    scan(b, None, Select::Paths(paths))
}

/// Finds every value of a chat or FIM request that can carry user or model text: every string
/// but the structural fields ([`request_field`]), plus those at `extra` paths, as
/// [`SpanKind::Text`] or [`SpanKind::Url`]; and every number but the top-level parameters
/// (`temperature`, `seed`, ...; not `user`) and `logit_bias`, as [`SpanKind::Number`]. Object
/// keys are not reported. `b` must be one valid JSON document. Spans are returned in order.
#[cfg_attr(not(test), allow(dead_code))] // the oracle of `find_request_values`' tests
pub(crate) fn find_request_strings(doc: &str, extra: &[JsonPath]) -> Result<Vec<StrSpan>, Invalid> {
    scan(doc.as_bytes(), Some(doc), Select::Request(extra))
}

fn scan<'a>(
    b: &'a [u8],
    text: Option<&'a str>,
    select: Select<'_>,
) -> Result<Vec<StrSpan>, Invalid> {
    let mut s = Scanner {
        b,
        text,
        i: 0,
        select,
        path: Vec::new(),
        out: Vec::new(),
    };
    s.ws();
    s.value(0, &mut None)?;
    s.ws();
    if s.i != b.len() {
        return Err(Invalid::Syntax);
    }
    if matches!(select, Select::Paths(_)) {
        // Text parts are reported when their object ends, after later strings.
        s.out.sort_unstable_by_key(|s| s.start);
    }
    Ok(s.out)
}

/// Whether a number at `path` of a request may be data (scanned): not a top-level parameter
/// (`temperature`, `max_tokens`, `seed`, ...; `user` is no parameter) and not in
/// `logit_bias`.
fn number_is_data(path: &[PathSeg<'_>]) -> bool {
    match path.first() {
        Some(PathSeg::Key(k)) if k == "logit_bias" => false,
        Some(PathSeg::Key(k)) if path.len() == 1 => k == "user",
        _ => true,
    }
}

/// What a request's string value is, by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// User or model text: scanned.
    Text,
    /// A URL of a content part: scanned as a URL.
    Url,
    /// A structural field: left as it is.
    Structural,
}

/// A path pattern: `Some(key)`, or `None` for any array index.
type Pattern = &'static [Option<&'static str>];

const M: Option<&str> = Some("messages");
const I: Option<&str> = None;

/// The structural string fields of chat and FIM requests: identifiers and names the API
/// matches exactly, and enumerated values. Kept byte-identical.
const STRUCTURAL: &[Pattern] = &[
    &[Some("model")],
    &[Some("tool_choice")],
    &[Some("function_call")],
    &[Some("reasoning_effort")],
    &[Some("service_tier")],
    &[M, I, Some("role")],
    &[M, I, Some("tool_call_id")],
    &[M, I, Some("tool_calls"), I, Some("id")],
    &[M, I, Some("tool_calls"), I, Some("type")],
    &[M, I, Some("tool_calls"), I, Some("function"), Some("name")],
    &[M, I, Some("function_call"), Some("name")],
    &[M, I, Some("content"), I, Some("type")],
    &[M, I, Some("content"), I, Some("image_url"), Some("detail")],
    &[
        M,
        I,
        Some("content"),
        I,
        Some("input_audio"),
        Some("format"),
    ],
    &[Some("tools"), I, Some("type")],
    &[Some("tools"), I, Some("function"), Some("name")],
    &[Some("functions"), I, Some("name")],
    &[Some("tool_choice"), Some("type")],
    &[Some("tool_choice"), Some("function"), Some("name")],
    &[Some("function_call"), Some("name")],
    &[Some("response_format"), Some("type")],
    &[Some("response_format"), Some("json_schema"), Some("name")],
    &[Some("thinking"), Some("type")],
];

/// The URL (or data URL) fields of content parts.
const URLS: &[Pattern] = &[
    &[M, I, Some("content"), I, Some("image_url"), Some("url")],
    &[M, I, Some("content"), I, Some("image_url")],
    &[M, I, Some("content"), I, Some("video_url"), Some("url")],
    &[M, I, Some("content"), I, Some("file"), Some("file_data")],
];

/// The last keys of [`STRUCTURAL`] and [`URLS`]: any other string is text, at the cost of
/// one comparison of its key.
fn may_be_special(last: &str) -> bool {
    matches!(
        last,
        "model"
            | "tool_choice"
            | "function_call"
            | "reasoning_effort"
            | "service_tier"
            | "role"
            | "tool_call_id"
            | "id"
            | "type"
            | "name"
            | "detail"
            | "format"
            | "url"
            | "image_url"
            | "file_data"
    )
}

fn same(path: &[PathSeg<'_>], pattern: Pattern) -> bool {
    path.len() == pattern.len()
        && path.iter().zip(pattern).all(|(seg, p)| match (seg, p) {
            (PathSeg::Index, None) => true,
            (PathSeg::Key(k), Some(p)) => k == p,
            _ => false,
        })
}

/// What the string value at `path` is in a chat or FIM request.
fn request_field(path: &[PathSeg<'_>]) -> Field {
    let Some(PathSeg::Key(last)) = path.last() else {
        // An array element (`prompt[]`, `stop[]`): text.
        return Field::Text;
    };
    if !may_be_special(last) {
        Field::Text
    } else if STRUCTURAL.iter().any(|p| same(path, p)) {
        Field::Structural
    } else if URLS.iter().any(|p| same(path, p)) {
        Field::Url
    } else {
        Field::Text
    }
}

/// Whether `path` is one of `paths` (`Some(text_parts_only)` of the first that matches).
fn path_matches(paths: &[JsonPath], path: &[PathSeg<'_>]) -> Option<bool> {
    'paths: for p in paths {
        if p.segs.len() != path.len() {
            continue;
        }
        for (a, b) in p.segs.iter().zip(path) {
            match (a, b) {
                (Seg::AnyIndex, PathSeg::Index) => {}
                (Seg::Key(k), PathSeg::Key(j)) if k == j => {}
                _ => continue 'paths,
            }
        }
        return Some(p.text_parts_only);
    }
    None
}

/// What [`find_request_strings`] finds, read from core's shared view of the body instead of
/// scanning its bytes again: the ids of the values to scan, with their kind, in document
/// order.
pub(crate) fn find_request_values(
    view: &ChatView,
    extra: &[JsonPath],
) -> Result<Vec<(usize, SpanKind)>, Invalid> {
    fn walk<'a>(
        r: JsonRef<'a>,
        path: &mut Vec<PathSeg<'a>>,
        extra: &[JsonPath],
        out: &mut Vec<(usize, SpanKind)>,
    ) -> Result<(), Invalid> {
        match r.kind() {
            JsonKind::Object => {
                for (k, v) in r.members() {
                    path.push(PathSeg::Key(k.as_str().ok_or(Invalid::Syntax)?));
                    walk(v, path, extra, out)?;
                    path.pop();
                }
            }
            JsonKind::Array => {
                path.push(PathSeg::Index);
                for v in r.items() {
                    walk(v, path, extra, out)?;
                }
                path.pop();
            }
            JsonKind::String => match request_field(path) {
                Field::Text => out.push((r.id(), SpanKind::Text)),
                Field::Url => out.push((r.id(), SpanKind::Url)),
                Field::Structural => {
                    if !extra.is_empty() && path_matches(extra, path).is_some() {
                        out.push((r.id(), SpanKind::Text));
                    }
                }
            },
            JsonKind::Number if number_is_data(path) => out.push((r.id(), SpanKind::Number)),
            _ => {}
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(view.root(), &mut Vec::new(), extra, &mut out)?;
    Ok(out)
}

/// What an enclosing object learns about its `type` member and its pending text-part spans.
struct ObjCtx {
    type_text: Option<bool>,
    pending: Vec<StrSpan>,
}

impl<'a> Scanner<'a, '_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn matches(&self, paths: &[JsonPath]) -> Option<bool> {
        path_matches(paths, &self.path)
    }

    fn value(&mut self, depth: usize, obj: &mut Option<ObjCtx>) -> Result<(), Invalid> {
        match self.b.get(self.i) {
            Some(b'{' | b'[') if depth >= MAX_DEPTH => Err(Invalid::TooDeep),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => {
                let span = self.string()?;
                match self.select {
                    Select::Paths(paths) => self.select_at_paths(paths, span, obj),
                    Select::Request(extra) => match request_field(&self.path) {
                        Field::Text => self.out.push(span),
                        Field::Url => self.out.push(StrSpan {
                            kind: SpanKind::Url,
                            ..span
                        }),
                        Field::Structural => {
                            if !extra.is_empty() && self.matches(extra).is_some() {
                                self.out.push(span);
                            }
                        }
                    },
                }
                Ok(())
            }
            Some(b't') => self.lit(b"true"),
            Some(b'f') => self.lit(b"false"),
            Some(b'n') => self.lit(b"null"),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.i;
                self.number()?;
                if matches!(self.select, Select::Request(_)) && number_is_data(&self.path) {
                    self.out.push(StrSpan {
                        start,
                        end: self.i,
                        escaped: false,
                        kind: SpanKind::Number,
                    });
                }
                Ok(())
            }
            _ => Err(Invalid::Syntax),
        }
    }

    fn select_at_paths(&mut self, paths: &[JsonPath], span: StrSpan, obj: &mut Option<ObjCtx>) {
        if let Some(conditional) = self.matches(paths) {
            if conditional {
                if let Some(o) = obj.as_mut() {
                    o.pending.push(span);
                }
            } else {
                self.out.push(span);
            }
        }
        if let (Some(o), Some(PathSeg::Key(k))) = (obj.as_mut(), self.path.last())
            && k == "type"
        {
            o.type_text = Some(&self.b[span.start..span.end] == b"\"text\"");
        }
    }

    fn lit(&mut self, l: &[u8]) -> Result<(), Invalid> {
        if self.b[self.i..].starts_with(l) {
            self.i += l.len();
            Ok(())
        } else {
            Err(Invalid::Syntax)
        }
    }

    fn number(&mut self) -> Result<(), Invalid> {
        let s = self.i;
        if self.b[self.i] == b'-' {
            self.i += 1;
        }
        let digits = |sc: &mut Self| {
            let st = sc.i;
            while sc.i < sc.b.len() && sc.b[sc.i].is_ascii_digit() {
                sc.i += 1;
            }
            sc.i > st
        };
        match self.b.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return Err(Invalid::Syntax),
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if !digits(self) {
                return Err(Invalid::Syntax);
            }
        }
        if matches!(self.b.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.b.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !digits(self) {
                return Err(Invalid::Syntax);
            }
        }
        debug_assert!(self.i > s);
        Ok(())
    }

    fn string(&mut self) -> Result<StrSpan, Invalid> {
        let start = self.i;
        self.i += 1;
        let mut escaped = false;
        loop {
            let rest = &self.b[self.i..];
            let Some(off) = memchr::memchr2(b'"', b'\\', rest) else {
                return Err(Invalid::Syntax);
            };
            if rest[..off].iter().any(|c| *c < 0x20) {
                return Err(Invalid::Syntax);
            }
            self.i += off;
            if self.b[self.i] == b'"' {
                self.i += 1;
                return Ok(StrSpan {
                    start,
                    end: self.i,
                    escaped,
                    kind: SpanKind::Text,
                });
            }
            escaped = true;
            match self.b.get(self.i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 2,
                Some(b'u') => {
                    let hex = self.b.get(self.i + 2..self.i + 6).ok_or(Invalid::Syntax)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return Err(Invalid::Syntax);
                    }
                    self.i += 6;
                }
                _ => return Err(Invalid::Syntax),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<(), Invalid> {
        self.i += 1;
        let mut ctx = Some(ObjCtx {
            type_text: None,
            pending: Vec::new(),
        });
        self.ws();
        if self.b.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if self.b.get(self.i) != Some(&b'"') {
                return Err(Invalid::Syntax);
            }
            let k = self.string()?;
            let key: Cow<'a, str> = match self.text {
                // Quotes are ASCII: the span's ends are character boundaries.
                Some(t) if !k.escaped => Cow::Borrowed(&t[k.start + 1..k.end - 1]),
                Some(t) => Cow::Owned(
                    serde_json::from_str::<String>(&t[k.start..k.end])
                        .map_err(|_| Invalid::Syntax)?,
                ),
                None => {
                    let s = std::str::from_utf8(&self.b[k.start..k.end])
                        .map_err(|_| Invalid::Syntax)?;
                    if k.escaped {
                        Cow::Owned(serde_json::from_str::<String>(s).map_err(|_| Invalid::Syntax)?)
                    } else {
                        Cow::Borrowed(&s[1..s.len() - 1])
                    }
                }
            };
            self.ws();
            if self.b.get(self.i) != Some(&b':') {
                return Err(Invalid::Syntax);
            }
            self.i += 1;
            self.ws();
            self.path.push(PathSeg::Key(key));
            self.value(depth + 1, &mut ctx)?;
            self.path.pop();
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    break;
                }
                _ => return Err(Invalid::Syntax),
            }
        }
        if let Some(c) = ctx
            && c.type_text != Some(false)
        {
            self.out.extend(c.pending);
        }
        Ok(())
    }

    fn array(&mut self, depth: usize) -> Result<(), Invalid> {
        self.i += 1;
        self.ws();
        if self.b.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(());
        }
        self.path.push(PathSeg::Index);
        loop {
            self.ws();
            self.value(depth + 1, &mut None)?;
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    break;
                }
                _ => return Err(Invalid::Syntax),
            }
        }
        self.path.pop();
        Ok(())
    }
}

/// The text of a span (a string unescaped, or a number's digits) of a document already known
/// to be UTF-8.
#[cfg(test)]
pub(crate) fn span_text(doc: &str, s: StrSpan) -> Result<Cow<'_, str>, Invalid> {
    let raw = &doc[s.start..s.end];
    if s.kind == SpanKind::Number {
        Ok(Cow::Borrowed(raw))
    } else if s.escaped {
        serde_json::from_str::<String>(raw)
            .map(Cow::Owned)
            .map_err(|_| Invalid::Syntax)
    } else {
        Ok(Cow::Borrowed(&raw[1..raw.len() - 1]))
    }
}

/// The text of a JSON string span (unescaped).
pub(crate) fn string_text<'a>(b: &'a [u8], s: StrSpan) -> Result<Cow<'a, str>, Invalid> {
    let raw = std::str::from_utf8(&b[s.start..s.end]).map_err(|_| Invalid::Syntax)?;
    if s.escaped {
        serde_json::from_str::<String>(raw)
            .map(Cow::Owned)
            .map_err(|_| Invalid::Syntax)
    } else {
        Ok(Cow::Borrowed(&raw[1..raw.len() - 1]))
    }
}

/// Appends `s` as the inside of a JSON string (no quotes), escaped (core's escaping, which the
/// request side's [`ChatView::replace_strings`] uses too).
pub(crate) fn escape_into(out: &mut Vec<u8>, s: &str) {
    tower_deepseek_core::view::escape_json_into(out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(body: &str) -> Vec<String> {
        #[allow(deprecated)]
        let spans = find_strings(body.as_bytes(), &JsonPath::defaults()).unwrap();
        spans
            .into_iter()
            .map(|s| string_text(body.as_bytes(), s).unwrap().into_owned())
            .collect()
    }

    /// The strings a request scan reports, URLs marked with a leading `url:`.
    fn request_texts(body: &str, extra: &[&str]) -> Vec<String> {
        let extra: Vec<JsonPath> = extra.iter().map(|p| JsonPath::parse(p).unwrap()).collect();
        let spans = find_request_strings(body, &extra).unwrap();
        // The layer's path, over core's shared view, finds the very same values.
        let view = ChatView::parse(bytes::Bytes::copy_from_slice(body.as_bytes())).unwrap();
        let found: Vec<(std::ops::Range<usize>, SpanKind)> = find_request_values(&view, &extra)
            .unwrap()
            .into_iter()
            .map(|(id, kind)| (view.node(id).unwrap().span(), kind))
            .collect();
        let scanned: Vec<(std::ops::Range<usize>, SpanKind)> =
            spans.iter().map(|s| (s.start..s.end, s.kind)).collect();
        assert_eq!(found, scanned, "{body}");
        spans
            .into_iter()
            .map(|s| {
                let t = span_text(body, s).unwrap().into_owned();
                match s.kind {
                    SpanKind::Url => format!("url:{t}"),
                    SpanKind::Number => format!("num:{t}"),
                    SpanKind::Text => t,
                }
            })
            .collect()
    }

    #[test]
    fn finds_text_at_paths() {
        let body = r#"{"model":"m","messages":[{"role":"system","content":"sys"},
            {"role":"user","content":[{"type":"text","text":"a\"b"},{"type":"image_url","image_url":{"url":"u"},"text":"no"},{"text":"t2","type":"text"}]},
            {"role":"assistant","content":null,"reasoning_content":"r","tool_calls":[{"id":"1","function":{"name":"f","arguments":"{\"x\":1}"}}]}],
            "prompt":"p","suffix":"s","other":{"content":"x"}}"#;
        assert_eq!(texts(body), ["sys", "a\"b", "t2", "{\"x\":1}", "p", "s"]);
    }

    #[test]
    fn a_request_scan_reports_every_string_but_the_structural_ones() {
        let body = r#"{"model":"deepseek-chat","user":"u1","metadata":{"note":"n","type":"t","phone":13800138000},
            "messages":[
              {"role":"system","name":"sys-name","content":"sys"},
              {"role":"user","content":[{"type":"text","text":"a\"b"},
                 {"type":"image_url","image_url":{"url":"https://x/i.png?q=1","detail":"high"},"text":"stray"},
                 {"type":"image_url","image_url":"https://y/j.png"},
                 {"type":"input_audio","input_audio":{"data":"QUJD","format":"wav"}},
                 {"type":"file","file":{"filename":"f.pdf","file_data":"data:application/pdf;base64,QUJD"}}]},
              {"role":"assistant","content":null,"reasoning_content":"r","prefix":"pre",
               "tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"x\":1}"}}],
               "function_call":{"name":"g","arguments":"{}"}},
              {"role":"tool","tool_call_id":"call_1","content":"result"}],
            "tools":[{"type":"function","function":{"name":"lookup","description":"d1",
               "parameters":{"type":"object","properties":{"q":{"type":"string","description":"d2",
                 "items":{"description":"d3"},"enum":["e1"],"examples":["x1"]}},"required":["q"]}}}],
            "functions":[{"name":"legacy","description":"d4","parameters":{"properties":{"a":{"description":"d5"}}}}],
            "tool_choice":{"type":"function","function":{"name":"lookup"}},
            "function_call":"auto",
            "response_format":{"type":"json_schema","json_schema":{"name":"out","description":"d6",
               "schema":{"type":"object","properties":{"b":{"type":"string","description":"d7"}}}}},
            "thinking":{"type":"enabled"},
            "stop":["s1"],"prompt":["p1","p2"],"suffix":"s","temperature":0.5,"stream":true,
            "seed":13800138000,"user_id":1,"logit_bias":{"42":-100},"thinking_budget":{"n":7}}"#;
        assert_eq!(
            request_texts(body, &[]),
            [
                "u1",
                "n",
                "t",
                "num:13800138000",
                "sys-name",
                "sys",
                "a\"b",
                "url:https://x/i.png?q=1",
                "stray",
                "url:https://y/j.png",
                "QUJD",
                "f.pdf",
                "url:data:application/pdf;base64,QUJD",
                "r",
                "pre",
                "{\"x\":1}",
                "{}",
                "result",
                "d1",
                "object",
                "string",
                "d2",
                "d3",
                "e1",
                "x1",
                "q",
                "d4",
                "d5",
                "d6",
                "object",
                "string",
                "d7",
                "s1",
                "p1",
                "p2",
                "s",
                "num:7",
            ]
        );
        // An extra path puts a structural field back.
        let with_model = request_texts(body, &["model", "tools[].function.name"]);
        assert_eq!(with_model[0], "deepseek-chat");
        assert!(with_model.contains(&"lookup".to_owned()));
        assert_eq!(with_model.len(), 39);
    }

    #[test]
    fn an_escaped_key_is_matched_by_its_text() {
        // `"r\u006fle"` is `role`: structural; `"c\u006ftent"` is text anyway.
        let body = r#"{"messages":[{"r\u006fle":"user","c\u006ftent":"hi"}],"m\u006fdel":"m"}"#;
        assert_eq!(request_texts(body, &[]), ["hi"]);
    }

    #[test]
    fn depth_is_limited_to_max_depth_levels() {
        let nest = |levels: usize| format!("{}\"x\"{}", "[".repeat(levels), "]".repeat(levels));
        assert_eq!(
            find_request_strings(&nest(MAX_DEPTH), &[]).map(|v| v.len()),
            Ok(1)
        );
        assert_eq!(
            find_request_strings(&nest(MAX_DEPTH + 1), &[]),
            Err(Invalid::TooDeep)
        );
        let objects =
            |levels: usize| format!("{}\"x\"{}", r#"{"a":"#.repeat(levels), "}".repeat(levels));
        assert!(find_request_strings(&objects(MAX_DEPTH), &[]).is_ok());
        assert_eq!(
            find_request_strings(&objects(300), &[]),
            Err(Invalid::TooDeep)
        );
        // The content filter's scan has the same limit.
        #[allow(deprecated)]
        let paths = JsonPath::defaults();
        assert_eq!(
            find_strings(objects(300).as_bytes(), &paths),
            Err(Invalid::TooDeep)
        );
    }

    #[test]
    fn rejects_invalid() {
        #[allow(deprecated)]
        let paths = JsonPath::defaults();
        for bad in [
            "",
            "{",
            "{\"a\":}",
            "[1,]",
            "{\"a\":1} x",
            "\"\\x\"",
            "01",
            "nul",
            "\"a\nb\"",
        ] {
            assert_eq!(
                find_strings(bad.as_bytes(), &paths),
                Err(Invalid::Syntax),
                "{bad}"
            );
            assert_eq!(
                find_request_strings(bad, &[]),
                Err(Invalid::Syntax),
                "{bad}"
            );
        }
    }

    #[test]
    fn escape_roundtrip() {
        let s = "a\"b\\c\nd\u{1}é<>";
        let mut out = b"\"".to_vec();
        escape_into(&mut out, s);
        out.push(b'"');
        assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), s);
    }
}
