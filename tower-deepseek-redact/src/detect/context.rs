//! Context words: words before a candidate that raise its score (`护照`, `SSN`) or lower it
//! (`发票代码`, `version`), in the spirit of Presidio's context enhancers.
//!
//! The window is the clause before the candidate: at most [`WINDOW`] bytes, cut at the last
//! line break, sentence punctuation or ASCII digit, so a word of the previous sentence, or one
//! that names another number (`SSN 123-45-6789, QQ 610055854`), does not count.
//! Words are compared ASCII-case-insensitively, as bytes (any language).

use super::Kind;

/// Bytes before a candidate searched for context words.
pub(super) const WINDOW: usize = 48;

/// How much a context word raises a score.
pub(super) const BOOST: f32 = 0.35;
/// How much a negative context word lowers a score.
pub(super) const PENALTY: f32 = 0.5;

/// The built-in words that raise the score of `kind` (lower-case).
pub(super) fn positive(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Ssn => &[
            "ssn",
            "social security",
            "社会安全",
            "社安号",
            "社会保障号",
            "社保号",
            "taxpayer id",
        ],
        Kind::Passport => &[
            "护照",
            "passport",
            "通行证",
            "permit",
            "回乡证",
            "台胞证",
            "证件号",
            "travel document",
            "旅行证",
        ],
        Kind::Landline => &[
            "电话", "座机", "tel", "phone", "总机", "热线", "传真", "fax", "call", "致电", "联系",
            "号码",
        ],
        Kind::Card => &[
            "卡号",
            "card",
            "银行卡",
            "信用卡",
            "储蓄卡",
            "账号",
            "账户",
            "visa",
            "mastercard",
            "银联",
            "refund",
            "退款",
        ],
        Kind::IdCard => &["身份证", "证件号", "id card", "id number", "id no"],
        _ => &[],
    }
}

const INVOICE: [&str; 6] = ["发票", "invoice", "校验码", "税号", "fapiao", "tax id"];
const ORDER: [&str; 11] = [
    "订单",
    "order",
    "单号",
    "流水号",
    "编号",
    "tracking",
    "运单",
    "合同",
    "序列号",
    "serial",
    "工号",
];
const VERSION: [&str; 12] = [
    "版本",
    "version",
    "ver.",
    "固件",
    "firmware",
    "build",
    "release",
    "chrome",
    "android",
    "ios ",
    "升级",
    "安装包",
];
const ID_WORDS: [&str; 2] = ["身份证", "id card"];
const TIME: [&str; 2] = ["时间戳", "timestamp"];
const CHAT_IDS: [&str; 4] = ["qq", "微信", "wechat", "工号"];

/// The built-in words that lower the score of `kind` (lower-case).
pub(super) fn negative(kind: Kind) -> Vec<&'static str> {
    match kind {
        Kind::Card => [&INVOICE[..], &ORDER[..], &ID_WORDS[..], &TIME[..]].concat(),
        Kind::Landline => [&INVOICE[..], &ORDER[..], &TIME[..]].concat(),
        Kind::Ssn => [&INVOICE[..], &ORDER[..], &TIME[..], &CHAT_IDS[..]].concat(),
        // `订单联系人身份证号` still counts: the positive word makes up for it.
        Kind::IdCard => [&INVOICE[..], &ORDER[..]].concat(),
        Kind::Ipv4 => VERSION.to_vec(),
        Kind::Passport => ORDER.to_vec(),
        _ => Vec::new(),
    }
}

/// The clause before `start`: at most [`WINDOW`] bytes, after the last line break, sentence
/// punctuation, or the end of another value: a digit or `@` (a number, an address), or a
/// closing `]`/`>` (a placeholder such as `[CN_ID_CARD]` or `<BANK_CARD_1>`). So the window
/// of a value is the same before and after the values near it are masked (masking twice finds
/// nothing new), and a placeholder's label is no context word.
pub(super) fn window(b: &[u8], start: usize) -> &[u8] {
    let from = start.saturating_sub(WINDOW);
    let w = &b[from..start];
    let mut cut = 0;
    let mut i = 0;
    while i < w.len() {
        let c = w[i];
        let len = match c {
            // `,` like `，`: the text is matched with its full-width forms folded, and the
            // window must be the same either way.
            b'\n' | b';' | b'!' | b'?' | b',' | b'0'..=b'9' | b'@' | b']' | b'>' => 1,
            // 。，；！？ (E3 80 82, EF BC 8C, EF BC 9B, EF BC 81, EF BC 9F)
            0xE3 if w.get(i + 1) == Some(&0x80) && w.get(i + 2) == Some(&0x82) => 3,
            0xEF if w.get(i + 1) == Some(&0xBC)
                && matches!(w.get(i + 2), Some(0x8C | 0x9B | 0x81 | 0x9F)) =>
            {
                3
            }
            _ => 0,
        };
        if len > 0 {
            cut = i + len;
            i += len;
        } else {
            i += 1;
        }
    }
    &w[cut..]
}

/// The clause before a candidate, lower-cased once, searched for many words.
pub(super) struct Window {
    buf: [u8; WINDOW],
    len: usize,
}

impl Window {
    /// The window before `start` (see [`window`]).
    pub(super) fn new(b: &[u8], start: usize) -> Self {
        let w = window(b, start);
        let mut buf = [0u8; WINDOW];
        for (d, s) in buf.iter_mut().zip(w) {
            *d = s.to_ascii_lowercase();
        }
        Self { buf, len: w.len() }
    }

    /// Whether the window holds any of `words` (lower-case).
    pub(super) fn any<'a>(&self, words: impl IntoIterator<Item = &'a [u8]>) -> bool {
        let h = &self.buf[..self.len];
        words.into_iter().any(|w| {
            if w.is_empty() || w.len() > h.len() {
                return false;
            }
            let last = h.len() - w.len();
            let mut i = 0;
            while let Some(o) = memchr::memchr(w[0], &h[i..=last]) {
                if &h[i + o..i + o + w.len()] == w {
                    return true;
                }
                i += o + 1;
                if i > last {
                    break;
                }
            }
            false
        })
    }
}
