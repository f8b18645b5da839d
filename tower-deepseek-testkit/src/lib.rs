//! A DeepSeek-compatible mock HTTP server with scripted faults, for the tests, benches and
//! offline examples of tower-deepseek.
//!
//! [`MockServer`] listens on `127.0.0.1:0`, speaks HTTP/1.1 and HTTP/2 (h2c, prior
//! knowledge), and answers like the DeepSeek API (see `DEEPSEEK-API.md`):
//!
//! | endpoint | answer |
//! |---|---|
//! | `POST /chat/completions`, `/v1/chat/completions` | a deterministic chat completion (JSON or SSE) |
//! | `POST /beta/completions` | a FIM completion (`choices[].text`) |
//! | `GET /models`, `/v1/models` | `deepseek-chat` and `deepseek-reasoner` |
//! | `GET /user/balance` | the balance of the API documentation |
//! | `POST /oauth2/token` ([`TOKEN_PATH`]) | the guide's OAuth2 client-credentials token endpoint |
//! | anything else | 404 with DeepSeek's error body |
//!
//! Every request is recorded ([`MockServer::requests`]) before anything else happens, and
//! can be given a scripted [`Fault`]: an error status with `Retry-After`, a delay before the
//! head, DeepSeek's blank lines and `: keep-alive` comments while queued, an empty or
//! truncated 200, a TCP reset before the head or in the middle of a stream, a slow drip,
//! malformed JSON, an error inside a 200, an unusual `finish_reason`, or no answer at all.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_deepseek_testkit::{Fault, Match, MockServer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let server = MockServer::builder().api_key("sk-test-1234").start().await;
//!
//! // The next API request gets a 503 with `Retry-After: 2`, then answers are normal again.
//! server.enqueue(Fault::status(503).header("retry-after", "2"));
//! // Every streaming chat waits in "the queue" for two keep-alive comments first.
//! server.always(
//!     Match::chat().and(Match::stream()),
//!     Fault::keepalive_comments(2, Duration::from_millis(5)),
//! );
//!
//! let base_url = server.url(); // "http://127.0.0.1:PORT": point the client under test here
//! # let _ = base_url;
//! // ... run the client under test against `server.uri("/chat/completions")` ...
//! assert_eq!(server.chat_count(), 0);
//! server.shutdown().await;
//! # }
//! ```
//!
//! # The answers
//!
//! Answers are derived from the request, so that a test can check what the model "saw":
//!
//! * the content is `"Echo: "` followed by the text of the last user message (text parts of
//!   a list content are joined with spaces); the `model` is the requested one;
//! * thinking mode (a model whose name contains `reasoner`, or
//!   `"thinking":{"type":"enabled"}`) adds `reasoning_content` =
//!   `"Thinking about: "` + that text, counted in `completion_tokens_details.reasoning_tokens`;
//! * with a non-empty `tools` list (and `tool_choice` not `"none"`, and the last message not
//!   already a `tool` result), the answer is a call of the first tool with the arguments
//!   `{"input":"<text of the last user message>"}` and `finish_reason` `tool_calls`;
//! * with `"response_format":{"type":"json_object"}` the content is `{"echo":"<text>"}`;
//! * a `stop` sequence found in the content ends it just before;
//! * `max_tokens` below the answer's size truncates it (`finish_reason` `length`);
//! * `usage` counts a token per four bytes of text (at least one prompt token); the
//!   prompt-cache figures count as hits the messages of the longest prefix of `messages`
//!   (per `user_id`) that this server already answered, so that
//!   `prompt_cache_hit_tokens + prompt_cache_miss_tokens == prompt_tokens`;
//! * streams send a role chunk (thinking: `"content":null,"reasoning_content":""`), the
//!   reasoning then the content split before each space (one event each), tool-call deltas,
//!   a chunk with the `finish_reason`, the usage chunk (`"choices":[]`) when
//!   `stream_options.include_usage` is true, and `data: [DONE]`. Each event is its own
//!   body frame, spaced by [`MockServerBuilder::stream_chunk_delay`].
//!
//! Invalid JSON gets a 400, a chat request without `model` or `messages` a 422, a wrong key
//! a 401 (`Authentication Fails, Your api key: ****abcd is invalid`; never the whole key).
//! As the real API does, a thinking-mode request whose history holds an assistant turn with
//! `tool_calls` but without its `reasoning_content` gets a 400 ("The `reasoning_content` in
//! the thinking mode must be passed back to the API.").
//!
//! # Which fault a request gets
//!
//! For each request, in this order: the first rule queued with
//! [`enqueue_when`](MockServer::enqueue_when) whose [`Match`] matches (consumed); else the
//! head of the FIFO queue filled by [`enqueue`](MockServer::enqueue) (consumed; never taken
//! by the token endpoint); else the first matching [`always`](MockServer::always) rule
//! (kept). A request without a fault gets the normal answer.
//!
//! # Time
//!
//! Every pause (delays, intervals, token expiry) uses tokio's timer and clock, so tests can
//! use a few real milliseconds or `tokio::time::pause`. Each connection is its own task: a
//! delayed or hanging request never blocks another connection.
//!
//! # Shutdown
//!
//! [`MockServer::shutdown`] stops accepting, ends hanging requests by closing their
//! connections, lets answers in flight finish for up to one second, then closes everything.
//! Dropping the last handle without calling it closes everything at once.

