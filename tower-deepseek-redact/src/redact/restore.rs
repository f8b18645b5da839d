//! Puts placeholders back in responses, JSON answers and SSE streams alike (SSE through the
//! crate's shared [`DeltaRewriter`]).

use bytes::{Bytes, BytesMut};
use tower_deepseek_core::body::ChunkTransform;

use crate::delta::{Blocked, DeltaEdit, DeltaRewriter};
use crate::json::escape_into;
use crate::redactor::Vault;

/// A search for `<` or `\\`, made once per restorer: the per-frame fast check then calls the
/// AVX2 routine directly instead of going through `memchr2`'s dispatch (which sets the search
/// up again on every call; about a fifth of the check's cost on a 200-byte frame).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LtOrEscape {
    #[cfg(target_arch = "x86_64")]
    avx2: Option<memchr::arch::x86_64::avx2::memchr::Two>,
}

impl LtOrEscape {
    pub(crate) fn new() -> Self {
        Self {
            #[cfg(target_arch = "x86_64")]
            avx2: memchr::arch::x86_64::avx2::memchr::Two::new(b'<', b'\\'),
        }
    }

    /// Whether `hay` holds no `<` and no `\\`.
    #[inline(always)]
    pub(crate) fn absent(&self, hay: &[u8]) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let Some(t) = &self.avx2 {
            return t.find(hay).is_none();
        }
        memchr::memchr2(b'<', b'\\', hay).is_none()
    }
}

/// The vault's placeholders as a sorted byte index, with their values ready to write.
#[derive(Debug)]
struct Index {
    /// Sorted by name (the placeholder without its `<` and `>`).
    entries: Vec<Entry>,
    /// The longest name, in bytes.
    max_name: usize,
}

#[derive(Debug)]
struct Entry {
    name: Box<[u8]>,
    value: Box<[u8]>,
    /// The value JSON-escaped, for use inside a JSON string.
    escaped: Box<[u8]>,
}

/// What [`Index::next`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// `data[start..end]` is a placeholder of entry `entry`, `<NAME>` or (JSON) `\u003cNAME\u003e`.
    Placeholder {
        start: usize,
        end: usize,
        entry: usize,
    },
    /// The data ends in what may be the start of a placeholder, from `start` on.
    Partial { start: usize },
    /// A JSON string ends at a fragment of a placeholder starting at `start` (`<CN_MO"`): in an
    /// SSE stream the rest may follow in the next event's string.
    StringEnd { start: usize },
}

/// How an escape sequence at the end of the data compares with an expected one.
#[derive(PartialEq, Eq)]
enum EscMatch {
    Full,
    Truncated,
    No,
}

/// Whether `data[at..]` is the JSON escape `\u003X` where `X` is `lower` in either case.
fn escape_at(data: &[u8], at: usize, lower: u8) -> EscMatch {
    let want = [b'\\', b'u', b'0', b'0', b'3', lower];
    let have = &data[at..data.len().min(at + want.len())];
    for (i, &b) in have.iter().enumerate() {
        let ok = if i == 5 {
            b.to_ascii_lowercase() == lower
        } else {
            b == want[i]
        };
        if !ok {
            return EscMatch::No;
        }
    }
    if have.len() == want.len() {
        EscMatch::Full
    } else {
        EscMatch::Truncated
    }
}

impl Index {
    fn new(vault: &Vault) -> Self {
        let mut entries: Vec<Entry> = vault
            .entries()
            .map(|(p, v)| {
                let name = p
                    .strip_prefix('<')
                    .and_then(|p| p.strip_suffix('>'))
                    .unwrap_or(p);
                let mut escaped = Vec::with_capacity(v.len() + 2);
                escape_into(&mut escaped, v);
                Entry {
                    name: name.as_bytes().into(),
                    value: v.as_bytes().into(),
                    escaped: escaped.into(),
                }
            })
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let max_name = entries.iter().map(|e| e.name.len()).max().unwrap_or(0);
        Self { entries, max_name }
    }

