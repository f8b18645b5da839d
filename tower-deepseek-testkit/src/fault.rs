//! Scripted faults ([`Fault`]) and the rules that select requests for them ([`Match`]).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};

use crate::record::RecordedRequest;
use crate::{CHAT_PATHS, TOKEN_PATH};

/// A scripted behaviour for one request (or, with [`MockServer::always`], for many).
///
/// Build one with a constructor (`Fault::status(503)`, `Fault::hang()`, ...) and refine it
/// with the by-value modifiers [`header`](Fault::header), [`body`](Fault::body),
/// [`delay`](Fault::delay) and [`then_empty`](Fault::then_empty).
///
/// # What each fault does to each kind of answer
///
/// The *normal answer* is what the endpoint would have produced without a fault: the chat
/// JSON, the SSE stream of a `"stream": true` request, the model list, a token, ...
/// Faults that reshape the normal answer ([`blank_lines`](Fault::blank_lines),
/// [`keepalive_comments`](Fault::keepalive_comments), [`slow_drip`](Fault::slow_drip),
/// [`cut_without_done`](Fault::cut_without_done), [`reset_mid_stream`](Fault::reset_mid_stream),
/// [`malformed_json`](Fault::malformed_json), [`in_band_error`](Fault::in_band_error))
/// only reshape successful answers: if the endpoint itself refuses the request (401 for a
/// missing key, 422 for a missing `model`, 404, ...), that error is sent as is, after the
/// fault's delay and with its extra headers.
///
/// On a non-streaming answer, the stream-oriented faults act on the JSON bytes:
/// `cut_without_done` sends the first half of the JSON and ends the body cleanly (a
/// truncated 200), `reset_mid_stream` sends the first half and then aborts, and `slow_drip`
/// sends the JSON in about eight pieces spaced by its interval.
///
/// [`MockServer::always`]: crate::MockServer::always
#[derive(Clone, Debug)]
#[must_use]
pub struct Fault {
    pub(crate) kind: FaultKind,
    pub(crate) delay: Option<Duration>,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) body: Option<Bytes>,
    pub(crate) then_empty: bool,
}

#[derive(Clone, Debug)]
pub(crate) enum FaultKind {
    Ok,
    Status(StatusCode),
    Hang,
    BlankLines { n: usize, interval: Duration },
    KeepaliveComments { n: usize, interval: Duration },
    Empty200,
    ResetBeforeHeaders,
    ResetMidStream(usize),
    CutWithoutDone(usize),
    SlowDrip(Duration),
    MalformedJson,
    InBandError,
    FinishReason(String),
}

impl Fault {
    fn new(kind: FaultKind) -> Fault {
        Fault {
            kind,
            delay: None,
            headers: Vec::new(),
            body: None,
            then_empty: false,
        }
    }

    /// Answer with this status code.
    ///
    /// Without [`body`](Fault::body), an error status gets DeepSeek's error body
    /// (`{"error":{"message","type","param":null,"code"}}`, message per status such as
    /// `"Server Overloaded"` for 503); on the token endpoint it gets an OAuth2 error body
    /// (`{"error":"server_error","error_description":...}`). A 2xx status without a body
    /// sends the normal answer with that status.
    ///
    /// # Panics
    ///
    /// If `code` is not a valid HTTP status code (100 to 999).
    pub fn status(code: u16) -> Fault {
        let status = StatusCode::from_u16(code)
            .unwrap_or_else(|_| panic!("Fault::status: {code} is not a valid HTTP status code"));
        Fault::new(FaultKind::Status(status))
    }

    /// Adds a response header (for example `("retry-after", "2")`).
    ///
    /// The first value given for a name replaces the header the server would have sent
    /// (so `content-type` can be overridden); further values for the same name are appended.
    /// Headers are ignored by faults that send no response ([`hang`](Fault::hang),
    /// [`reset_before_headers`](Fault::reset_before_headers)).
    ///
    /// # Panics
    ///
    /// If `name` is not a valid header name or `value` not a valid header value.
    pub fn header(mut self, name: &str, value: &str) -> Fault {
        let name = HeaderName::try_from(name)
            .unwrap_or_else(|_| panic!("Fault::header: invalid header name {name:?}"));
        let value = HeaderValue::try_from(value)
            .unwrap_or_else(|_| panic!("Fault::header: invalid value for header {name}"));
        self.headers.push((name, value));
        self
    }

    /// Replaces the payload of the response with these bytes.
    ///
    /// For [`status`](Fault::status) it replaces the error body; for [`ok`](Fault::ok),
    /// [`blank_lines`](Fault::blank_lines) and [`keepalive_comments`](Fault::keepalive_comments)
    /// it replaces the normal answer sent after the preamble; for [`empty_200`](Fault::empty_200)
    /// it is the body. Other faults ignore it.
    pub fn body(mut self, body: impl Into<Bytes>) -> Fault {
        self.body = Some(body.into());
        self
    }

