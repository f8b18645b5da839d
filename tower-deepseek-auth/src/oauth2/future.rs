//! The response future of [`OAuth2`](super::OAuth2).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::header::AUTHORIZATION;
use http::request::Parts;
use http::{
    Extensions, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body::Body;
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tower::ServiceExt;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::{BufferFuture, Buffered, BufferedBody, buffer};
use tower_deepseek_core::protocol::{CredentialRefreshed, ReplayOn401};
use tower_service::Service;

use super::state::Shared;
use crate::error::TokenFetchFailed;
use tower_deepseek_core::body::ReplayBody;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

pin_project! {
    /// The response future of [`OAuth2`](super::OAuth2).
    ///
    /// A state machine: obtain a token (only when none is fresh), buffer the body, call the
    /// inner service, and after a 401 refresh and replay once. The hot path allocates only to
    /// copy the request head for that replay (none when a retry layer above offers it); the
    /// slow paths (token fetch, replay) are boxed so that they do not make every request's
    /// future larger.
    pub struct ResponseFuture<S, B, T>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        #[pin]
        state: State<S, B, T>,
    }
}

struct Ctx<S, T> {
    shared: Arc<Shared<T>>,
    inner: S,
}

/// What a replay needs: an inner service of its own, and the copy.
struct Replay<S> {
    inner: S,
    kept: Kept,
}

/// The request head, the buffered body, and the header sent.
struct Kept {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
    body: BufferedBody,
    header: HeaderValue,
}

/// The body being buffered for this layer's own replay, and what the call needs after it.
/// Boxed, as every state off the fresh-token path is: the future stays the size of the inner
/// future plus a few words, so that returning and pinning it moves little (measured: the
/// states inline made it 496 bytes around a 264-byte inner future).
struct Buffering<S, B, T> {
    fut: BufferFuture<B>,
    parts: Parts,
    header: HeaderValue,
    generation: u64,
    ctx: Ctx<S, T>,
}

/// What a 401 to the first call leads to.
enum On401<S> {
    /// Invalidate the token; replay with this copy (none: the body was too large to keep, or
    /// replays are off). Boxed, like the other slow-path states.
    Own(Option<Box<Replay<S>>>),
    /// A layer above offered the replay ([`ReplayOn401::Offered`]): invalidate, obtain a new
    /// token and mark the 401 [`CredentialRefreshed`]. (The refused header is not kept: the
    /// invalidation records it, which is what keeps the store from handing it back.)
    Delegate,
    /// This request is a layer above's replay ([`ReplayOn401::Replaying`]): the 401 is final.
    Final,
}

/// How this layer handles a 401 to a request with these extensions: on its own (keeping a
/// copy to replay), or as the layer above offered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Plan {
    Own,
    Delegate,
    Final,
}

#[inline]
fn plan(extensions: &Extensions, replay: bool) -> Plan {
    if !replay {
        return Plan::Own;
    }
    match extensions.get::<ReplayOn401>() {
        Some(ReplayOn401::Offered) => Plan::Delegate,
        Some(ReplayOn401::Replaying) => Plan::Final,
        _ => Plan::Own,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, T>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        Obtain {
            fut: BoxFuture<Result<(HeaderValue, u64), TokenFetchFailed>>,
            waiting: Option<Box<(Request<B>, Ctx<S, T>)>>,
        },
        Buffer {
            buffering: Option<Box<Buffering<S, B, T>>>,
        },
        First {
            #[pin]
            fut: S::Future,
            on_401: On401<S>,
            generation: u64,
            shared: Option<Arc<Shared<T>>>,
        },
        Retry {
            fut: BoxFuture<Result<S::Response, BoxError>>,
        },
        Done,
    }
}

