//! Secrets: provider keys recognised by their prefix (in the spirit of gitleaks' rules),
//! JWTs, private-key blocks, chat-platform webhooks, passwords in URLs and connection strings,
//! and values after a secret-like word (`password`, `token`, `secret`, `密码`, `密钥`) that look
//! like secrets (entropy, character classes). Placeholders (`sk-xxxx…`, `your-key-here`,
//! `sk-1234567890abcdef…`, `********`) are not secrets.
//!
//! One regex of literal prefixes and words finds the few places to look; each is checked by an
//! anchored regex or a short byte scan.

use regex::Regex;

use super::{Cand, Kind, is_alnum, re};

pub(super) struct SecretRegexes {
    trigger: Regex,
    provider: Regex,
    aws: Regex,
    jwt: Regex,
    pem: Regex,
    pem_open: Regex,
    assign: Regex,
}

impl SecretRegexes {
    pub(super) fn new() -> Self {
        Self {
            trigger: re(&triggers()),
            provider: re(concat!(
                r"\A(?:sk-[A-Za-z0-9_-]{20,}",
                r"|[sr]k_(?:live|test|prod)_[A-Za-z0-9]{10,99}",
                r"|AIza[0-9A-Za-z_-]{35}",
                r"|LTAI[A-Za-z0-9]{12,24}",
                r"|AKID[A-Za-z0-9]{13,40}",
                r"|gh[pousr]_[A-Za-z0-9]{36,255}",
                r"|github_pat_[A-Za-z0-9_]{22,255}",
                r"|glpat-[A-Za-z0-9_-]{20,}",
                r"|xox[abpr]-[A-Za-z0-9-]{10,250}",
                r"|xapp-[0-9]-[A-Za-z0-9-]{10,250}",
                r"|hf_[A-Za-z0-9]{30,40}",
                r"|whsec_[A-Za-z0-9+/]{24,}",
                r"|npm_[A-Za-z0-9]{36}",
                r"|pypi-AgE[A-Za-z0-9_-]{50,}",
                r"|shpat_[a-fA-F0-9]{32}",
                r"|dop_v1_[a-f0-9]{64}",
                r"|SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43})",
            )),
            aws: re(r"\A(?:AKIA|ASIA)[0-9A-Z]{16}"),
            jwt: re(r"\AeyJ[A-Za-z0-9_-]{4,}\.ey[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"),
            pem: re(
                r"\A-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----(?s:.*?)-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----",
            ),
            pem_open: re(r"\A-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[A-Za-z0-9+/=\s:,-]*"),
            assign: re(r#"\A[A-Za-z_-]{0,16}["']?[ \t]*(?:[:=：]|是|为|is|was)?[ \t]*["'`]?"#),
        }
    }
}

/// Literal prefixes of provider keys and other secrets.
const PREFIXES: [&str; 31] = [
    "sk-",
    "sk_",
    "rk_",
    "AKIA",
    "ASIA",
    "AIza",
    "LTAI",
    "AKID",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "xoxa-",
    "xoxb-",
    "xoxp-",
    "xoxr-",
    "xapp-",
    "hf_",
    "whsec_",
    "npm_",
    "pypi-",
    "shpat_",
    "dop_v1_",
    "SG.",
    "eyJ",
    "-----BEGIN ",
    "://",
    ":AA",
];

/// Secret-like words (`passw` for password and passwd; `key` for api_key, apiKey, accessKey).
const SECRET_WORDS: [&str; 6] = ["secret", "token", "passw", "pwd", "key", "bearer"];

/// The trigger: one alternation of literals only, written out in the three cases people use
/// (`password`, `Password`, `PASSWORD`), so that the regex engine searches it with a SIMD
/// literal prefilter (a case-insensitive group of words would make it scan at a fraction of
/// the speed).
fn triggers() -> String {
    let mut alts: Vec<String> = PREFIXES.iter().map(|p| regex::escape(p)).collect();
    for w in SECRET_WORDS {
        let mut title = w.to_string();
        title[..1].make_ascii_uppercase();
        alts.extend([w.to_string(), title, w.to_ascii_uppercase()]);
    }
    alts.extend(["密码", "口令", "密钥", "秘钥", "令牌"].map(String::from));
    alts.join("|")
}

/// Prefixes of values that the provider, AWS and JWT rules own.
const OWNED_PREFIXES: [&[u8]; 25] = [
    b"sk-",
    b"sk_",
    b"rk_",
    b"AKIA",
    b"ASIA",
    b"AIza",
    b"LTAI",
    b"AKID",
    b"ghp_",
    b"gho_",
    b"ghu_",
    b"ghs_",
    b"ghr_",
    b"github_pat_",
    b"glpat-",
    b"xox",
    b"xapp-",
    b"hf_",
    b"whsec_",
    b"npm_",
    b"pypi-",
    b"shpat_",
    b"dop_v1_",
    b"SG.",
    b"eyJ",
];

/// Chat-platform webhook URLs (after `://`): the whole URL is the secret.
const WEBHOOKS: [&[u8]; 7] = [
    b"hooks.slack.com/services/",
    b"discord.com/api/webhooks/",
    b"discordapp.com/api/webhooks/",
    b"oapi.dingtalk.com/robot/send?access_token=",
    b"open.feishu.cn/open-apis/bot/v2/hook/",
    b"open.larksuite.com/open-apis/bot/v2/hook/",
    b"qyapi.weixin.qq.com/cgi-bin/webhook/send?key=",
];

/// Shannon entropy in bits per byte.
pub(super) fn entropy(v: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &c in v {
        counts[c as usize] += 1;
    }
    let n = v.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// Whether a secret-looking value is a placeholder: `xxxx`, `****`, `your…`, `…here`,
/// `<…>`, `${…}`, few distinct characters, a long run of one character or (when `strict`, for
/// keys) an ascending run such as `123456789` or `abcdefgh`.
pub(super) fn is_placeholder(v: &[u8], strict: bool) -> bool {
    const MARKS: [&[u8]; 5] = [b"xxxx", b"****", b"${", b"...", b"<"];
    // Words count as a part of their own (`your-key-here`, `YOUR_API_KEY`), not inside random
    // characters (`…iAHERE-z…`).
    const WORDS: [&[u8]; 9] = [
        b"your",
        b"here",
        b"placeholder",
        b"dummy",
        b"redacted",
        b"changeme",
        b"fake",
        b"example",
        b"replace",
    ];
    // One pass: only positions whose byte starts a mark or a word are compared.
    let at =
        |i: usize, w: &[u8]| v.len() - i >= w.len() && v[i..i + w.len()].eq_ignore_ascii_case(w);
    for i in 0..v.len() {
        let c = v[i].to_ascii_lowercase();
        if matches!(c, b'x' | b'*' | b'$' | b'.' | b'<') && MARKS.iter().any(|w| at(i, w)) {
            return true;
        }
        if matches!(c, b'y' | b'h' | b'p' | b'd' | b'r' | b'c' | b'f' | b'e')
            && (i == 0 || !v[i - 1].is_ascii_alphanumeric())
            && WORDS.iter().any(|w| {
                at(i, w)
                    && v.get(i + w.len())
                        .is_none_or(|c| !c.is_ascii_alphanumeric())
            })
        {
            return true;
        }
    }
    let mut seen = [false; 256];
    let mut distinct = 0;
    let (mut run, mut asc, mut max_run, mut max_asc) = (1, 1, 1, 1);
    // Steps that repeat or count up (`aaaa1111bbbb`, `abc123def456`): rare in random keys.
    let mut patterned = 0usize;
    for (i, &c) in v.iter().enumerate() {
        if !seen[c as usize] {
            seen[c as usize] = true;
            distinct += 1;
        }
        if i > 0 {
            let p = v[i - 1];
            run = if c == p { run + 1 } else { 1 };
            asc = if c.is_ascii_alphanumeric() && c == p.wrapping_add(1) {
                asc + 1
            } else {
                1
            };
            max_run = max_run.max(run);
            max_asc = max_asc.max(asc);
            patterned += (run > 1 || asc > 1) as usize;
        }
    }
    let steps = v.len().saturating_sub(1).max(1);
    distinct <= 3
        || max_run >= 6
        || (strict && (max_asc >= 7 || distinct <= 5 || patterned * 5 >= steps * 2))
}

fn left_ok(b: &[u8], p: usize) -> bool {
    p == 0 || !is_alnum(b[p - 1])
}

/// Finds the secrets of `t` and pushes them to `out`.
pub(super) fn scan(t: &str, r: &SecretRegexes, en: &[bool], out: &mut Vec<Cand>) {
    let b = t.as_bytes();
    let mut next = 0;
    let push = |out: &mut Vec<Cand>, start: usize, end: usize, kind: Kind, score: f32| {
        out.push(Cand {
            start,
            end,
            prio: kind as usize,
            score,
        });
    };
    for m in r.trigger.find_iter(t) {
        let p = m.start();
        if p < next {
            continue;
        }
        let rest = &t[p..];
        let word = m.as_str().as_bytes();
        match word {
            b"://" => {
                if en[Kind::Secret as usize]
                    && let Some((s, e, score)) = url(b, p)
                {
                    push(out, s, e, Kind::Secret, score);
                    next = e;
                }
            }
            b"-----BEGIN " => {
                if en[Kind::PrivateKey as usize]
                    && let Some(m) = r.pem.find(rest).or_else(|| r.pem_open.find(rest))
                {
                    push(out, p, p + m.end(), Kind::PrivateKey, 1.0);
                    next = p + m.end();
                }
            }
            b"eyJ" => {
                if en[Kind::Jwt as usize]
                    && left_ok(b, p)
                    && let Some(m) = r.jwt.find(rest)
                {
                    push(out, p, p + m.end(), Kind::Jwt, 0.95);
                    next = p + m.end();
                }
            }
            b"AKIA" | b"ASIA" => {
                if !left_ok(b, p) {
                    continue;
                }
                let Some(m) = r.aws.find(rest) else { continue };
                let e = p + m.end();
                if b.get(e).is_some_and(|c| is_alnum(*c)) || is_placeholder(&b[p + 4..e], true) {
                    continue;
                }
                next = e;
                if en[Kind::Aws as usize] {
                    push(out, p, e, Kind::Aws, 0.95);
                }
                if en[Kind::Secret as usize]
                    && let Some((s, e2)) = aws_secret_after(b, e)
                {
                    push(out, s, e2, Kind::Secret, 0.85);
                    next = e2;
                }
            }
            b":AA" => {
                if en[Kind::ApiKey as usize]
                    && let Some((s, e)) = telegram_at(b, p)
                {
                    push(out, s, e, Kind::ApiKey, 0.9);
                    next = e;
                }
            }
            _ if is_prefix(word) => {
                if !en[Kind::ApiKey as usize] || !left_ok(b, p) {
                    continue;
                }
                let Some(m) = r.provider.find(rest) else {
                    continue;
                };
                let e = p + m.end();
                let body = &b[p + prefix_len(&b[p..e], word.len())..e];
                if b.get(e).is_some_and(|c| is_alnum(*c)) || is_placeholder(body, true) {
                    continue;
                }
                push(out, p, e, Kind::ApiKey, 0.95);
                next = e;
            }
            _ => {
                if !en[Kind::Secret as usize] {
                    continue;
                }
                if let Some((s, e)) = assigned(t, p, word, r) {
                    push(out, s, e, Kind::Secret, 0.8);
                    next = e;
                }
            }
        }
    }
}

/// Whether a trigger is a provider prefix (`sk-`, `ghp_`, `LTAI`), not a secret-like word.
fn is_prefix(word: &[u8]) -> bool {
    matches!(word.last(), Some(b'-' | b'_' | b'.')) || matches!(word, b"LTAI" | b"AIza" | b"AKID")
}

/// A Telegram bot token around the `:AA` at `c`: 8 to 10 digits, `:AA`, 33 more characters.
fn telegram_at(b: &[u8], c: usize) -> Option<(usize, usize)> {
    let mut s = c;
    while s > 0 && c - s < 10 && b[s - 1].is_ascii_digit() {
        s -= 1;
    }
    if c - s < 8 || (s > 0 && is_alnum(b[s - 1])) {
        return None;
    }
    let mut e = c + 3;
    while e < b.len() && (is_alnum(b[e]) || b[e] == b'_' || b[e] == b'-') {
        e += 1;
    }
    (e - (c + 3) == 33 && !is_placeholder(&b[c + 3..e], true)).then_some((s, e))
}

/// The length of the fixed part of a provider key (`sk-proj-`, `sk_live_`, `ghp_`, …); `short`
/// is the length of the prefix that was found.
fn prefix_len(v: &[u8], short: usize) -> usize {
    for p in [
        &b"sk-proj-"[..],
        b"sk-ant-api03-",
        b"sk-svcacct-",
        b"github_pat_",
        b"sk_live_",
        b"sk_test_",
        b"sk_prod_",
        b"rk_live_",
        b"rk_test_",
        b"rk_prod_",
        b"xapp-",
        b"glpat-",
    ] {
        if v.starts_with(p) {
            return p.len();
        }
    }
    short.min(v.len())
}

/// A 40-character AWS secret access key right after a key id (`AKIA…:wJalr…`, `AKIA… / …`).
fn aws_secret_after(b: &[u8], e: usize) -> Option<(usize, usize)> {
    let mut i = e;
    while i < b.len() && i < e + 4 && matches!(b[i], b' ' | b'\t' | b':' | b'/' | b',' | b'|') {
        i += 1;
    }
    if i == e {
        return None;
    }
    let s = i;
    while i < b.len() && (is_alnum(b[i]) || b[i] == b'/' || b[i] == b'+') {
        i += 1;
    }
    let ok = i - s == 40
        && b.get(i).is_none_or(|c| *c != b'=')
        && entropy(&b[s..i]) >= 4.0
        && !is_placeholder(&b[s..i], true);
    ok.then_some((s, i))
}

/// A webhook URL (the whole URL) or the password of `scheme://user:password@host`.
fn url(b: &[u8], p: usize) -> Option<(usize, usize, f32)> {
    let after = p + 3;
    let tail = &b[after..];
    if WEBHOOKS.iter().any(|w| tail.starts_with(w)) {
        let mut s = p;
        while s > 0 && (b[s - 1].is_ascii_alphanumeric() || matches!(b[s - 1], b'+' | b'.' | b'-'))
        {
            s -= 1;
        }
        let mut e = after;
        while e < b.len()
            && (b[e].is_ascii_alphanumeric()
                || matches!(
                    b[e],
                    b'-' | b'.' | b'_' | b'~' | b'/' | b'?' | b'=' | b'&' | b'%'
                ))
        {
            e += 1;
        }
        while e > after && matches!(b[e - 1], b'.' | b'?' | b'&') {
            e -= 1;
        }
        let token = b[after..e]
            .iter()
            .rev()
            .take_while(|c| **c != b'/' && **c != b'=');
        return (s < p && token.count() >= 16).then_some((s, e, 0.95));
    }
    let mut i = after;
    while i < b.len() && i - after < 256 {
        let c = b[i];
        if c == b'@' {
            break;
        }
        // People paste passwords unencoded (`#`, `?`, `%`, `&`): only a space, a quote or a
        // path ends the user info.
        if c.is_ascii_whitespace() || matches!(c, b'/' | b'"' | b'\'' | b'<' | b'>') {
            return None;
        }
        i += 1;
    }
    if b.get(i) != Some(&b'@') || !b.get(i + 1).is_some_and(|c| is_alnum(*c)) {
        return None;
    }
    let colon = after + b[after..i].iter().position(|c| *c == b':')?;
    let (s, e) = (colon + 1, i);
    let pw = &b[s..e];
    let named = [&b"password"[..], b"pass", b"passwd", b"secret", b"pwd"]
        .iter()
        .any(|w| pw.eq_ignore_ascii_case(w));
    (!pw.is_empty() && !named && !is_placeholder(pw, false)).then_some((s, e, 0.9))
}

fn is_value_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'+' | b'/'
                | b'='
                | b'_'
                | b'.'
                | b'!'
                | b'@'
                | b'#'
                | b'$'
                | b'%'
                | b'^'
                | b'&'
                | b'*'
                | b'~'
                | b'-'
        )
}

