//! Number-shaped personal data: CN mobile and landline numbers (numbering plan), resident ID
//! numbers (GB 11643 check character and date), bank cards (Luhn and IIN lengths), US SSNs
//! (the SSA's invalid ranges), PRC passports and travel permits.
//!
//! Each anchored regex finds the extent of a candidate; the validator here decides whether it
//! is one and with which base score (context words are applied by the caller).

use regex::Regex;

use super::re;
use super::validate::{PROVINCES, card_prefix_ok, groups, luhn, num, valid_id};

/// The digit-based detectors that run at token starts, with their anchored regexes.
pub(super) struct NumericRegexes {
    pub(super) mobile: Regex,
    pub(super) id: Regex,
    pub(super) card: Regex,
    pub(super) landline: Regex,
    pub(super) ssn: Regex,
    pub(super) passport: Regex,
    pub(super) ipv4: Regex,
}

impl NumericRegexes {
    pub(super) fn new() -> Self {
        Self {
            mobile: re(r"\A(?:\(?(?:\+|00)86\)?[ -]?)?1[3-9][0-9](?:[ -]?[0-9]{4}){2}"),
            id: re(r"\A(?:[1-9](?:[ -]?[0-9]){16}[ -]?[0-9Xx]|[1-9][0-9]{14})"),
            card: re(r"\A[2-6][0-9](?:[ -]?[0-9]){11,17}"),
            landline: re(
                r"\A(?:\(?(?:\+|00)86\)?[ -]?)?(?:\(0?[0-9]{2,3}\)|0?[0-9]{2,3})[ -]?[0-9]{3,4}[ -]?[0-9]{3,4}",
            ),
            ssn: re(r"\A[0-9]{3}[- ]?[0-9]{2}[- ]?[0-9]{4}"),
            passport: re(
                r"\A(?:[EG][0-9]{8}|[EC][A-HJ-NP-Z][0-9]{7}|[DSP]E[0-9]{7}|[DSP][0-9]{7,8}|[HM][0-9]{8}(?:[0-9]{2})?|[CL][0-9]{8})",
            ),
            ipv4: re(r"\A[0-9]{1,3}(?:\.[0-9]{1,3}){3}"),
        }
    }
}

/// Score of an ID candidate: one piece, or grouped 6-8-4, 6-4-4-4, 3-3-4-4-4 or 6-6-6 with one
/// kind of separator.
pub(super) fn id_score(s: &str) -> Option<f32> {
    let (chars, seps) = groups(s.as_bytes())?;
    let grouped = [&[6, 14][..], &[6, 10, 14], &[3, 6, 10, 14], &[6, 12]];
    if !(seps.is_empty() || grouped.contains(&seps.as_slice())) {
        return None;
    }
    let t = std::str::from_utf8(&chars).ok()?;
    if !valid_id(t) {
        return None;
    }
    Some(if chars.len() == 15 { 0.6 } else { 0.95 })
}

/// Score of a card candidate written in one piece or in groups of 3 to 6 digits (4-4-4-4,
/// 4-6-5, 4-4-4-4-3, or 6-13 for 19 digits).
pub(super) fn card_score(s: &str) -> Option<f32> {
    let (digits, seps) = groups(s.as_bytes())?;
    if !(13..=19).contains(&digits.len()) {
        return None;
    }
    if !seps.is_empty() {
        let mut prev = 0;
        let mut ok = true;
        for &p in seps.iter().chain([digits.len()].iter()) {
            let g = p - prev;
            ok &= (3..=6).contains(&g) || (g == 13 && prev == 6 && seps.len() == 1);
            prev = p;
        }
        if !ok {
            return None;
        }
    }
    if !(card_prefix_ok(&digits) && luhn(&digits)) {
        return None;
    }
    // 18 digits that begin with a region code and a birth year are far more likely an ID
    // number with a typo (check character or date) than one of the rare 18-digit cards: a card
    // only with a context word.
    let id_like = digits.len() == 18
        && PROVINCES.contains(&(num(&digits[..2]) as u8))
        && (1900..=2030).contains(&num(&digits[6..10]));
    Some(if id_like { 0.3 } else { 0.8 })
}

/// Score of an SSN candidate: 3-2-4 with one dash or space, or nine digits (which need a
/// context word such as `SSN`). Areas 000, 666 and 900-999, group 00 and serial 0000 are
/// never issued.
pub(super) fn ssn_score(s: &str) -> Option<f32> {
    let (d, seps) = groups(s.as_bytes())?;
    if d.len() != 9 || !(seps.is_empty() || seps == [3, 5]) {
        return None;
    }
    let area = num(&d[..3]);
    let group = num(&d[3..5]);
    let serial = num(&d[5..9]);
    if area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0 {
        return None;
    }
    Some(if seps.is_empty() {
        0.3
    } else if s.contains('-') {
        0.85
    } else {
        0.6
    })
}

/// The length of the area code (with its leading 0) of a national number, from the PRC
/// numbering plan: 010 and 02x have three digits; the four-digit codes start with one of the
/// prefixes in use.
fn area_len(d: &[u8]) -> Option<usize> {
    if d.len() < 4 || d[0] != b'0' {
        return None;
    }
    match d[1] {
        b'1' => (d[2] == b'0').then_some(3),
        b'2' => (d[2] != b'6').then_some(3),
        b'3'..=b'9' => {
            const FOUR: [u16; 47] = [
                31, 33, 34, 35, 37, 39, 41, 42, 43, 45, 46, 47, 48, 51, 52, 53, 54, 55, 56, 57, 58,
                59, 63, 66, 69, 70, 71, 72, 73, 74, 75, 76, 77, 79, 81, 82, 83, 85, 87, 88, 89, 90,
                91, 93, 94, 95, 97,
            ];
            let p = (d[1] - b'0') as u16 * 10 + (d[2] - b'0') as u16;
            (FOUR.contains(&p) || p == 99).then_some(4)
        }
        _ => None,
    }
}

