//! E-mail addresses and IP addresses, kept apart from file names with `@` (`icon@2x.png`),
//! the user info of URLs (`postgres://app:pw@db.example.com`) and version strings.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::is_alnum;

fn is_email_local(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-')
}

/// File extensions that end names such as `icon@2x.png`: not top-level domains of an e-mail.
const FILE_EXTENSIONS: [&[u8]; 44] = [
    b"png", b"jpg", b"jpeg", b"gif", b"svg", b"webp", b"bmp", b"ico", b"tif", b"tiff", b"pdf",
    b"doc", b"docx", b"xls", b"xlsx", b"ppt", b"pptx", b"txt", b"md", b"csv", b"json", b"xml",
    b"yaml", b"yml", b"zip", b"rar", b"gz", b"tar", b"apk", b"exe", b"dmg", b"mp3", b"mp4", b"mov",
    b"avi", b"wav", b"js", b"ts", b"css", b"html", b"htm", b"py", b"log", b"bak",
];

/// Whether the local part of an address starting at `s` is in fact the user info of a URL
/// (`scheme://user:password@host`, `scheme://user@host`): the same token holds `://` before.
pub(super) fn in_url_userinfo(b: &[u8], s: usize) -> bool {
    let from = s.saturating_sub(256);
    let mut i = s;
    while i > from {
        if i >= 3 && &b[i - 3..i] == b"://" {
            return true;
        }
        let c = b[i - 1];
        if c.is_ascii_whitespace() || matches!(c, b'/' | b'@' | b'"' | b'\'' | b'<' | b'>') {
            return false;
        }
        i -= 1;
    }
    false
}

/// The e-mail address around the `@` at `at`, as (start, end).
pub(super) fn email_at(b: &[u8], at: usize) -> Option<(usize, usize)> {
    let mut s = at;
    while s > 0 && is_email_local(b[s - 1]) && at - s < 64 {
        s -= 1;
    }
    while s < at && matches!(b[s], b'.' | b'-' | b'+') {
        s += 1;
    }
    if s == at || (s > 0 && is_email_local(b[s - 1])) || b[s..at].windows(2).any(|w| w == b"..") {
        return None;
    }
    // `scheme://user:password@host`: a password, not the local part of an address.
    if in_url_userinfo(b, s) {
        return None;
    }
    let mut e = at + 1;
    while e < b.len() && (b[e].is_ascii_alphanumeric() || b[e] == b'.' || b[e] == b'-') {
        e += 1;
    }
    while e > at + 1 && matches!(b[e - 1], b'.' | b'-') {
        e -= 1;
    }
    let domain = &b[at + 1..e];
    let labels: Vec<&[u8]> = domain.split(|c| *c == b'.').collect();
    if labels.len() < 2
        || labels
            .iter()
            .any(|l| l.is_empty() || l.len() > 63 || l[0] == b'-' || l[l.len() - 1] == b'-')
    {
        return None;
    }
    let tld = labels[labels.len() - 1];
    if tld.len() < 2 || !tld.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    // `icon@2x.png`, `avatar@128.gif`: a file name.
    if FILE_EXTENSIONS.iter().any(|x| tld.eq_ignore_ascii_case(x)) {
        return None;
    }
    Some((s, e))
}

fn is_v6(c: u8) -> bool {
    c.is_ascii_hexdigit() || c == b':' || c == b'.'
}

/// Returns (start, end) of a valid IPv6 address around the colon at `c` (empty if none), and
/// the end of the scanned token.
pub(super) fn ipv6_at(b: &[u8], c: usize) -> (usize, usize, usize) {
    let mut s = c;
    while s > 0 && is_v6(b[s - 1]) {
        s -= 1;
    }
    let mut e = c + 1;
    while e < b.len() && is_v6(b[e]) {
        e += 1;
    }
    let tok_end = e;
    let none = (0, 0, tok_end);
    if (s > 0 && (is_alnum(b[s - 1]) || b[s - 1] == b'_'))
        || (e < b.len() && (is_alnum(b[e]) || b[e] == b'_'))
    {
        return none;
    }
    // Trailing sentence punctuation.
    while e > s && b[e - 1] == b'.' {
        e -= 1;
    }
    if e > s + 1 && b[e - 1] == b':' && b[e - 2] != b':' {
        e -= 1;
    }
    while s < e && b[s] == b'.' {
        s += 1;
    }
    // A label's colon right before the address (`地址：fe80::1` once folded).
    if e > s + 2 && b[s] == b':' && b[s + 1] != b':' {
        s += 1;
    }
    let tok = &b[s..e];
    let colons = tok.iter().filter(|c| **c == b':').count();
    if colons < 2 || !tok.iter().any(u8::is_ascii_hexdigit) {
        return none;
    }
    match std::str::from_utf8(tok)
        .ok()
        .and_then(|t| t.parse::<Ipv6Addr>().ok())
    {
        Some(_) => (s, e, tok_end),
        None => none,
    }
}

/// Whether the dotted quad `m` at `p` is an IPv4 address: not part of a longer dotted run
/// (`1.2.3.4.5`, `app-1.2.3.4.apk`), not after a `-` glued to a name.
pub(super) fn ipv4_ok(b: &[u8], p: usize, m: &str) -> bool {
    let end = p + m.len();
    if b.get(end) == Some(&b'.') && b.get(end + 1).is_some_and(|c| is_alnum(*c)) {
        return false;
    }
    if p > 0 && (b[p - 1] == b'.' || b[p - 1] == b'-' && p > 1 && is_alnum(b[p - 2])) {
        return false;
    }
    m.parse::<Ipv4Addr>().is_ok()
}