#![forbid(unsafe_code)]

mod body;
mod deepseek;
mod fault;
pub mod fixture;
mod handler;
mod oauth;
mod record;
mod redis_server;
mod server;
mod state;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Method, Uri};
use tokio::net::TcpListener;

pub use crate::fault::{Fault, Match};
pub use crate::record::RecordedRequest;
pub use crate::redis_server::RedisServer;
use crate::state::{Config, Phase, Shared};

/// The path of the OAuth2 token endpoint (the integration guide's token URL).
pub const TOKEN_PATH: &str = "/oauth2/token";

/// The paths of the chat completion endpoint ([`Match::Chat`]).
pub const CHAT_PATHS: [&str; 2] = deepseek::CHAT_PATHS;

/// How long [`MockServer::shutdown`] lets answers in flight finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// A DeepSeek-compatible mock server running on its own tokio tasks.
///
/// Cheap to clone: every clone is a handle on the same server. See the [crate docs](crate).
#[derive(Clone)]
pub struct MockServer {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Without a graceful shutdown, close everything at once.
        self.shared.phase.send_replace(Phase::Stopped);
    }
}

impl fmt::Debug for MockServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.inner.addr)
            .field("requests", &self.requests_len())
            .field("connections", &self.connections())
            .finish_non_exhaustive()
    }
}

impl MockServer {
    /// Starts a server with the default configuration (no auth required).
    ///
    /// Same as `MockServer::builder().start().await`.
    ///
    /// # Panics
    ///
    /// If it is not called within a tokio runtime, or no port is free on `127.0.0.1`.
    pub async fn start() -> MockServer {
        MockServer::builder().start().await
    }

    /// A builder to configure keys, OAuth2 credentials, token lifetime and stream pacing.
    pub fn builder() -> MockServerBuilder {
        MockServerBuilder::default()
    }

    /// The address the server listens on (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The base URL, `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// The absolute URI of a path (and query) on this server; a missing leading `/` is added.
    ///
    /// # Panics
    ///
    /// If `path_and_query` is not a valid URI path.
    pub fn uri(&self, path_and_query: &str) -> Uri {
        let slash = if path_and_query.starts_with('/') {
            ""
        } else {
            "/"
        };
        format!("{}{slash}{path_and_query}", self.url())
            .parse()
            .unwrap_or_else(|_| panic!("MockServer::uri: invalid path {path_and_query:?}"))
    }

    /// The URL of the OAuth2 token endpoint (`http://127.0.0.1:PORT/oauth2/token`).
    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.url())
    }

    /// Queues a fault (FIFO): the next request to any endpoint but the token endpoint that
    /// no [`enqueue_when`](MockServer::enqueue_when) rule claims takes the first one.
    pub fn enqueue(&self, fault: Fault) {
        self.inner.shared.enqueue(fault);
    }

    /// Queues a one-shot rule: the next request that `matcher` matches takes this fault.
    ///
    /// Rules are checked in the order they were queued, before the FIFO queue; each is
    /// consumed by the first request it matches.
    pub fn enqueue_when(&self, matcher: Match, fault: Fault) {
        self.inner.shared.enqueue_when(matcher, fault);
    }

    /// Adds a rule that gives this fault to every matching request (that no one-shot rule
    /// or queued fault claims) until [`clear_faults`](MockServer::clear_faults).
    pub fn always(&self, matcher: Match, fault: Fault) {
        self.inner.shared.always(matcher, fault);
    }

    /// Removes every queued fault and every rule.
    pub fn clear_faults(&self) {
        self.inner.shared.clear_faults();
    }

    /// Every request received so far, in order of arrival (token endpoint included).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.shared.requests()
    }

    fn requests_len(&self) -> usize {
        self.inner.shared.count_requests(|_| true)
    }

    /// The requests to `path`. Without a `?` in `path`, the query of requests is ignored;
    /// with one, the path and query must be equal.
    pub fn requests_to(&self, path: &str) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| path_is(r, path))
            .collect()
    }

    /// How many requests went to `path` (compared as in
    /// [`requests_to`](MockServer::requests_to)).
    pub fn request_count(&self, path: &str) -> usize {
        self.inner.shared.count_requests(|r| path_is(r, path))
    }

    /// How many `POST` requests went to `/chat/completions` or `/v1/chat/completions`.
    pub fn chat_count(&self) -> usize {
        self.inner.shared.count_requests(|r| {
            r.method == Method::POST && CHAT_PATHS.contains(&r.path_without_query())
        })
    }

    /// Forgets the recorded requests (counters of tokens and connections are kept).
    pub fn clear_requests(&self) {
        self.inner.shared.clear_requests();
    }

    /// How many requests reached the token endpoint, whatever their outcome.
    pub fn token_fetches(&self) -> usize {
        self.inner.shared.token_fetches.load(Ordering::SeqCst)
    }

    /// How many tokens the token endpoint issued.
    pub fn tokens_issued(&self) -> usize {
        self.inner.shared.tokens_issued.load(Ordering::SeqCst)
    }

    /// How many TCP connections the server accepted so far.
    pub fn connections(&self) -> usize {
        self.inner.shared.connections.load(Ordering::SeqCst)
    }

    /// Makes every token issued so far invalid: requests bearing one get a 401.
    /// Tokens issued later are valid.
    pub fn revoke_tokens(&self) {
        self.inner.shared.revoke_tokens();
    }

    /// Stops the server gracefully, for every handle.
    ///
    /// Stops accepting connections, closes the connections of hanging requests, lets
    /// answers in flight finish for up to one second, then closes what is left.
    pub async fn shutdown(self) {
        let shared = Arc::clone(&self.inner.shared);
        shared.phase.send_if_modified(|p| {
            if *p < Phase::Draining {
                *p = Phase::Draining;
                true
            } else {
                false
            }
        });
        // Every task holds a receiver: the channel closes when the last task ends.
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, shared.phase.closed()).await;
        if drained.is_err() {
            shared.phase.send_replace(Phase::Stopped);
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, shared.phase.closed()).await;
        }
        drop(self);
    }
}

