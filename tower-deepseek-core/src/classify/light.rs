//! The light end-of-body check of a JSON answer: one pass that validates the document and reads
//! only what the verdict and the summary need (`error`, `choices[].finish_reason`, `usage`,
//! `model`, `system_fingerprint`), without serde's visitor machinery for the rest.
//!
//! It is exact by construction: it accepts only a subset of what the full probe accepts, and
//! gives up (`None`) on anything else (a syntax error, a field of another type, a duplicate
//! field, an escaped or non-ASCII key, a value nested deeper than [`MAX_DEPTH`]), so that the
//! caller falls back to the full serde probe, which then decides (and classifies the error)
//! exactly as before. Strings are skipped sixteen bytes at a time to the next quote, backslash
//! or control character (serde tests eight); the few values that matter are read in place
//! (serde only reads escaped strings, on their own slices).

use std::borrow::Cow;

use serde::de::IgnoredAny;

use crate::chat::FinishReason;

use super::end::{DetailsProbe, LastFinish, Probe, UsageProbe};
use crate::scan::{number_end, skip_ws, special, string_end};

/// Nesting deeper than this falls back to serde (whose skipping has no depth limit).
const MAX_DEPTH: u32 = 64;

/// Marks a give-up: the full probe decides.
struct GiveUp;

type R<T> = Result<T, GiveUp>;

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

/// What the light check reads from a JSON object answer, or `None` when the full probe must
/// decide. `fill`: whether `usage`, `model` and `system_fingerprint` are wanted (their type is
/// checked either way, since a field of the wrong type changes the verdict).
pub(super) fn light_probe(bytes: &[u8], fill: bool) -> Option<Probe<'_>> {
    // A cut object does not end with its closing brace: serde judges it at once.
    if bytes.trim_ascii_end().last() != Some(&b'}') {
        return None;
    }
    let mut s = Scan { b: bytes, i: 0 };
    let probe = s.answer(fill).ok()?;
    s.ws();
    (s.i == bytes.len()).then_some(probe)
}

/// Whether `bytes` is surely one whole JSON document (`false`: serde must tell).
pub(super) fn light_complete(bytes: &[u8]) -> bool {
    let mut s = Scan { b: bytes, i: 0 };
    if s.skip_value(0).is_err() {
        return false;
    }
    s.ws();
    s.i == bytes.len()
}