    fn get(&self, name: &[u8]) -> Option<usize> {
        self.entries.binary_search_by(|e| (*e.name).cmp(name)).ok()
    }

    /// Whether some name starts with `frag` (or is equal to it).
    fn is_prefix(&self, frag: &[u8]) -> bool {
        let p = self.entries.partition_point(|e| *e.name < *frag);
        self.entries
            .get(p)
            .is_some_and(|e| e.name.starts_with(frag))
    }

    /// The next placeholder (or possible start of one) in `data` from `from` on, which must
    /// not be inside an escape sequence. With `json`, the data is JSON text: escapes are
    /// skipped as units, `\u003c`/`\u003e` (either case) count as `<`/`>`, and a fragment
    /// that ends a string is reported as [`Found::StringEnd`] when `string_ends` is set (and
    /// skipped otherwise: in one JSON document a placeholder never spans two strings).
    fn next(&self, data: &[u8], mut from: usize, json: bool, string_ends: bool) -> Option<Found> {
        loop {
            let off = if json {
                memchr::memchr2(b'<', b'\\', &data[from..])
            } else {
                memchr::memchr(b'<', &data[from..])
            }?;
            let k = from + off;
            let open = if data[k] == b'<' {
                1
            } else {
                match escape_at(data, k, b'c') {
                    EscMatch::Full => 6,
                    EscMatch::Truncated => return Some(Found::Partial { start: k }),
                    EscMatch::No => {
                        // Some other escape: skip it as a unit (a lone `\` at the end is held
                        // so that the next chunk starts outside an escape).
                        if k + 1 == data.len() {
                            return Some(Found::Partial { start: k });
                        }
                        from = k + 2;
                        continue;
                    }
                }
            };
            let name_start = k + open;
            let limit = data.len().min(name_start + self.max_name + 1);
            let mut e = name_start;
            while e < limit && !matches!(data[e], b'>' | b'<' | b'"' | b'\\') {
                e += 1;
            }
            let name = &data[name_start..e];
            let skip = k + open;
            if e == data.len() {
                if self.is_prefix(name) {
                    return Some(Found::Partial { start: k });
                }
                from = skip;
                continue;
            }
            if name.len() > self.max_name {
                from = skip;
                continue;
            }
            let close = match data[e] {
                b'>' => 1,
                b'\\' if json => match escape_at(data, e, b'e') {
                    EscMatch::Full => 6,
                    EscMatch::Truncated if self.is_prefix(name) => {
                        return Some(Found::Partial { start: k });
                    }
                    _ => 0,
                },
                b'"' if json && string_ends && self.is_prefix(name) => {
                    return Some(Found::StringEnd { start: k });
                }
                _ => 0,
            };
            if close > 0 {
                if let Some(entry) = self.get(name) {
                    return Some(Found::Placeholder {
                        start: k,
                        end: e + close,
                        entry,
                    });
                }
            }
            from = skip;
        }
    }

    /// Restores every placeholder in `data`. `None` when nothing changed (the caller keeps
    /// its bytes) or, with `string_ends`, when a fragment ends a string or the data (the
    /// caller needs the slow path; `out` is then left as it was). `Some(consumed)` otherwise,
    /// with the restored bytes appended to `out`; without `string_ends`, a tail that may start
    /// a placeholder is not consumed.
    fn restore(
        &self,
        data: &[u8],
        json: bool,
        string_ends: bool,
        out: &mut Option<BytesMut>,
    ) -> Scan {
        let mut last = 0;
        let mut from = 0;
        let mut changed = false;
        while let Some(found) = self.next(data, from, json, string_ends) {
            match found {
                Found::Placeholder { start, end, entry } => {
                    let e = &self.entries[entry];
                    let value = if json { &e.escaped } else { &e.value };
                    let o = out.get_or_insert_with(|| BytesMut::with_capacity(data.len() + 64));
                    o.extend_from_slice(&data[last..start]);
                    o.extend_from_slice(value);
                    changed = true;
                    last = end;
                    from = end;
                }
                Found::Partial { start } | Found::StringEnd { start } => {
                    if string_ends {
                        return Scan::Slow;
                    }
                    if changed {
                        out.as_mut()
                            .expect("changed")
                            .extend_from_slice(&data[last..start]);
                    }
                    return Scan::Done {
                        changed,
                        used: start,
                    };
                }
            }
        }
        if changed {
            out.as_mut()
                .expect("changed")
                .extend_from_slice(&data[last..]);
        }
        Scan::Done {
            changed,
            used: data.len(),
        }
    }
}