impl<S, B, T> fmt::Debug for ResponseFuture<S, B, T>
where
    S: Service<Request<ReplayBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Obtain { .. } => "obtaining a token",
            State::Buffer { .. } => "buffering the body",
            State::First { .. } => "calling",
            State::Retry { .. } => "replaying after a 401",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, B, T, ResBody, RB> ResponseFuture<S, B, T>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Body + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Body + Send + 'static,
    ResBody::Data: Send,
    T: Service<Request<BufferedBody>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    T::Error: Into<BoxError>,
    T::Future: Send,
    RB: Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    #[inline]
    pub(crate) fn start(
        shared: Arc<Shared<T>>,
        inner: &mut S,
        req: Request<B>,
        fresh: Option<(HeaderValue, u64)>,
    ) -> Self {
        let state = match fresh {
            Some((header, generation)) => match plan(req.extensions(), shared.tuning.replay) {
                Plan::Own if shared.tuning.replay => {
                    // This path calls later and may call twice: it takes the service made
                    // ready, leaving a clone (the usual tower pattern).
                    let clone = inner.clone();
                    let inner = std::mem::replace(inner, clone);
                    let (parts, body) = req.into_parts();
                    let limit = shared.tuning.body_limit;
                    State::Buffer {
                        buffering: Some(Box::new(Buffering {
                            fut: buffer(body, limit),
                            parts,
                            header,
                            generation,
                            ctx: Ctx { shared, inner },
                        })),
                    }
                }
                // Called at once and never again from here: no clone of the inner service.
                plan => send_once(shared, inner, req, header, generation, plan),
            },
            None => {
                let clone = inner.clone();
                let inner = std::mem::replace(inner, clone);
                let obtaining = Arc::clone(&shared);
                State::Obtain {
                    fut: Box::pin(async move { obtaining.obtain(None).await }),
                    waiting: Some(Box::new((req, Ctx { shared, inner }))),
                }
            }
        };
        Self { state }
    }
}

impl<S, B, T, ResBody, RB> Future for ResponseFuture<S, B, T>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Body + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Body + Send + 'static,
    ResBody::Data: Send,
    T: Service<Request<BufferedBody>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    T::Error: Into<BoxError>,
    T::Future: Send,
    RB: Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Obtain { fut, waiting } => {
                    let result = ready!(fut.as_mut().poll(cx));
                    let (header, generation) = match result {
                        Ok(token) => token,
                        Err(err) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(err.into()));
                        }
                    };
                    let (req, mut ctx) = *waiting.take().expect("request");
                    let plan = plan(req.extensions(), ctx.shared.tuning.replay);
                    if plan != Plan::Own || !ctx.shared.tuning.replay {
                        this.state.set(send_once(
                            ctx.shared,
                            &mut ctx.inner,
                            req,
                            header,
                            generation,
                            plan,
                        ));
                        continue;
                    }
                    let (parts, body) = req.into_parts();
                    let limit = ctx.shared.tuning.body_limit;
                    this.state.set(State::Buffer {
                        buffering: Some(Box::new(Buffering {
                            fut: buffer(body, limit),
                            parts,
                            header,
                            generation,
                            ctx,
                        })),
                    });
                }
                StateProj::Buffer { buffering } => {
                    let b = buffering.as_mut().expect("buffering");
                    let buffered = match ready!(Pin::new(&mut b.fut).poll(cx)) {
                        Ok(buffered) => buffered,
                        Err(err) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(err));
                        }
                    };
                    let Buffering {
                        mut parts,
                        header,
                        generation,
                        ctx: Ctx { shared, mut inner },
                        ..
                    } = *buffering.take().expect("buffering");
                    let (body, kept) = match buffered {
                        Buffered::Complete(body) => {
                            let kept = Kept {
                                method: parts.method.clone(),
                                uri: parts.uri.clone(),
                                version: parts.version,
                                headers: parts.headers.clone(),
                                extensions: parts.extensions.clone(),
                                body: body.replay(),
                                header: header.clone(),
                            };
                            (ReplayBody::buffered(body), Some(kept))
                        }
                        // Too large to keep: sent once; a 401 goes back as is.
                        Buffered::Overflow(overflow) => (ReplayBody::overflow(overflow), None),
                    };
                    parts.headers.insert(AUTHORIZATION, header);
                    let fut = inner.call(Request::from_parts(parts, body));
                    // The service just called serves the replay (made ready again first).
                    let replay = kept.map(|kept| Box::new(Replay { inner, kept }));
                    this.state.set(State::First {
                        fut,
                        on_401: On401::Own(replay),
                        generation,
                        shared: Some(shared),
                    });
                }
                StateProj::First {
                    fut,
                    on_401,
                    generation,
                    shared,
                } => {
                    let response = match ready!(fut.poll(cx)) {
                        Ok(response) => response,
                        Err(err) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(err.into()));
                        }
                    };
                    if response.status() != StatusCode::UNAUTHORIZED {
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(response));
                    }
                    let generation = *generation;
                    let shared = shared.take().expect("shared state");
                    match std::mem::replace(on_401, On401::Final) {
                        On401::Final => {
                            this.state.set(State::Done);
                            return Poll::Ready(Ok(response));
                        }
                        On401::Delegate => {
                            shared.invalidate(generation);
                            this.state.set(State::Retry {
                                fut: Box::pin(refresh_for_replay(shared, generation, response)),
                            });
                        }
                        On401::Own(None) => {
                            shared.invalidate(generation);
                            this.state.set(State::Done);
                            return Poll::Ready(Ok(response));
                        }
                        On401::Own(Some(replay)) => {
                            shared.invalidate(generation);
                            this.state.set(State::Retry {
                                fut: Box::pin(retry(shared, replay, generation, response)),
                            });
                        }
                    }
                }
                StateProj::Retry { fut } => {
                    let out = ready!(fut.as_mut().poll(cx));
                    this.state.set(State::Done);
                    return Poll::Ready(out);
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

/// Sends the request at once, its body streamed through: replays are off, or the layer above
/// replays ([`Plan::Delegate`], [`Plan::Final`]), so no copy is kept here.
#[inline]
fn send_once<S, B, T>(
    shared: Arc<Shared<T>>,
    inner: &mut S,
    req: Request<B>,
    header: HeaderValue,
    generation: u64,
    plan: Plan,
) -> State<S, B, T>
where
    S: Service<Request<ReplayBody<B>>>,
{
    let (mut parts, body) = req.into_parts();
    let on_401 = match plan {
        Plan::Delegate => On401::Delegate,
        Plan::Final => On401::Final,
        Plan::Own => On401::Own(None),
    };
    parts.headers.insert(AUTHORIZATION, header);
    let fut = inner.call(Request::from_parts(parts, ReplayBody::passthrough(body)));
    State::First {
        fut,
        on_401,
        generation,
        shared: Some(shared),
    }
}

/// After a 401 to a request whose replay the layer above offered: a new token (single
/// flight), then the 401 goes up marked [`CredentialRefreshed`] for that layer to replay.
/// Without a new token it goes up unmarked, as it was.
async fn refresh_for_replay<T, ResBody, RB>(
    shared: Arc<Shared<T>>,
    generation: u64,
    mut response: Response<ResBody>,
) -> Result<Response<ResBody>, BoxError>
where
    T: Service<Request<BufferedBody>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    T::Error: Into<BoxError>,
    T::Future: Send,
    RB: Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    if shared.obtain(Some((generation, None))).await.is_ok() {
        metrics::counter!("deepseek_auth_401_replays_total").increment(1);
        tracing::debug!(
            target: "tower_deepseek_auth",
            "401 from the upstream: new token obtained; the layer above replays the request"
        );
        response.extensions_mut().insert(CredentialRefreshed);
    }
    Ok(response)
}