impl<'a> Scan<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn ws(&mut self) {
        self.i = skip_ws(self.b, self.i);
    }

    /// Skips whitespace and expects `c`.
    #[inline]
    fn expect(&mut self, c: u8) -> R<()> {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(GiveUp)
        }
    }

    /// Skips whitespace; the next byte, not consumed.
    #[inline]
    fn next_token(&mut self) -> R<u8> {
        self.ws();
        self.peek().ok_or(GiveUp)
    }

    fn answer(&mut self, fill: bool) -> R<Probe<'a>> {
        let mut p = Probe {
            error: None,
            choices: None,
            usage: None,
            model: None,
            system_fingerprint: None,
        };
        let (mut error, mut choices, mut usage, mut model, mut fp) =
            (false, false, false, false, false);
        self.expect(b'{')?;
        if self.next_token()? == b'}' {
            self.i += 1;
            return Ok(p);
        }
        loop {
            let key = self.key()?;
            self.expect(b':')?;
            self.ws();
            match key {
                b"error" => {
                    once(&mut error)?;
                    if !self.null()? {
                        self.skip_value(1)?;
                        p.error = Some(IgnoredAny);
                    }
                }
                b"choices" => {
                    once(&mut choices)?;
                    if !self.null()? {
                        p.choices = Some(LastFinish(self.choices()?));
                    }
                }
                b"usage" => {
                    once(&mut usage)?;
                    let u = self.usage()?;
                    if fill {
                        p.usage = u;
                    }
                }
                b"model" => {
                    once(&mut model)?;
                    let m = self.opt_str()?;
                    if fill {
                        p.model = m;
                    }
                }
                b"system_fingerprint" => {
                    once(&mut fp)?;
                    let f = self.opt_str()?;
                    if fill {
                        p.system_fingerprint = f;
                    }
                }
                _ => self.skip_value(1)?,
            }
            match self.next_token()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Ok(p);
                }
                _ => return Err(GiveUp),
            }
        }
    }

    /// The `choices` array: the last non-null `finish_reason` of its objects.
    fn choices(&mut self) -> R<Option<FinishReason>> {
        if self.peek() != Some(b'[') {
            return Err(GiveUp);
        }
        self.i += 1;
        let mut last = None;
        if self.next_token()? == b']' {
            self.i += 1;
            return Ok(last);
        }
        loop {
            if self.next_token()? != b'{' {
                return Err(GiveUp);
            }
            self.i += 1;
            let mut seen = false;
            if self.next_token()? == b'}' {
                self.i += 1;
            } else {
                loop {
                    let key = self.key()?;
                    self.expect(b':')?;
                    self.ws();
                    if key == b"finish_reason" {
                        once(&mut seen)?;
                        if let Some(r) = self.finish_reason()? {
                            last = Some(r);
                        }
                    } else {
                        self.skip_value(3)?;
                    }
                    match self.next_token()? {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            break;
                        }
                        _ => return Err(GiveUp),
                    }
                }
            }
            match self.next_token()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Ok(last);
                }
                _ => return Err(GiveUp),
            }
        }
    }

    fn finish_reason(&mut self) -> R<Option<FinishReason>> {
        if self.null()? {
            return Ok(None);
        }
        let start = self.i;
        if self.peek() != Some(b'"') {
            return Err(GiveUp);
        }
        self.i += 1;
        let escaped = self.skip_str()?;
        let raw = &self.b[start + 1..self.i - 1];
        if escaped {
            serde_json::from_slice::<FinishReason>(&self.b[start..self.i])
                .map(Some)
                .map_err(|_| GiveUp)
        } else {
            let s = std::str::from_utf8(raw).map_err(|_| GiveUp)?;
            Ok(Some(FinishReason::from_wire(s)))
        }
    }

    /// `null` or a string (borrowed unless escaped).
    fn opt_str(&mut self) -> R<Option<Cow<'a, str>>> {
        if self.null()? {
            return Ok(None);
        }
        let start = self.i;
        if self.peek() != Some(b'"') {
            return Err(GiveUp);
        }
        self.i += 1;
        let escaped = self.skip_str()?;
        let b: &'a [u8] = self.b;
        if escaped {
            serde_json::from_slice::<String>(&b[start..self.i])
                .map(|s| Some(Cow::Owned(s)))
                .map_err(|_| GiveUp)
        } else {
            let s = std::str::from_utf8(&b[start + 1..self.i - 1]).map_err(|_| GiveUp)?;
            Ok(Some(Cow::Borrowed(s)))
        }
    }

    /// A `null` literal at the cursor (consumed), or `false` for any other value.
    #[inline]
    fn null(&mut self) -> R<bool> {
        if self.peek() != Some(b'n') {
            return Ok(false);
        }
        self.literal(b"null")?;
        Ok(true)
    }

    #[inline]
    fn literal(&mut self, lit: &[u8]) -> R<()> {
        if self.b[self.i..].starts_with(lit) {
            self.i += lit.len();
            Ok(())
        } else {
            Err(GiveUp)
        }
    }

    /// An object key of plain ASCII without escapes (anything else gives up: serde matches
    /// field names after unescaping and refuses invalid UTF-8 in them).
    fn key(&mut self) -> R<&'a [u8]> {
        if self.next_token()? != b'"' {
            return Err(GiveUp);
        }
        let start = self.i + 1;
        let b: &'a [u8] = self.b;
        let end = special(b, start).ok_or(GiveUp)?;
        if b[end] != b'"' || !b[start..end].is_ascii() {
            return Err(GiveUp);
        }
        self.i = end + 1;
        let len = end - start;
        Ok(&b[start..start + len])
    }

    /// Skips a string whose opening quote is consumed; whether it held an escape. Refuses
    /// what serde refuses: control characters, unknown escapes, a `\u` without 4 hex digits.
    fn skip_str(&mut self) -> R<bool> {
        let (end, escaped) = string_end(self.b, self.i).ok_or(GiveUp)?;
        self.i = end;
        Ok(escaped)
    }

    /// `usage`: `null` or an object of token counts, read as [`UsageProbe`] reads it.
    fn usage(&mut self) -> R<Option<UsageProbe>> {
        if self.null()? {
            return Ok(None);
        }
        let mut u = UsageProbe::default();
        let mut seen = [false; 7];
        self.object(|s, key| {
            match key {
                b"prompt_tokens" => u.prompt_tokens = s.field(&mut seen[0], Self::uint)?,
                b"completion_tokens" => u.completion_tokens = s.field(&mut seen[1], Self::uint)?,
                b"total_tokens" => u.total_tokens = s.field(&mut seen[2], Self::uint)?,
                b"prompt_cache_hit_tokens" => {
                    u.prompt_cache_hit_tokens = s.field(&mut seen[3], Self::opt_uint)?
                }
                b"prompt_cache_miss_tokens" => {
                    u.prompt_cache_miss_tokens = s.field(&mut seen[4], Self::opt_uint)?
                }
                b"prompt_tokens_details" => {
                    u.prompt_tokens_details = s.field(&mut seen[5], Self::details)?
                }
                b"completion_tokens_details" => {
                    u.completion_tokens_details = s.field(&mut seen[6], Self::details)?
                }
                _ => s.skip_value(3)?,
            }
            Ok(())
        })?;
        Ok(Some(u))
    }

    /// `null` or an object of `cached_tokens` and `reasoning_tokens`.
    fn details(&mut self) -> R<Option<DetailsProbe>> {
        if self.null()? {
            return Ok(None);
        }
        let mut d = DetailsProbe::default();
        let (mut cached, mut reasoning) = (false, false);
        self.object(|s, key| {
            match key {
                b"cached_tokens" => d.cached_tokens = s.field(&mut cached, Self::opt_uint)?,
                b"reasoning_tokens" => {
                    d.reasoning_tokens = s.field(&mut reasoning, Self::opt_uint)?
                }
                _ => s.skip_value(4)?,
            }
            Ok(())
        })?;
        Ok(Some(d))
    }

    /// A known field's value, read by `read`; the field met a second time gives up.
    #[inline]
    fn field<T>(&mut self, seen: &mut bool, read: fn(&mut Self) -> R<T>) -> R<T> {
        once(seen)?;
        read(self)
    }

    /// An object at the cursor (a shallow one: its known fields are read by `each`, which
    /// skips the others), with plain ASCII keys.
    fn object(&mut self, mut each: impl FnMut(&mut Self, &'a [u8]) -> R<()>) -> R<()> {
        if self.peek() != Some(b'{') {
            return Err(GiveUp);
        }
        self.i += 1;
        if self.next_token()? == b'}' {
            self.i += 1;
            return Ok(());
        }
        loop {
            let key = self.key()?;
            self.expect(b':')?;
            self.ws();
            each(self, key)?;
            match self.next_token()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(GiveUp),
            }
        }
    }

    /// `null` or a `u64`.
    fn opt_uint(&mut self) -> R<Option<u64>> {
        if self.null()? {
            Ok(None)
        } else {
            self.uint().map(Some)
        }
    }

    /// A `u64` as serde reads one: plain digits (no sign, fraction or exponent, which serde
    /// reads as another type), no leading zero, no overflow.
    fn uint(&mut self) -> R<u64> {
        let mut n: u64 = match self.peek() {
            Some(b'0') => {
                self.i += 1;
                0
            }
            Some(c @ b'1'..=b'9') => {
                self.i += 1;
                u64::from(c - b'0')
            }
            _ => return Err(GiveUp),
        };
        if n != 0 {
            while let Some(c @ b'0'..=b'9') = self.peek() {
                n = n
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(c - b'0')))
                    .ok_or(GiveUp)?;
                self.i += 1;
            }
        }
        match self.peek() {
            Some(b'0'..=b'9' | b'.' | b'e' | b'E') => Err(GiveUp),
            _ => Ok(n),
        }
    }

    /// Skips one value at the cursor (after whitespace), as serde's `IgnoredAny` would read it.
    fn skip_value(&mut self, depth: u32) -> R<()> {
        match self.next_token()? {
            b'"' => {
                self.i += 1;
                self.skip_str().map(drop)
            }
            b'{' => {
                if depth > MAX_DEPTH {
                    return Err(GiveUp);
                }
                self.i += 1;
                if self.next_token()? == b'}' {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    if self.next_token()? != b'"' {
                        return Err(GiveUp);
                    }
                    self.i += 1;
                    self.skip_str()?;
                    self.expect(b':')?;
                    self.skip_value(depth + 1)?;
                    match self.next_token()? {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(GiveUp),
                    }
                }
            }
            b'[' => {
                if depth > MAX_DEPTH {
                    return Err(GiveUp);
                }
                self.i += 1;
                if self.next_token()? == b']' {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    match self.next_token()? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(GiveUp),
                    }
                }
            }
            b'n' => self.literal(b"null"),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(GiveUp),
        }
    }

    /// A number, by JSON's grammar (serde's `ignore_integer`, `ignore_decimal`,
    /// `ignore_exponent`; a leading zero followed by a digit is refused by the caller, which
    /// then finds no separator).
    fn number(&mut self) -> R<()> {
        self.i = number_end(self.b, self.i).ok_or(GiveUp)?;
        Ok(())
    }
}

