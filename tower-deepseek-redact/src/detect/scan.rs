//! The scan of a text: every detector's candidates at token starts (numbers in one pass over
//! the digit runs, secrets, e-mail and IP addresses), scored with context words, then the
//! leftmost-longest non-overlapping selection.

use super::*;

#[derive(Clone, Copy)]
pub(super) struct Cand {
    pub(super) start: usize,
    pub(super) end: usize,
    /// Priority: built-in kind index, or N_BUILTIN + custom index.
    pub(super) prio: usize,
    pub(super) score: f32,
}

#[inline]
pub(super) fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

impl Detectors {
    /// The score of a `kind` candidate at `start` with base score `base`, after context words.
    fn adjust(&self, b: &[u8], kind: Kind, start: usize, base: f32) -> f32 {
        let ctx = &self.inner.context[kind as usize];
        if ctx.positive.is_empty() && ctx.negative.is_empty() {
            return base;
        }
        let w = context::Window::new(b, start);
        let mut s = base;
        if w.any(ctx.positive.iter().map(Vec::as_slice)) {
            s += context::BOOST;
        }
        if w.any(ctx.negative.iter().map(Vec::as_slice)) {
            s -= context::PENALTY;
        }
        s.clamp(0.0, 1.0)
    }

    pub(super) fn scan(&self, t: &str) -> Vec<Cand> {
        let inner = &*self.inner;
        let b = t.as_bytes();
        let mut cands: Vec<Cand> = Vec::new();
        let en = &inner.enabled;
        let any_numeric = [
            Kind::IdCard,
            Kind::Card,
            Kind::Mobile,
            Kind::Landline,
            Kind::Ssn,
            Kind::Passport,
            Kind::Ipv4,
        ]
        .iter()
        .any(|k| en[*k as usize]);
        if any_numeric {
            self.scan_numeric(t, &mut cands);
        }
        if en[Kind::Email as usize] {
            for at in memchr::memchr_iter(b'@', b) {
                if let Some((s, e)) = network::email_at(b, at) {
                    cands.push(Cand {
                        start: s,
                        end: e,
                        prio: Kind::Email as usize,
                        score: 0.9,
                    });
                }
            }
        }
        if en[Kind::Ipv6 as usize] {
            let mut next = 0;
            for c in memchr::memchr_iter(b':', b) {
                if c < next {
                    continue;
                }
                let (s, e, tok_end) = network::ipv6_at(b, c);
                next = tok_end;
                if e > s {
                    cands.push(Cand {
                        start: s,
                        end: e,
                        prio: Kind::Ipv6 as usize,
                        score: 0.8,
                    });
                }
            }
        }
        let sec = [
            Kind::PrivateKey,
            Kind::Jwt,
            Kind::ApiKey,
            Kind::Aws,
            Kind::Secret,
        ];
        if sec.iter().any(|k| en[*k as usize]) {
            secrets::scan(t, &inner.compiled.sec, en, &mut cands);
        }
        for (i, c) in inner.custom.iter().enumerate() {
            for m in c.regex.find_iter(t) {
                if m.start() == m.end() {
                    continue;
                }
                if c.validator.as_ref().is_none_or(|v| v(m.as_str())) {
                    cands.push(Cand {
                        start: m.start(),
                        end: m.end(),
                        prio: N_BUILTIN + i,
                        score: 1.0,
                    });
                }
            }
        }
        let min = inner.min_score;
        cands.retain(|c| c.score >= min);
        select(cands)
    }

