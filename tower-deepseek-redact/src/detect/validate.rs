//! The validators behind the number detectors: the resident ID number's GB 11643 check
//! character, province code and date; the Luhn check and the issuer lengths of bank cards;
//! the digit groups of a written number.

/// The province codes a resident ID number starts with (GB/T 2260).
pub(super) const PROVINCES: [u8; 35] = [
    11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51, 52,
    53, 54, 61, 62, 63, 64, 65, 71, 81, 82, 83,
];

/// Whether `y-m-d` is a date of the Gregorian calendar.
pub(super) fn valid_date(y: u32, m: u32, d: u32) -> bool {
    if !(1..=12).contains(&m) || d == 0 {
        return false;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    d <= days[(m - 1) as usize]
}

/// The value of ASCII digits.
pub(super) fn num(s: &[u8]) -> u32 {
    s.iter().fold(0, |a, c| a * 10 + (c - b'0') as u32)
}

/// Validates an 18-digit (check character) or 15-digit (legacy) resident ID number, written
/// in one piece.
pub(super) fn valid_id(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 15 || !b[..15].iter().all(u8::is_ascii_digit) {
        return false;
    }
    if !PROVINCES.contains(&(num(&b[..2]) as u8)) {
        return false;
    }
    match b.len() {
        18 => {
            if !b[15..17].iter().all(u8::is_ascii_digit) {
                return false;
            }
            let y = num(&b[6..10]);
            if !(1800..=2100).contains(&y) || !valid_date(y, num(&b[10..12]), num(&b[12..14])) {
                return false;
            }
            const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
            let sum: u32 = b[..17]
                .iter()
                .zip(W)
                .map(|(c, w)| (c - b'0') as u32 * w)
                .sum();
            let check = b"10X98765432"[(sum % 11) as usize];
            b[17].to_ascii_uppercase() == check
        }
        15 => valid_date(1900 + num(&b[6..8]), num(&b[8..10]), num(&b[10..12])),
        _ => false,
    }
}

/// Splits a written number into its characters without separators and the positions (in
/// those characters) where a separator stood; `None` when two different separators are used
/// or two follow each other.
pub(super) fn groups(s: &[u8]) -> Option<(Vec<u8>, Vec<usize>)> {
    let mut chars = Vec::with_capacity(s.len());
    let mut seps = Vec::new();
    let mut sep: Option<u8> = None;
    let mut last_sep = true;
    for &c in s {
        if c == b' ' || c == b'-' {
            if last_sep || sep.is_some_and(|x| x != c) {
                return None;
            }
            sep = Some(c);
            seps.push(chars.len());
            last_sep = true;
        } else {
            chars.push(c);
            last_sep = false;
        }
    }
    Some((chars, seps))
}

/// The Luhn check digit of a card number (ASCII digits) is right.
pub(super) fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = (d - b'0') as u32;
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum % 10 == 0
}

/// Whether the issuer prefix allows this length (Visa 13/16/19, Mastercard 16, Amex 15,
/// UnionPay, JCB, Discover and Diners 14 to 19).
pub(super) fn card_prefix_ok(d: &[u8]) -> bool {
    let n = d.len();
    match d[0] {
        b'4' => matches!(n, 13 | 16 | 19),
        b'5' => (b'1'..=b'5').contains(&d[1]) && n == 16,
        b'2' => (2221..=2720).contains(&num(&d[..4])) && n == 16,
        b'3' => match d[1] {
            b'4' | b'7' => n == 15,
            b'5' | b'0' | b'6' | b'8' => (14..=19).contains(&n),
            _ => false,
        },
        b'6' => (16..=19).contains(&n),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_check_character_and_date() {
        assert!(valid_id("11010519491231002X"));
        assert!(!valid_id("110105194912310021"));
        assert!(valid_id("440524188001010014"));
        assert!(valid_id("110105491231002"));
        assert!(!valid_id("110105491331002"));
    }

    #[test]
    fn luhn_and_issuer_lengths() {
        assert!(luhn(b"4111111111111111"));
        assert!(!luhn(b"4111111111111112"));
        assert!(card_prefix_ok(b"4111111111111111"));
        assert!(!card_prefix_ok(b"411111111111111110"));
    }
}
