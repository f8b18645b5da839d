//! The request side: which bodies are parsed, and the masking of a buffered body field by
//! field (the rules are in [`RedactLayer`](super::RedactLayer)'s docs).

use std::borrow::Cow;

use http::HeaderMap;
use http::header::CONTENT_TYPE;

use super::error::InvalidJsonReason;
use tower_deepseek_core::view::{ChatView, ViewError};

use crate::json::{Invalid, JsonPath, SpanKind, find_request_values};
use crate::redactor::{PiiBlocked, RedactContext, Redactor};

pub(super) fn is_json_content_type(headers: &HeaderMap) -> bool {
    match headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(v) => {
            let v = v.to_ascii_lowercase();
            v.starts_with("application/json") || v.contains("+json")
        }
    }
}

/// Whether `path` is a chat or FIM endpoint, whose bodies are always parsed: it ends with
/// `/completions` (`/chat/completions`, `/v1/chat/completions`, `/beta/completions`,
/// `/v1/completions`), ignoring ASCII case, percent-encoding and trailing slashes.
pub(crate) fn is_completion_path(path: &str) -> bool {
    const TAIL: &[u8] = b"/completions";
    let decoded = percent_decode(path.as_bytes(), false);
    let mut p: &[u8] = &decoded;
    while let [rest @ .., b'/'] = p {
        p = rest;
    }
    p.len() >= TAIL.len() && p[p.len() - TAIL.len()..].eq_ignore_ascii_case(TAIL)
}

/// `%XX` decoded (and `+` as a space when `plus_is_space`); borrowed when there is nothing to
/// decode. A `%` not followed by two hex digits stays as it is.
fn percent_decode(b: &[u8], plus_is_space: bool) -> Cow<'_, [u8]> {
    if !b.iter().any(|&c| c == b'%' || (plus_is_space && c == b'+')) {
        return Cow::Borrowed(b);
    }
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                if let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    Cow::Owned(out)
}

/// Whether `url` is a `data:` URL with a base64 payload (binary: an image, audio, a file).
fn is_base64_data_url(url: &str) -> bool {
    let b = url.as_bytes();
    if b.len() < 5 || !b[..5].eq_ignore_ascii_case(b"data:") {
        return false;
    }
    let head = match memchr::memchr(b',', b) {
        Some(i) => &b[..i],
        None => return false,
    };
    head.len() >= 7 && head[head.len() - 7..].eq_ignore_ascii_case(b";base64")
}

/// Redacts a URL field: percent-decoded (`+` as a space in the query), scanned as text; when
/// an entity is found, the decoded URL with the entity masked. Base64 `data:` URLs are not
/// inspected (binary).
fn redact_url(
    redactor: &Redactor,
    url: &str,
    ctx: &mut RedactContext,
) -> Result<Option<String>, PiiBlocked> {
    if is_base64_data_url(url) {
        return Ok(None);
    }
    let (head, query) = url.split_at(url.find('?').unwrap_or(url.len()));
    let (head, query) = (
        percent_decode(head.as_bytes(), false),
        percent_decode(query.as_bytes(), true),
    );
    if let (Cow::Borrowed(_), Cow::Borrowed(_)) = (&head, &query) {
        return redactor.redact(url, ctx);
    }
    let decoded = [&*head, &*query].concat();
    redactor.redact(&String::from_utf8_lossy(&decoded), ctx)
}

/// Redacts a request body already parsed into core's shared view (see
/// [`RedactLayer`](super::RedactLayer) for the fields), and returns the view of the body to send:
/// `view` itself when nothing changed.
///
/// The view of the masked body is built as the masked body is written
/// ([`ChatView::replace_strings`]: the spans of the values after each replacement are shifted,
/// nothing is parsed), so the layers below read the view of what is sent without parsing it
/// again, and the request is parsed once in the stack whether or not it held personal data.
pub(crate) fn redact_view(
    redactor: &Redactor,
    extra_paths: &[JsonPath],
    view: &ChatView,
    ctx: &mut RedactContext,
) -> Result<ChatView, BodyError> {
    let syntax = || BodyError::Invalid(InvalidJsonReason::Syntax);
    let found = find_request_values(view, extra_paths).map_err(|e| {
        BodyError::Invalid(match e {
            Invalid::Syntax => InvalidJsonReason::Syntax,
            Invalid::TooDeep => InvalidJsonReason::TooDeep,
        })
    })?;
    let mut edits: Vec<(usize, String)> = Vec::new();
    for (id, kind) in found {
        let value = view.node(id).ok_or_else(syntax)?;
        let text = match kind {
            SpanKind::Number => Cow::Borrowed(value.raw()),
            SpanKind::Text | SpanKind::Url => value.as_str().ok_or_else(syntax)?,
        };
        let new = match kind {
            SpanKind::Url => redact_url(redactor, &text, ctx),
            SpanKind::Text | SpanKind::Number => redactor.redact(&text, ctx),
        }
        .map_err(BodyError::Blocked)?;
        if let Some(new) = new {
            edits.push((id, new));
        }
    }
    // The ids come from the walk: strings and numbers, in increasing order.
    view.replace_strings(edits).map_err(|_| syntax())
}

/// Core's reasons, in the layer's error.
pub(crate) fn invalid_reason(e: ViewError) -> InvalidJsonReason {
    match e {
        ViewError::NotUtf8 => InvalidJsonReason::NotUtf8,
        ViewError::TooDeep => InvalidJsonReason::TooDeep,
        _ => InvalidJsonReason::Syntax,
    }
}

pub(crate) enum BodyError {
    Invalid(InvalidJsonReason),
    Blocked(PiiBlocked),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_paths() {
        for p in [
            "/chat/completions",
            "/v1/chat/completions",
            "/beta/completions",
            "/v1/completions",
            "/completions",
            "/openai/deployments/x/chat/completions",
            "/chat/completions/",
            "/chat/completions//",
            "/CHAT/Completions",
            "/chat%2Fcompletions",
            "/chat/completion%73",
        ] {
            assert!(is_completion_path(p), "{p}");
        }
        for p in [
            "/",
            "/models",
            "/v1/embeddings",
            "/chat/completions/x",
            "/chatcompletions",
            "completions",
            "/user/balance",
        ] {
            assert!(!is_completion_path(p), "{p}");
        }
    }

    #[test]
    fn percent_decoding() {
        assert!(matches!(percent_decode(b"abc", true), Cow::Borrowed(_)));
        assert_eq!(&*percent_decode(b"a%40b%2d+c", true), b"a@b- c");
        assert_eq!(&*percent_decode(b"a+b", false), b"a+b");
        // Not two hex digits: kept as they are.
        assert_eq!(&*percent_decode(b"%zz%4%", false), b"%zz%4%");
        assert_eq!(&*percent_decode(b"%e4%bd%a0", false), "你".as_bytes());
    }

    #[test]
    fn base64_data_urls() {
        assert!(is_base64_data_url("data:image/png;base64,AAAA"));
        assert!(is_base64_data_url("DATA:application/pdf;BASE64,AAAA"));
        assert!(!is_base64_data_url("data:text/plain,13800138000"));
        assert!(!is_base64_data_url(
            "data:text/plain;charset=utf-8,x;base64,"
        ));
        assert!(!is_base64_data_url("data:image/png;base64"));
        assert!(!is_base64_data_url("https://x/a.png?data:;base64,"));
    }
}