/// The result of [`Index::restore`].
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// `data[..used]` was restored; when `changed`, into `out`, else it is as it was.
    Done { changed: bool, used: usize },
    /// A fragment needs the event-aware path.
    Slow,
}

/// Restores placeholders in a text or JSON stream (not SSE), holding back only a tail that
/// may be the start of a placeholder. Chunks without one are forwarded as they are.
#[derive(Debug)]
pub(crate) struct TextRestorer {
    index: Index,
    json: bool,
    held: Vec<u8>,
    finder: LtOrEscape,
}

impl TextRestorer {
    pub(crate) fn new(vault: Vault, json: bool) -> Self {
        Self {
            index: Index::new(&vault),
            json,
            held: Vec::new(),
            finder: LtOrEscape::new(),
        }
    }
}

impl TextRestorer {
    /// Whether `chunk` goes out unchanged: nothing held and no `<` (or `\`, in JSON). Inlined
    /// into the body's poll, which then forwards the very same frame.
    #[inline(always)]
    pub(crate) fn passes(&self, chunk: &[u8]) -> bool {
        self.held.is_empty()
            && if self.json {
                self.finder.absent(chunk)
            } else {
                memchr::memchr(b'<', chunk).is_none()
            }
    }
}

impl ChunkTransform for TextRestorer {
    #[inline]
    fn transform(&mut self, chunk: Bytes) -> Bytes {
        if self.passes(&chunk) {
            return chunk;
        }
        self.restore(chunk)
    }

    fn finish(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.held))
    }
}

impl TextRestorer {
    /// [`ChunkTransform::transform`] of a chunk that did not [`pass`](Self::passes).
    pub(crate) fn transform_failed(&mut self, chunk: Bytes) -> Bytes {
        self.restore(chunk)
    }

    #[inline(never)]
    fn restore(&mut self, chunk: Bytes) -> Bytes {
        let data = if self.held.is_empty() {
            chunk
        } else {
            let mut d = std::mem::take(&mut self.held);
            d.extend_from_slice(&chunk);
            Bytes::from(d)
        };
        let mut out = None;
        match self.index.restore(&data, self.json, false, &mut out) {
            Scan::Done { changed, used } => {
                if used < data.len() {
                    self.held.extend_from_slice(&data[used..]);
                }
                match out {
                    Some(o) if changed => o.freeze(),
                    _ if used == data.len() => data,
                    _ => data.slice(..used),
                }
            }
            // Only reported with string ends.
            Scan::Slow => data,
        }
    }
}

/// Restores placeholders inside the JSON string deltas of an SSE stream: a placeholder split
/// across chunks or across events (`<CN_MO` in one delta, `BILE_1>` in the next) is
/// reassembled. Events without a placeholder, or a fragment of one, are forwarded as their
/// original bytes; a changed event is re-encoded.
pub(crate) type SseRestorer = DeltaRewriter<RestoreEdit>;

impl SseRestorer {
    pub(crate) fn new(vault: Vault) -> Self {
        DeltaRewriter::with_edit(RestoreEdit {
            index: Index::new(&vault),
            finder: LtOrEscape::new(),
        })
    }
}

/// The [`DeltaEdit`] of the SSE restore: placeholders back to their values.
#[derive(Debug)]
pub(crate) struct RestoreEdit {
    index: Index,
    finder: LtOrEscape,
}

