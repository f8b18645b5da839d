//! A small scanner over raw JSON bytes that finds the string values at given paths, so that
//! only those strings are rewritten and every other byte of the body stays as it was.

use std::borrow::Cow;
use std::fmt;

use crate::detect::ConfigError;

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
            return Err(ConfigError::new("empty JSON path"));
        }
        for part in path.split('.') {
            let mut key = part;
            let mut idx = 0;
            while let Some(k) = key.strip_suffix("[]") {
                key = k;
                idx += 1;
            }
            if key.is_empty() || key.contains(['[', ']']) {
                return Err(ConfigError::new(format!(
                    "invalid JSON path {path:?}: use keys joined with '.', and '[]' for array elements"
                )));
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

    /// The paths that carry user text in chat and FIM requests: `messages[].content` (a
    /// string), `messages[].content[].text` (text parts), `messages[].tool_calls[].function.arguments`,
    /// `prompt` and `suffix`.
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

/// The byte range of a JSON string (quotes included) and whether it holds escapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StrSpan {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) escaped: bool,
}

/// Not valid JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Invalid;

const MAX_DEPTH: usize = 256;

struct Scanner<'a, 'p> {
    b: &'a [u8],
    i: usize,
    paths: &'p [JsonPath],
    path: Vec<PathSeg<'a>>,
    out: Vec<StrSpan>,
}

/// Finds the strings at `paths` in `b`, which must be one valid JSON document (leading and
/// trailing whitespace allowed) in UTF-8, strings outside `paths` included. Spans are returned
/// in order.
pub(crate) fn find_strings(b: &[u8], paths: &[JsonPath]) -> Result<Vec<StrSpan>, Invalid> {
    // JSON text is UTF-8 (RFC 8259 §8.1); the scan below checks only the strings it decodes.
    // Found by fuzzing: a 0xFF byte in a string outside `paths` was forwarded raw.
    if std::str::from_utf8(b).is_err() {
        return Err(Invalid);
    }
    let mut s = Scanner {
        b,
        i: 0,
        paths,
        path: Vec::new(),
        out: Vec::new(),
    };
    s.ws();
    s.value(0, &mut None)?;
    s.ws();
    if s.i != b.len() {
        return Err(Invalid);
    }
    s.out.sort_unstable_by_key(|s| s.start);
    Ok(s.out)
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

    fn matches(&self) -> Option<bool> {
        'paths: for p in self.paths {
            if p.segs.len() != self.path.len() {
                continue;
            }
            for (a, b) in p.segs.iter().zip(&self.path) {
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

    fn value(&mut self, depth: usize, obj: &mut Option<ObjCtx>) -> Result<(), Invalid> {
        if depth > MAX_DEPTH {
            return Err(Invalid);
        }
        match self.b.get(self.i) {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => {
                let span = self.string()?;
                if let Some(conditional) = self.matches() {
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
                Ok(())
            }
            Some(b't') => self.lit(b"true"),
            Some(b'f') => self.lit(b"false"),
            Some(b'n') => self.lit(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(Invalid),
        }
    }

    fn lit(&mut self, l: &[u8]) -> Result<(), Invalid> {
        if self.b[self.i..].starts_with(l) {
            self.i += l.len();
            Ok(())
        } else {
            Err(Invalid)
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
            _ => return Err(Invalid),
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if !digits(self) {
                return Err(Invalid);
            }
        }
        if matches!(self.b.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.b.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !digits(self) {
                return Err(Invalid);
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
                return Err(Invalid);
            };
            if rest[..off].iter().any(|c| *c < 0x20) {
                return Err(Invalid);
            }
            self.i += off;
            if self.b[self.i] == b'"' {
                self.i += 1;
                return Ok(StrSpan {
                    start,
                    end: self.i,
                    escaped,
                });
            }
            escaped = true;
            match self.b.get(self.i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 2,
                Some(b'u') => {
                    let hex = self.b.get(self.i + 2..self.i + 6).ok_or(Invalid)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return Err(Invalid);
                    }
                    self.i += 6;
                }
                _ => return Err(Invalid),
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
                return Err(Invalid);
            }
            let k = self.string()?;
            let raw = &self.b[k.start + 1..k.end - 1];
            let key: Cow<'a, str> = if k.escaped {
                let s = std::str::from_utf8(&self.b[k.start..k.end]).map_err(|_| Invalid)?;
                Cow::Owned(serde_json::from_str::<String>(s).map_err(|_| Invalid)?)
            } else {
                Cow::Borrowed(std::str::from_utf8(raw).map_err(|_| Invalid)?)
            };
            self.ws();
            if self.b.get(self.i) != Some(&b':') {
                return Err(Invalid);
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
                _ => return Err(Invalid),
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
                _ => return Err(Invalid),
            }
        }
        self.path.pop();
        Ok(())
    }
}

/// The text of a JSON string span (unescaped).
pub(crate) fn string_text<'a>(b: &'a [u8], s: StrSpan) -> Result<Cow<'a, str>, Invalid> {
    let raw = std::str::from_utf8(&b[s.start..s.end]).map_err(|_| Invalid)?;
    if s.escaped {
        serde_json::from_str::<String>(raw)
            .map(Cow::Owned)
            .map_err(|_| Invalid)
    } else {
        Ok(Cow::Borrowed(&raw[1..raw.len() - 1]))
    }
}

/// Appends `s` as the inside of a JSON string (no quotes), escaped.
pub(crate) fn escape_into(out: &mut Vec<u8>, s: &str) {
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
                out.extend_from_slice(&b[last..i]);
                out.extend_from_slice(format!("\\u{c:04x}").as_bytes());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(body: &str) -> Vec<String> {
        let spans = find_strings(body.as_bytes(), &JsonPath::defaults()).unwrap();
        spans
            .into_iter()
            .map(|s| string_text(body.as_bytes(), s).unwrap().into_owned())
            .collect()
    }

    #[test]
    fn finds_user_text_only() {
        let body = r#"{"model":"m","messages":[{"role":"system","content":"sys"},
            {"role":"user","content":[{"type":"text","text":"a\"b"},{"type":"image_url","image_url":{"url":"u"},"text":"no"},{"text":"t2","type":"text"}]},
            {"role":"assistant","content":null,"reasoning_content":"r","tool_calls":[{"id":"1","function":{"name":"f","arguments":"{\"x\":1}"}}]}],
            "prompt":"p","suffix":"s","other":{"content":"x"}}"#;
        assert_eq!(texts(body), ["sys", "a\"b", "t2", "{\"x\":1}", "p", "s"]);
    }

    #[test]
    fn rejects_invalid() {
        for bad in ["", "{", "{\"a\":}", "[1,]", "{\"a\":1} x", "\"\\x\"", "01"] {
            assert_eq!(
                find_strings(bad.as_bytes(), &JsonPath::defaults()),
                Err(Invalid),
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