/// Score of a landline candidate: an area code from the plan (with `0`, or after `+86` /
/// `0086` without it), then a local number of 8 digits (7 or 8 after a four-digit code) that
/// does not start with 0. Written with separators, the first one follows the area code and the
/// local number is in one piece or two groups. One unbroken run of digits scores lower.
pub(super) fn landline_score(s: &str) -> Option<f32> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut marked = false;
    if b.first() == Some(&b'(') && matches!(b.get(1), Some(b'+' | b'0')) && b.get(2) != Some(&b'1')
    {
        // `(+86)` or `(0086)`, not `(010)`.
        if b[1] == b'+' || b[1..].starts_with(b"0086") {
            i = 1;
        }
    }
    let cc = if b[i..].starts_with(b"+86") {
        i += 3;
        true
    } else if b[i..].starts_with(b"0086") {
        i += 4;
        true
    } else {
        false
    };
    if cc && i > 0 && b[0] == b'(' {
        if b.get(i) != Some(&b')') {
            return None;
        }
        i += 1;
    }
    // Groups of digits after the country code; `(`, `)`, ` ` and `-` separate them.
    let mut groups: Vec<&[u8]> = Vec::new();
    let mut start: Option<usize> = None;
    for (k, &c) in b.iter().enumerate().skip(i) {
        if c.is_ascii_digit() {
            start.get_or_insert(k);
        } else {
            if let Some(st) = start.take() {
                groups.push(&b[st..k]);
            }
            marked |= c == b'(';
        }
    }
    if let Some(st) = start {
        groups.push(&b[st..]);
    }
    let mut national: Vec<u8> = Vec::with_capacity(13);
    if cc && groups.first().is_some_and(|g| g[0] != b'0') {
        national.push(b'0');
    }
    for g in &groups {
        national.extend_from_slice(g);
    }
    let area = area_len(&national)?;
    let local = &national[area..];
    let len_ok = if area == 3 {
        local.len() == 8
    } else {
        (7..=8).contains(&local.len())
    };
    if !len_ok || local[0] == b'0' {
        return None;
    }
    if groups.len() > 1 {
        let first = groups[0].len() + (cc && groups[0][0] != b'0') as usize;
        if first != area || groups.len() > 3 {
            return None;
        }
        if groups.len() == 3 && !(3..=4).contains(&groups[1].len()) {
            return None;
        }
    }
    Some(if groups.len() > 1 || cc || marked {
        0.8
    } else {
        0.55
    })
}

/// Score of a passport or travel-permit candidate. The ordinary passports (`E` + 8 digits,
/// `E` + letter + 7 digits, `G` + 8 digits) are recognised alone; the diplomatic, service
/// and public-affairs series (`DE`/`SE`/`PE` + 7 digits: likely; `D`/`S`/`P` + digits) and the
/// HK/Macau/Taiwan permits (`C`, `H`, `M`, `L`) need a context word.
pub(super) fn passport_score(s: &str) -> f32 {
    let b = s.as_bytes();
    match (b[0], b[1]) {
        (b'E' | b'G', b'0'..=b'9') => 0.7,
        (b'E', _) => 0.7,
        (b'D' | b'S' | b'P', b'E') => 0.6,
        _ => 0.3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_checksum() {
        assert_eq!(id_score("110105 19491231 002X"), Some(0.95));
        assert_eq!(id_score("110105-1949-1231-002X"), Some(0.95));
        assert_eq!(id_score("1101 0519491231 002X"), None);
        assert_eq!(id_score("110105 19491231-002X"), None);
        assert_eq!(id_score("110 105 1949 1231 002X"), Some(0.95));
    }

    #[test]
    fn landline_plan() {
        for ok in [
            "010-12345678",
            "+86 10 1234 5678",
            "0086-755-87654321",
            "(0755) 8765432",
            "+86 (10) 12345678",
            "+8675587654321",
            "0571-8765-4321",
            "(+86) 21 62345678",
        ] {
            assert!(landline_score(ok).is_some(), "{ok}");
        }
        for bad in [
            "031001900104", // local number starts with 0 (an invoice code)
            "0301-2345678", // 030 is not in the plan
            "010-1234567",  // Beijing numbers have 8 digits
            "01-12345678",
            "0755-8765-4321-1",
        ] {
            assert!(landline_score(bad).is_none(), "{bad}");
        }
        assert_eq!(landline_score("075587654321"), Some(0.55));
    }

    #[test]
    fn card_lengths_follow_the_issuer() {
        assert!(card_score("4111111111111111").is_some());
        assert!(card_score("4111 1111 1111 1111").is_some());
        // 18 digits starting with 4: no Visa card has 18 digits.
        assert!(card_score("411111111111111110").is_none());
        assert!(card_score("12345 67890 12345").is_none());
    }

    #[test]
    fn ssn_forms() {
        assert_eq!(ssn_score("123-45-6789"), Some(0.85));
        assert_eq!(ssn_score("123456789"), Some(0.3));
        assert_eq!(ssn_score("123-456789"), None);
        assert_eq!(ssn_score("666-45-6789"), None);
    }
}