/// A secret-looking value assigned to a secret-like word at `p` (`password: …`, `token=…`,
/// `"client_secret": "…"`, `密码是…`).
fn assigned(t: &str, p: usize, word: &[u8], r: &SecretRegexes) -> Option<(usize, usize)> {
    let b = t.as_bytes();
    // A word, not the middle of one (`monkey`, `hotkey`), but `camelCaseToken`, `APIKEY`,
    // `apikey`, `accesskey`.
    if word[0].is_ascii()
        && p > 0
        && b[p - 1].is_ascii_alphabetic()
        && !(b[p - 1].is_ascii_lowercase() && word[0].is_ascii_uppercase())
    {
        let mut q = p;
        while q > 0 && p - q < 16 && b[q - 1].is_ascii_alphabetic() {
            q -= 1;
        }
        let before = b[q..p].to_ascii_lowercase();
        let ok = word.eq_ignore_ascii_case(b"key")
            && [
                &b"api"[..],
                b"access",
                b"secret",
                b"app",
                b"client",
                b"private",
            ]
            .iter()
            .any(|x| before.ends_with(x));
        if !ok {
            return None;
        }
    }
    // This crate's own hash labels (`[API_KEY:h40b3…]`, `[SECRET:h…]`) are not secrets.
    let mut q = p;
    while q > 0 && (b[q - 1].is_ascii_uppercase() || b[q - 1] == b'_') {
        q -= 1;
    }
    if q > 0 && b[q - 1] == b'[' {
        return None;
    }
    let lower = word.to_ascii_lowercase();
    let password = lower.starts_with(b"pass")
        || lower.starts_with(b"pwd")
        || word == "密码".as_bytes()
        || word == "口令".as_bytes();
    let from = p + word.len();
    // The tail of the word and the separator, then the value: up to 1 KiB of a
    // token or password (no regex captures: a plain byte scan).
    let s = from + r.assign.find(&t[from..])?.end();
    let mut e = s;
    while e < b.len() && e - s < 1024 && is_value_byte(b[e]) {
        e += 1;
    }
    if e - s < 6 || b.get(e).is_some_and(|c| is_value_byte(*c)) {
        return None;
    }
    while e > s && matches!(b[e - 1], b'.' | b',') {
        e -= 1;
    }
    let v = &b[s..e];
    if OWNED_PREFIXES.iter().any(|x| v.starts_with(x)) {
        return None;
    }
    let digit = v.iter().any(u8::is_ascii_digit);
    let upper = v.iter().any(u8::is_ascii_uppercase);
    let lower_c = v.iter().any(u8::is_ascii_lowercase);
    let symbol = v.iter().any(|c| !c.is_ascii_alphanumeric());
    // `pwd: /home/app`, `password file: ~/.pgpass`: a path, not a password.
    let path = matches!(v[0], b'/' | b'~' | b'.');
    let ok = if password {
        v.len() >= 6
            && !path
            && (digit || symbol || (upper && lower_c))
            && !is_placeholder(v, false)
    } else {
        v.len() >= 16
            && digit
            && (upper || lower_c)
            && entropy(v)
                >= if v.iter().all(u8::is_ascii_hexdigit) {
                    2.5
                } else {
                    3.0
                }
            && !is_placeholder(v, true)
    };
    ok.then_some((s, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders() {
        for p in [
            &b"xxxxxxxxxxxxxxxxxxxxxxxx"[..],
            b"your-key-here",
            b"1234567890abcdef1234567890abcdef",
            b"abcdefghijklmnopqrstuvwxyz123456",
            b"00000000000000000000000000000000",
            b"********",
            b"abc123def456ghi789jkl012",
            b"aaaa1111bbbb2222cccc3333",
            b"INSERT_KEY_HERE",
        ] {
            assert!(is_placeholder(p, true), "{}", String::from_utf8_lossy(p));
        }
        assert!(!is_placeholder(b"4f8e2a9c1b3d5e7f9a0b2c4d6e8f0a1b", true));
        assert!(!is_placeholder(b"Zhang@2024", false));
    }
}