    fn scan_numeric(&self, t: &str, cands: &mut Vec<Cand>) {
        let b = t.as_bytes();
        let n = b.len();
        let mut i = 0;
        while i < n {
            // Next ASCII digit.
            match next_digit(b, i) {
                Some(at) => i = at,
                None => break,
            }
            // Region start: back over letters, then an optional `+`, then an optional `(`.
            let mut rs = i;
            while rs > 0 && b[rs - 1].is_ascii_alphabetic() {
                rs -= 1;
            }
            if rs > 0 && b[rs - 1] == b'+' {
                rs -= 1;
            }
            if rs > 0 && b[rs - 1] == b'(' {
                rs -= 1;
            }
            // Region end: alphanumerics, and up to two separators followed by a digit or `(`.
            let mut re_ = i;
            let mut digits = 0usize;
            let mut dots = 0usize;
            loop {
                if re_ < n && is_alnum(b[re_]) {
                    digits += b[re_].is_ascii_digit() as usize;
                    re_ += 1;
                    continue;
                }
                let mut k = re_;
                while k < n && k < re_ + 2 && matches!(b[k], b' ' | b'-' | b'.' | b'(' | b')') {
                    k += 1;
                }
                if k > re_ && k < n && (b[k].is_ascii_digit() || b[k] == b'(') {
                    dots += b[re_..k].iter().filter(|c| **c == b'.').count();
                    re_ = k;
                    continue;
                }
                // A closing parenthesis right after digits belongs to the region.
                if re_ < n && b[re_] == b')' {
                    re_ += 1;
                }
                break;
            }
            if digits >= 7 || (digits >= 4 && dots >= 3) {
                self.numeric_region(t, rs, re_, cands);
            }
            i = re_.max(i + 1);
        }
    }

    fn numeric_region(&self, t: &str, rs: usize, re_: usize, cands: &mut Vec<Cand>) {
        let b = t.as_bytes();
        let en = &self.inner.enabled;
        let min = self.inner.min_score;
        let r = &self.inner.compiled.num;
        let mut p = rs;
        while p < re_ {
            let c = b[p];
            let starts = (c.is_ascii_alphanumeric() || c == b'+' || c == b'(')
                && (p == 0 || !is_alnum(b[p - 1]));
            if !starts {
                p += 1;
                continue;
            }
            // Every numeric match lies within the region: a short haystack.
            let rest = &t[p..re_];
            let mut best: Option<(usize, Kind, f32)> = None;
            let mut consider = |len: usize, kind: Kind, base: f32| {
                if best.is_some_and(|(l, _, _)| len <= l) {
                    return;
                }
                let score = self.adjust(b, kind, p, base);
                if score >= min {
                    best = Some((len, kind, score));
                }
            };
            let end_ok = |len: usize| b.get(p + len).is_none_or(|c| !is_alnum(*c));
            if c.is_ascii_digit() {
                if en[Kind::IdCard as usize]
                    && let Some(m) = r.id.find(rest)
                    && end_ok(m.end())
                    && let Some(s) = numbers::id_score(m.as_str())
                {
                    consider(m.end(), Kind::IdCard, s);
                }
                if en[Kind::Card as usize]
                    && let Some(m) = r.card.find(rest)
                    && let Some((len, s)) = card_at(b, p, m.as_str(), end_ok)
                {
                    consider(len, Kind::Card, s);
                }
                if en[Kind::Ssn as usize]
                    && let Some(m) = r.ssn.find(rest)
                    && end_ok(m.end())
                    && let Some(s) = numbers::ssn_score(m.as_str())
                {
                    consider(m.end(), Kind::Ssn, s);
                }
                if en[Kind::Ipv4 as usize]
                    && let Some(m) = r.ipv4.find(rest)
                    && end_ok(m.end())
                    && network::ipv4_ok(b, p, m.as_str())
                {
                    consider(m.end(), Kind::Ipv4, 0.75);
                }
            }
            if (c.is_ascii_digit() || c == b'+' || c == b'(')
                && en[Kind::Mobile as usize]
                && let Some(m) = r.mobile.find(rest)
                && end_ok(m.end())
            {
                consider(m.end(), Kind::Mobile, 0.85);
            }
            if (c == b'0' || c == b'(' || c == b'+')
                && en[Kind::Landline as usize]
                && let Some(m) = r.landline.find(rest)
                && end_ok(m.end())
                && let Some(s) = numbers::landline_score(m.as_str())
            {
                consider(m.end(), Kind::Landline, s);
            }
            if matches!(
                c,
                b'E' | b'G' | b'D' | b'S' | b'P' | b'C' | b'H' | b'M' | b'L'
            ) && en[Kind::Passport as usize]
                && let Some(m) = r.passport.find(rest)
                && end_ok(m.end())
            {
                consider(m.end(), Kind::Passport, numbers::passport_score(m.as_str()));
            }
            if let Some((len, kind, score)) = best {
                cands.push(Cand {
                    start: p,
                    end: p + len,
                    prio: kind as usize,
                    score,
                });
            }
            // Later token starts are tried too, even inside this match: if another detector's
            // match (an e-mail, an IPv6 address) wins the overlap, a number after it must
            // still be found. `select` keeps the leftmost-longest.
            p += 1;
        }
    }
}