impl RestoreEdit {
    /// Restores decoded string text; with `hold`, a tail that may start a placeholder is left
    /// out. Returns the new text and how much of `text` it covers.
    fn restore_text(&self, text: &str, hold: bool) -> (String, usize) {
        let mut out = None;
        let Scan::Done { changed, used } =
            self.index.restore(text.as_bytes(), false, false, &mut out)
        else {
            return (text.to_owned(), text.len());
        };
        // `used` is at a `<`, so on a char boundary.
        let mut new = match out {
            Some(o) if changed => String::from_utf8(o.to_vec()).expect("UTF-8 text and values"),
            _ => text[..used].to_owned(),
        };
        if hold {
            (new, used)
        } else {
            new.push_str(&text[used..]);
            (new, text.len())
        }
    }
}

impl DeltaEdit for RestoreEdit {
    fn wants(&self, delta: &str) -> bool {
        delta.contains('<')
    }

    fn edit(&mut self, mut text: String, last: bool) -> Result<(String, String), Blocked> {
        let (new, used) = self.restore_text(&text, !last);
        Ok((new, text.split_off(used)))
    }

    fn flush(&mut self, text: String) -> Result<String, Blocked> {
        Ok(text)
    }

    /// No `<` and no escape.
    #[inline(always)]
    fn passes(&self, chunk: &[u8]) -> bool {
        self.finder.absent(chunk)
    }

