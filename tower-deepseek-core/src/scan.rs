//! The JSON scanning both of core's one-pass readers share: the request view
//! ([`view`](crate::view)) and the light end check of an answer (`classify/light.rs`). Each
//! keeps its own grammar walk (the view builds a tape, the end check reads a few fields); the
//! loops that cross strings, numbers and whitespace, where their time goes, are these.

/// Whether `c` is JSON whitespace.
#[inline(always)]
pub(crate) fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\n' | b'\r' | b'\t')
}

/// The offset of the first byte from `i` on that is not whitespace (`b.len()` if none).
#[inline]
pub(crate) fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_ws(b[i]) {
        i += 1;
    }
    i
}

/// The offset of the first quote, backslash or control character in `b` from `i` on. Sixteen
/// bytes are tested at a time.
#[inline]
pub(crate) fn special(b: &[u8], mut i: usize) -> Option<usize> {
    #[inline(always)]
    fn is_special(c: u8) -> bool {
        (c == b'"') | (c == b'\\') | (c < 0x20)
    }
    /// The high bit of each byte of `w` that is special, exact up to the lowest one (the
    /// borrow of a subtraction may mark a later byte, never an earlier one).
    #[inline(always)]
    fn special_bits(w: u64) -> u64 {
        const ONES: u64 = u64::MAX / 255;
        let ctrl = w.wrapping_sub(ONES * 0x20) & !w;
        let q = w ^ (ONES * u64::from(b'"'));
        let quote = q.wrapping_sub(ONES) & !q;
        let s = w ^ (ONES * u64::from(b'\\'));
        let slash = s.wrapping_sub(ONES) & !s;
        (ctrl | quote | slash) & (ONES << 7)
    }
    while let Some(chunk) = b.get(i..i + 16) {
        let chunk: &[u8; 16] = chunk.try_into().ok()?;
        // A reduction without early exit, which the compiler makes a vector compare; the
        // position, when there is one, from two words.
        if chunk.iter().fold(false, |any, &c| any | is_special(c)) {
            let (lo, hi) = chunk.split_at(8);
            let lo = special_bits(u64::from_le_bytes(lo.try_into().ok()?));
            let at = if lo != 0 {
                lo.trailing_zeros()
            } else {
                64 + special_bits(u64::from_le_bytes(hi.try_into().ok()?)).trailing_zeros()
            };
            return Some(i + at as usize / 8);
        }
        i += 16;
    }
    b.get(i..)?
        .iter()
        .position(|&c| is_special(c))
        .map(|p| i + p)
}

/// Crosses a string whose opening quote is just before `i`: the offset after its closing
/// quote, and whether it holds an escape. `None` for what serde_json refuses: no closing quote,
/// a control character, an unknown escape, a `\u` without four hex digits. (Lone surrogates
/// are left to whoever decodes the string.)
#[inline]
pub(crate) fn string_end(b: &[u8], mut i: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        let n = special(b, i)?;
        match b[n] {
            b'"' => return Some((n + 1, escaped)),
            b'\\' => escaped = true,
            _ => return None,
        }
        i = match b.get(n + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => n + 2,
            b'u' => {
                let hex = b.get(n + 2..n + 6)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                n + 6
            }
            _ => return None,
        };
    }
}

/// Crosses a number by JSON's grammar from `i` (a sign or a digit): the offset after it.
/// `None` if none starts there, or a fraction or exponent has no digit. A leading zero ends
/// the number (`01` is `0` followed by `1`, which the caller then refuses).
#[inline]
pub(crate) fn number_end(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        (i > start).then_some(i)
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    i = match b.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits(i)?,
        _ => return None,
    };
    if b.get(i) == Some(&b'.') {
        i = digits(i + 1)?;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        i = digits(i)?;
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_numbers_and_specials() {
        let s = br#""plain" "a\"b\u00e9\/" "bad\x" "ctl	x" "open"#;
        assert_eq!(string_end(s, 1), Some((7, false)));
        assert_eq!(string_end(s, 9), Some((22, true)));
        assert_eq!(string_end(s, 24), None, "unknown escape");
        assert_eq!(string_end(s, 32), None, "control character");
        assert_eq!(string_end(s, 40), None, "no closing quote");
        for (n, end) in [
            (&b"0,"[..], Some(1)),
            (b"-12.5e+3]", Some(8)),
            (b"01", Some(1)),
            (b"1.", None),
            (b"1e", None),
            (b"-", None),
            (b"x", None),
        ] {
            assert_eq!(number_end(n, 0), end, "{}", String::from_utf8_lossy(n));
        }
        let long = [b"a".repeat(40), b"\\".to_vec()].concat();
        assert_eq!(special(&long, 3), Some(40));
        assert_eq!(special(b"abc", 0), None);
        assert_eq!(skip_ws(b" \t\r\nx", 0), 4);
    }
}