/// A card at `p` (greedy match `m`): the longest prefix that ends at a digit-group boundary,
/// passes `end_ok` and validates. A number written in groups must not continue a grouped run
/// that starts before it (the last groups of a 20-digit invoice check code are no card),
/// unless that run is a whole card itself (two cards written one after the other) or what
/// stands before is no group at all (a phone number, an amount: longer than a group).
fn card_at(b: &[u8], p: usize, m: &str, end_ok: impl Fn(usize) -> bool) -> Option<(usize, f32)> {
    // The longest digit group of a number written in groups (invoice codes: 4 or 5; cards: 4
    // to 6).
    const MAX_GROUP: usize = 6;
    let mb = m.as_bytes();
    let sep = mb.iter().copied().find(|c| !c.is_ascii_digit());
    if let Some(sp) = sep
        && p >= 2
        && b[p - 1] == sp
        && b[p - 2].is_ascii_digit()
    {
        let run = p - 1;
        let group = run
            - b[..run]
                .iter()
                .rposition(|c| !c.is_ascii_digit())
                .map_or(0, |i| i + 1);
        let start = b[..run]
            .iter()
            .rposition(|c| !c.is_ascii_digit() && *c != sp)
            .map_or(0, |i| i + 1);
        // Whether the run ends with a whole card: its groups from some group start on.
        let ends_with_card = (start..run)
            .filter(|&i| b[i].is_ascii_digit() && (i == start || b[i - 1] == sp))
            .any(|i| {
                std::str::from_utf8(&b[i..run])
                    .ok()
                    .and_then(numbers::card_score)
                    .is_some()
            });
        if group <= MAX_GROUP && !ends_with_card {
            return None;
        }
    }
    let mut ends: Vec<usize> = vec![mb.len()];
    if sep.is_some() {
        ends.extend(
            mb.iter()
                .enumerate()
                .rev()
                .filter(|(_, c)| !c.is_ascii_digit())
                .map(|(i, _)| i),
        );
    }
    ends.into_iter()
        .filter(|e| end_ok(*e))
        .find_map(|e| numbers::card_score(&m[..e]).map(|s| (e, s)))
}

/// Leftmost, then longest, then highest priority; non-overlapping.
fn select(mut cands: Vec<Cand>) -> Vec<Cand> {
    if cands.len() <= 1 {
        return cands;
    }
    cands.sort_unstable_by(|a, b| {
        a.start
            .cmp(&b.start)
            .then(b.end.cmp(&a.end))
            .then(a.prio.cmp(&b.prio))
    });
    let mut out: Vec<Cand> = Vec::with_capacity(cands.len());
    for c in cands {
        if out.last().is_none_or(|l| c.start >= l.end) {
            out.push(c);
        }
    }
    out
}

/// The position of the next ASCII digit at or after `from`, eight bytes at a time.
#[inline]
fn next_digit(b: &[u8], mut i: usize) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    while i + 8 <= b.len() {
        let x = u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let y = x & !HI;
        // High bit of each byte: >= '0' and not > '9', for ASCII bytes only (no carries: y <= 0x7F).
        let ge0 = y + LO * (0x80 - b'0' as u64);
        let gt9 = y + LO * (0x7F - b'9' as u64);
        let m = ge0 & !gt9 & !x & HI;
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b[i..].iter().position(u8::is_ascii_digit).map(|o| i + o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_digit_finds_every_digit() {
        let t = "你好abc，é1x 23 ９ 4567890".as_bytes();
        let mut got = Vec::new();
        let mut i = 0;
        while let Some(p) = next_digit(t, i) {
            got.push(p);
            i = p + 1;
        }
        let expected: Vec<usize> = (0..t.len()).filter(|i| t[*i].is_ascii_digit()).collect();
        assert_eq!(got, expected);
    }
}