    /// Waits this long (on a tokio timer) before sending the response head.
    ///
    /// Combines with every fault, including [`ok`](Fault::ok) for a slow but normal answer and
    /// [`reset_before_headers`](Fault::reset_before_headers) for a late reset.
    pub fn delay(mut self, d: Duration) -> Fault {
        self.delay = Some(d);
        self
    }

    /// The normal answer; useful with [`delay`](Fault::delay) or [`header`](Fault::header).
    pub fn ok() -> Fault {
        Fault::new(FaultKind::Ok)
    }

    /// Never answers: the request stays open until the client gives up or the server shuts
    /// down (then the connection is closed without a response).
    pub fn hang() -> Fault {
        Fault::new(FaultKind::Hang)
    }

    /// DeepSeek's queueing behaviour for non-streaming requests: a 200 head at once, then
    /// `n` lines of `"\n"`, each followed by a pause of `interval`, then the normal answer.
    ///
    /// The lines are sent literally whatever the request, so on a streaming request they
    /// appear before the first SSE event.
    pub fn blank_lines(n: usize, interval: Duration) -> Fault {
        Fault::new(FaultKind::BlankLines { n, interval })
    }

    /// DeepSeek's queueing behaviour for streaming requests: a 200 head at once, then `n`
    /// SSE comments `": keep-alive\n\n"`, each followed by a pause of `interval`, then the
    /// normal answer.
    ///
    /// The comments are sent literally whatever the request, so on a non-streaming request
    /// they make the JSON body invalid.
    pub fn keepalive_comments(n: usize, interval: Duration) -> Fault {
        Fault::new(FaultKind::KeepaliveComments { n, interval })
    }

    /// After the preamble (blank lines or keep-alive comments), end the body without sending
    /// anything more: the "empty 200 after a long wait" that users report under load.
    ///
    /// On other faults, the response body is empty.
    pub fn then_empty(mut self) -> Fault {
        self.then_empty = true;
        self
    }

    /// A 200 with `content-type: application/json` and an empty body.
    pub fn empty_200() -> Fault {
        Fault::new(FaultKind::Empty200)
    }

    /// Reads the whole request, then closes the TCP connection abruptly without any response
    /// (with `SO_LINGER` set to zero, so the peer gets a TCP RST, on Unix).
    ///
    /// Every request multiplexed on the same HTTP/2 connection fails with it.
    pub fn reset_before_headers() -> Fault {
        Fault::new(FaultKind::ResetBeforeHeaders)
    }

    /// Streaming: sends the 200 head and the first `after_events` SSE events, then aborts
    /// the response, so that reading the body fails on the client (HTTP/1.1: the connection
    /// closes before the last chunk; HTTP/2: the stream is reset).
    pub fn reset_mid_stream(after_events: usize) -> Fault {
        Fault::new(FaultKind::ResetMidStream(after_events))
    }

    /// Streaming: sends the first `after_events` SSE events, then ends the body cleanly
    /// without `data: [DONE]`.
    pub fn cut_without_done(after_events: usize) -> Fault {
        Fault::new(FaultKind::CutWithoutDone(after_events))
    }

    /// Sends every SSE event (non-streaming: every piece of the JSON) spaced by `interval`.
    ///
    /// It replaces the server's [`stream_chunk_delay`](crate::MockServerBuilder::stream_chunk_delay)
    /// for this response.
    pub fn slow_drip(interval: Duration) -> Fault {
        Fault::new(FaultKind::SlowDrip(interval))
    }

    /// A 200 `application/json` answer whose body is not valid JSON. Streaming: after the
    /// first event, one `data:` event carries invalid JSON; the rest of the stream follows.
    pub fn malformed_json() -> Fault {
        Fault::new(FaultKind::MalformedJson)
    }

    /// A 200 whose JSON body is an error object (`{"error":{...}}`). Streaming: the first
    /// two events, then a `data: {"error":{...}}` event, and no `data: [DONE]`.
    pub fn in_band_error() -> Fault {
        Fault::new(FaultKind::InBandError)
    }

    /// The normal answer, whose `finish_reason` is `reason`
    /// (for example `"insufficient_system_resource"` or `"content_filter"`).
    pub fn finish_reason(reason: &str) -> Fault {
        Fault::new(FaultKind::FinishReason(reason.to_owned()))
    }
}