    /// Restores whole events in place in their raw bytes (no parse): every placeholder is
    /// replaced by its JSON-escaped value. `None` when a fragment ends a string (it may
    /// continue in the next event) and the event-aware path is needed.
    fn in_place(&self, raw: &[u8]) -> Option<Option<Bytes>> {
        let mut out = None;
        match self.index.restore(raw, true, true, &mut out) {
            Scan::Slow => None,
            Scan::Done { changed: true, .. } => Some(out.map(BytesMut::freeze)),
            Scan::Done { .. } => Some(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::EntityType;
    use serde_json::Value;
    use tower_deepseek_core::sse::SseParser;

    #[test]
    fn lt_or_escape_agrees_with_memchr2_at_every_length_and_offset() {
        let f = LtOrEscape::new();
        for len in 0..100 {
            let clean = vec![b'a'; len];
            assert!(f.absent(&clean));
            for at in 0..len {
                for b in [b'<', b'\\', b'>', b'u'] {
                    let mut v = clean.clone();
                    v[at] = b;
                    assert_eq!(f.absent(&v), memchr::memchr2(b'<', b'\\', &v).is_none());
                }
            }
        }
    }

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

    /// Runs `chunks` through an SSE restorer; returns the output frames.
    fn sse_frames(chunks: &[Bytes]) -> Vec<Bytes> {
        let mut r = SseRestorer::new(vault());
        let mut out: Vec<Bytes> = chunks.iter().map(|c| r.transform(c.clone())).collect();
        out.push(r.finish());
        out
    }

    fn sse(chunks: &[Bytes]) -> Vec<u8> {
        sse_frames(chunks).concat()
    }

    fn text(json: bool, chunks: &[&[u8]]) -> Vec<u8> {
        let mut r = TextRestorer::new(vault(), json);
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&r.transform(Bytes::copy_from_slice(c)));
        }
        out.extend_from_slice(&r.finish());
        out
    }

    fn event(content: &str) -> String {
        format!(
            "data: {{\"id\":\"x\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}},\"finish_reason\":null}}]}}\n\n"
        )
    }

    /// Every way to cut `wire` in two, in three around every byte, and in 1-byte frames.
    fn cuts(wire: &[u8]) -> Vec<Vec<Bytes>> {
        let mut all = Vec::new();
        for i in 0..=wire.len() {
            all.push(vec![
                Bytes::copy_from_slice(&wire[..i]),
                Bytes::copy_from_slice(&wire[i..]),
            ]);
            if i < wire.len() {
                all.push(vec![
                    Bytes::copy_from_slice(&wire[..i]),
                    Bytes::copy_from_slice(&wire[i..=i]),
                    Bytes::copy_from_slice(&wire[i + 1..]),
                ]);
            }
        }
        all.push(wire.iter().map(|b| Bytes::copy_from_slice(&[*b])).collect());
        all
    }

    /// The content deltas of an SSE body, joined.
    fn content(wire: &[u8]) -> String {
        let mut p = SseParser::new();
        let mut text = String::new();
        p.push(&Bytes::copy_from_slice(wire), |e| {
            if e.is_done() {
                return;
            }
            let v: Value = serde_json::from_slice(e.data()).unwrap();
            for c in v["choices"].as_array().unwrap() {
                if let Some(s) = c["delta"]["content"].as_str() {
                    text.push_str(s);
                }
            }
        })
        .unwrap();
        text
    }

    #[test]
    fn sse_placeholders_raw_and_escaped_at_every_split() {
        // Raw, escaped in lower and upper case, mixed, next to a JSON-escaped value.
        let wire = [
            event("call <CN_MOBILE_1> now"),
            event("x \\u003cCN_MOBILE_1\\u003e y"),
            event("x \\u003CCN_MOBILE_1\\u003E y \\n<EMAIL_1>"),
            event("<CN_MOBILE_1\\u003e"),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat();
        let expected = [
            event("call 13800138000 now"),
            event("x 13800138000 y"),
            event("x 13800138000 y \\na\\\"b@x.com"),
            event("13800138000"),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat();
        for chunks in cuts(wire.as_bytes()) {
            let out = sse(&chunks);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                expected,
                "{:?}",
                chunks.iter().map(Bytes::len).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn sse_lookalikes_stay_byte_identical_at_every_split() {
        // `<` that is no placeholder of this vault, an escaped backslash before `u003c` (the
        // text `\u003c...`, not a `<`), a number that was never issued, other escapes.
        let wire = [
            event("a < b <b> <CN_X> <CN_MOBILE_9> <CN_MOBILE_1 x>"),
            event(
                "literal \\\\u003cCN_MOBILE_1\\\\u003e \\\\u003cCN_MOBILE_1> and \\\\<CN_MOBILE_1>",
            ),
            event("quote \\\" tab \\t \\u003cb\\u003e"),
        ]
        .concat();
        for chunks in cuts(wire.as_bytes()) {
            let out = sse(&chunks);
            // The lone escaped backslash before a raw placeholder is restored: `\\` is one
            // escape, the `<` after it is a real `<`.
            assert_eq!(
                String::from_utf8(out).unwrap(),
                wire.replace("\\\\<CN_MOBILE_1>", "\\\\13800138000")
            );
        }
        // Nothing to restore in the whole events: the very same bytes.
        let only = Bytes::from([event("a < b <CN_X> \\u003cb\\u003e \\n"), event("c")].concat());
        let out = sse_frames(std::slice::from_ref(&only));
        assert_eq!(out[0].as_ptr(), only.as_ptr());
        assert_eq!(out[0].len(), only.len());
    }

    #[test]
    fn sse_unchanged_bytes_are_zero_copy() {
        let first = event("hello");
        let second = event("world");
        // Whole events: the same `Bytes`.
        let whole = Bytes::from(first.clone());
        let mut r = SseRestorer::new(vault());
        let out = r.transform(whole.clone());
        assert_eq!((out.as_ptr(), out.len()), (whole.as_ptr(), whole.len()));
        // One event and a half: the whole event is a slice of the chunk, the half is held.
        let cut = first.len() + 10;
        let both = Bytes::from(format!("{first}{second}"));
        let out = r.transform(both.slice(..cut));
        assert_eq!((out.as_ptr(), out.len()), (both.as_ptr(), first.len()));
        let rest = r.transform(both.slice(cut..));
        assert_eq!(&rest[..], second.as_bytes());
        assert!(r.finish().is_empty());
    }

    #[test]
    fn sse_fragment_across_events_raw_and_escaped() {
        for (a, b) in [
            ("x <CN_MO", "BILE_1> y"),
            ("x \\u003cCN_MO", "BILE_1\\u003e y"),
            ("x \\u003cCN_MOBILE_1", "\\u003e y"),
            ("x <", "CN_MOBILE_1> y"),
        ] {
            let wire = [event(a), event(b), "data: [DONE]\n\n".to_owned()].concat();
            for chunks in cuts(wire.as_bytes()) {
                let out = sse(&chunks);
                assert_eq!(content(&out), "x 13800138000 y", "{a:?} {b:?}");
                assert!(out.ends_with(b"data: [DONE]\n\n"));
            }
        }
    }

    #[test]
    fn json_text_escaped_forms_at_every_split() {
        let input = br#"{"c":"a \u003cCN_MOBILE_1\u003e b \u003CEMAIL_1\u003E c \\u003cCN_MOBILE_1\\u003e \\u003cCN_MOBILE_1> d \\<CN_MOBILE_1> e \u003cb\u003e \u003c"}"#;
        let expected = r#"{"c":"a 13800138000 b a\"b@x.com c \\u003cCN_MOBILE_1\\u003e \\u003cCN_MOBILE_1> d \\13800138000 e \u003cb\u003e \u003c"}"#;
        for chunks in cuts(input) {
            let chunks: Vec<&[u8]> = chunks.iter().map(|c| &c[..]).collect();
            assert_eq!(String::from_utf8(text(true, &chunks)).unwrap(), expected);
        }
    }

    #[test]
    fn plain_text_restores_raw_values_and_ignores_escapes() {
        let input = b"a <EMAIL_1> b \\u003cCN_MOBILE_1\\u003e c <CN_MOBILE_1";
        let expected = "a a\"b@x.com b \\u003cCN_MOBILE_1\\u003e c <CN_MOBILE_1";
        for chunks in cuts(input) {
            let chunks: Vec<&[u8]> = chunks.iter().map(|c| &c[..]).collect();
            assert_eq!(String::from_utf8(text(false, &chunks)).unwrap(), expected);
        }
    }

    #[test]
    fn text_unchanged_bytes_are_zero_copy() {
        let mut r = TextRestorer::new(vault(), true);
        let clean = Bytes::from_static(br#"{"c":"a < b \n"#);
        let out = r.transform(clean.clone());
        assert_eq!((out.as_ptr(), out.len()), (clean.as_ptr(), clean.len()));
        // A possible placeholder at the end: the bytes before it, as a slice.
        let tail = Bytes::from_static(b" then <CN_MO");
        let out = r.transform(tail.clone());
        assert_eq!((out.as_ptr(), out.len()), (tail.as_ptr(), 6));
        assert_eq!(
            &r.transform(Bytes::from_static(b"BILE_1>\"}"))[..],
            b"13800138000\"}"
        );
    }

    #[test]
    fn index_lookup_and_prefixes() {
        let mut v = vault();
        for i in 0..30 {
            v.placeholder(&EntityType::IPV4, &format!("10.0.0.{i}"));
        }
        let idx = Index::new(&v);
        assert_eq!(
            idx.get(b"IPV4_17").map(|i| &*idx.entries[i].value),
            Some(&b"10.0.0.16"[..])
        );
        assert!(idx.get(b"IPV4_31").is_none() && idx.get(b"IPV4_").is_none());
        assert!(idx.is_prefix(b"") && idx.is_prefix(b"IPV4_3") && idx.is_prefix(b"EMAIL_1"));
        assert!(!idx.is_prefix(b"IPV4_31") && !idx.is_prefix(b"X"));
        // An empty vault matches nothing.
        let empty = Index::new(&Vault::new());
        assert_eq!(empty.next(b"<a> <", 0, true, true), None);
    }
}