fn path_is(req: &RecordedRequest, path: &str) -> bool {
    if path.contains('?') {
        req.path == path
    } else {
        req.path_without_query() == path
    }
}

/// Configures and starts a [`MockServer`].
#[derive(Clone, Debug)]
#[must_use]
pub struct MockServerBuilder {
    api_keys: Vec<String>,
    client_id: String,
    client_secret: String,
    token_lifetime: Duration,
    omit_expires_in: bool,
    require_auth: Option<bool>,
    stream_chunk_delay: Duration,
}

impl Default for MockServerBuilder {
    fn default() -> Self {
        MockServerBuilder {
            api_keys: Vec::new(),
            client_id: "test-client".to_owned(),
            client_secret: "test-secret".to_owned(),
            token_lifetime: Duration::from_secs(7200),
            omit_expires_in: false,
            require_auth: None,
            stream_chunk_delay: Duration::ZERO,
        }
    }
}

impl MockServerBuilder {
    /// Adds an accepted API key (`Authorization: Bearer <key>`); call it again for more.
    ///
    /// Setting a key makes auth required unless [`require_auth(false)`](Self::require_auth).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_keys.push(key.into());
        self
    }

    /// The client credentials the token endpoint accepts
    /// (default `"test-client"` / `"test-secret"`), by HTTP Basic or in the form body.
    pub fn oauth_client(mut self, id: impl Into<String>, secret: impl Into<String>) -> Self {
        self.client_id = id.into();
        self.client_secret = secret.into();
        self
    }

    /// How long issued tokens stay valid (default 7200 s). `expires_in` reports it in whole
    /// seconds; expiry is checked with `tokio::time::Instant`, so paused time works.
    pub fn token_lifetime(mut self, d: Duration) -> Self {
        self.token_lifetime = d;
        self
    }

    /// Whether token responses leave out `expires_in` (default: they include it).
    pub fn omit_expires_in(mut self, yes: bool) -> Self {
        self.omit_expires_in = yes;
        self
    }

    /// Whether API endpoints require `Authorization: Bearer` with a configured key or a
    /// valid issued token. Default: required iff an [`api_key`](Self::api_key) was set.
    /// The token endpoint never requires it (it checks client credentials).
    pub fn require_auth(mut self, yes: bool) -> Self {
        self.require_auth = Some(yes);
        self
    }

    /// The pause between SSE events of streamed answers (default none).
    pub fn stream_chunk_delay(mut self, d: Duration) -> Self {
        self.stream_chunk_delay = d;
        self
    }

    /// Binds `127.0.0.1:0` and starts serving on tokio tasks.
    ///
    /// # Panics
    ///
    /// If it is not called within a tokio runtime, or no port is free on `127.0.0.1`.
    pub async fn start(self) -> MockServer {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("tower-deepseek-testkit: cannot bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("tower-deepseek-testkit: no local address");
        let config = Config {
            require_auth: self.require_auth.unwrap_or(!self.api_keys.is_empty()),
            api_keys: self.api_keys,
            client_id: self.client_id,
            client_secret: self.client_secret,
            token_lifetime: self.token_lifetime,
            omit_expires_in: self.omit_expires_in,
            stream_chunk_delay: self.stream_chunk_delay,
        };
        let shared = Arc::new(Shared::new(config, addr.to_string().as_bytes()));
        tokio::spawn(server::accept_loop(listener, Arc::clone(&shared)));
        MockServer {
            inner: Arc::new(Inner { shared, addr }),
        }
    }
}