/// What part of a request a rule matches on.
///
/// Used by [`MockServer::enqueue_when`](crate::MockServer::enqueue_when) and
/// [`MockServer::always`](crate::MockServer::always). Paths are compared without the query
/// string.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Match {
    /// Every request.
    Any,
    /// Requests whose path (without the query) is exactly this.
    Path(String),
    /// Requests whose body contains these bytes.
    BodyContains(String),
    /// Requests with this header set to exactly this value (any of its values).
    Header(HeaderName, String),
    /// Requests to `/chat/completions` or `/v1/chat/completions`.
    Chat,
    /// Requests to the OAuth2 token endpoint ([`TOKEN_PATH`]).
    Token,
    /// Requests with this method.
    Method(Method),
    /// Requests whose JSON body has `"stream": true`.
    Stream,
    /// Requests that match every one of these (an empty list matches everything).
    All(Vec<Match>),
}

impl Match {
    /// [`Match::Any`].
    pub fn any() -> Match {
        Match::Any
    }

    /// [`Match::Path`]: the exact path, without the query.
    pub fn path(path: impl Into<String>) -> Match {
        Match::Path(path.into())
    }

    /// [`Match::BodyContains`].
    pub fn body_contains(needle: impl Into<String>) -> Match {
        Match::BodyContains(needle.into())
    }

    /// [`Match::Header`].
    ///
    /// # Panics
    ///
    /// If `name` is not a valid header name.
    pub fn header(name: &str, value: impl Into<String>) -> Match {
        let name = HeaderName::try_from(name)
            .unwrap_or_else(|_| panic!("Match::header: invalid header name {name:?}"));
        Match::Header(name, value.into())
    }

    /// [`Match::Chat`]: both chat completion paths.
    pub fn chat() -> Match {
        Match::Chat
    }

    /// [`Match::Token`]: the OAuth2 token endpoint.
    pub fn token() -> Match {
        Match::Token
    }

    /// [`Match::Method`].
    pub fn method(method: Method) -> Match {
        Match::Method(method)
    }

    /// [`Match::Stream`]: requests that ask for an SSE answer.
    pub fn stream() -> Match {
        Match::Stream
    }

    /// Both this and `other` must match ([`Match::All`]).
    pub fn and(self, other: Match) -> Match {
        match self {
            Match::All(mut all) => {
                all.push(other);
                Match::All(all)
            }
            first => Match::All(vec![first, other]),
        }
    }

    /// Whether this rule selects `req`.
    pub fn matches(&self, req: &RecordedRequest) -> bool {
        match self {
            Match::Any => true,
            Match::Path(path) => req.path_without_query() == path,
            Match::BodyContains(needle) => contains(&req.body, needle.as_bytes()),
            Match::Header(name, value) => req
                .headers
                .get_all(name)
                .iter()
                .any(|v| v.as_bytes() == value.as_bytes()),
            Match::Chat => CHAT_PATHS.contains(&req.path_without_query()),
            Match::Token => req.path_without_query() == TOKEN_PATH,
            Match::Method(method) => req.method == method,
            Match::Stream => {
                req.json()
                    .and_then(|v| v.get("stream").and_then(serde_json::Value::as_bool))
                    == Some(true)
            }
            Match::All(all) => all.iter().all(|m| m.matches(req)),
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, path: &str, body: &str) -> RecordedRequest {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-tenant", HeaderValue::from_static("acme"));
        RecordedRequest {
            method,
            path: path.to_owned(),
            headers,
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    #[test]
    fn matchers() {
        let chat = req(Method::POST, "/v1/chat/completions?x=1", r#"{"model":"m"}"#);
        assert!(Match::any().matches(&chat));
        assert!(Match::chat().matches(&chat));
        assert!(!Match::token().matches(&chat));
        assert!(Match::path("/v1/chat/completions").matches(&chat));
        assert!(!Match::path("/chat/completions").matches(&chat));
        assert!(Match::body_contains("\"model\"").matches(&chat));
        assert!(!Match::body_contains("nope").matches(&chat));
        assert!(Match::header("x-tenant", "acme").matches(&chat));
        assert!(!Match::header("x-tenant", "other").matches(&chat));
        assert!(
            Match::method(Method::POST)
                .and(Match::chat())
                .matches(&chat)
        );
        assert!(
            !Match::method(Method::GET)
                .and(Match::chat())
                .and(Match::any())
                .matches(&chat)
        );
        let token = req(Method::POST, TOKEN_PATH, "grant_type=client_credentials");
        assert!(Match::token().matches(&token));
        assert!(!Match::chat().matches(&token));
    }

    #[test]
    #[should_panic(expected = "not a valid HTTP status code")]
    fn bad_status_panics() {
        let _ = Fault::status(42);
    }
}