/// A field met once; a second time is serde's "duplicate field", which the full probe judges.
#[inline]
fn once(seen: &mut bool) -> R<()> {
    if std::mem::replace(seen, true) {
        Err(GiveUp)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The light check answers for itself on the answers DeepSeek writes (the full probe is
    /// only the fallback), and gives up on what only serde can judge.
    #[test]
    fn reads_real_answers_and_gives_up_on_the_rest() {
        let answer = br#"{"id":"1","object":"chat.completion","model":"deepseek-chat","system_fingerprint":"fp_1","choices":[{"index":0,"message":{"role":"assistant","content":"a \"finish_reason\":\"insufficient_system_resource\" \u00e9\n"},"logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10,"prompt_tokens_details":{"cached_tokens":3}}}"#;
        let p = light_probe(answer, true).expect("read by the light check");
        assert!(p.error.is_none());
        assert_eq!(p.choices.and_then(|c| c.0), Some(FinishReason::Length));
        assert_eq!(p.usage.map(|u| u.total_tokens), Some(10));
        assert_eq!(p.model.as_deref(), Some("deepseek-chat"));
        assert_eq!(p.system_fingerprint.as_deref(), Some("fp_1"));
        let lean = light_probe(answer, false).expect("read by the light check");
        assert!(lean.usage.is_none() && lean.model.is_none());

        let error = br#"{"error":{"message":"Server Error","type":"x"}}"#;
        assert!(light_probe(error, false).unwrap().error.is_some());
        assert!(
            light_probe(br#"{"error":null}"#, false)
                .unwrap()
                .error
                .is_none()
        );

        for other in [
            &br#"{"\u0065rror":1}"#[..],
            br#"{"error":1,"error":2}"#,
            br#"{"choices":{"finish_reason":"stop"}}"#,
            br#"{"choices":[["stop"]]}"#,
            br#"{"model":5}"#,
            br#"{"usage":{"total_tokens":-1}}"#,
            b"{\"id\":\"a\tb\"}",
            br#"{"id":"a	b"}"#,
            br#"{"choices":[{"finish_reason":"stop"}],}"#,
            br#"{"x":01}"#,
            b"{\"caf\xc3\xa9\":1}",
            br#"{"choices":[{"finish_reason":"stop"}]"#,
        ] {
            assert!(
                light_probe(other, true).is_none(),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
        let deep = format!("{{\"x\":{}1{}}}", "[".repeat(70), "]".repeat(70));
        assert!(light_probe(deep.as_bytes(), true).is_none());
        assert!(light_complete(b" [1, 2.5e-3, \"a\\\"b\", {\"k\": null}] "));
        assert!(!light_complete(b"[1, 2"));
    }
}