/// After a 401: a new token (single flight), then one replay. Without a new token, the
/// first 401 goes back to the caller as it was.
async fn retry<S, B, T, ResBody, RB>(
    shared: Arc<Shared<T>>,
    replay: Box<Replay<S>>,
    generation: u64,
    response: Response<ResBody>,
) -> Result<Response<ResBody>, BoxError>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Body + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Body + Send + 'static,
    ResBody::Data: Send,
    T: Service<Request<BufferedBody>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    T::Error: Into<BoxError>,
    T::Future: Send,
    RB: Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    let Replay {
        mut inner,
        kept: replay,
    } = *replay;
    let header = match shared
        .obtain(Some((generation, Some(&replay.header))))
        .await
    {
        Ok((header, _)) => header,
        Err(_) => return Ok(response),
    };
    drain(response.into_body()).await;
    metrics::counter!("deepseek_auth_401_replays_total").increment(1);
    tracing::debug!(
        target: "tower_deepseek_auth",
        "401 from the upstream: replaying once with a new token"
    );
    let mut req = Request::new(ReplayBody::buffered(replay.body));
    *req.method_mut() = replay.method;
    *req.uri_mut() = replay.uri;
    *req.version_mut() = replay.version;
    *req.headers_mut() = replay.headers;
    *req.extensions_mut() = replay.extensions;
    req.headers_mut().insert(AUTHORIZATION, header);
    inner
        .ready()
        .await
        .map_err(Into::into)?
        .call(req)
        .await
        .map_err(Into::into)
}

/// The most of a 401 body read (then dropped) before a replay, and for how long.
const DRAIN_LIMIT: usize = 64 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Reads a little of a body we are discarding so that its connection can be reused; bounded
/// in size and time.
pub(crate) async fn drain<B: Body>(body: B) {
    let drained = async {
        let mut body = std::pin::pin!(body);
        let mut read = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                read += bytes::Buf::remaining(data);
                if read > DRAIN_LIMIT {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drained).await;
}
