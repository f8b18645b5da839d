//! The response future of [`OAuth2`](super::OAuth2).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::AUTHORIZATION;
use http::request::Parts;
use http::{
    Extensions, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::ServiceExt;
use tower_deepseek_core::BoxError;
use tower_deepseek_core::body::{BufferFuture, Buffered, BufferedBody, buffer};
use tower_service::Service;

use super::body::ReplayBody;
use super::state::Shared;
use crate::error::TokenFetchFailed;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

pin_project! {
    /// The response future of [`OAuth2`](super::OAuth2).
    ///
    /// A state machine: obtain a token (only when none is fresh), buffer the body, call the
    /// inner service, and after a 401 refresh and replay once. On the hot path the only
    /// allocation is the small future of [`tower_deepseek_core::body::buffer`] (it cannot be
    /// named); the slow paths (token fetch, replay) are boxed so that they do not make every
    /// request's future larger.
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

/// What a replay needs: the request head, the buffered body, and the header sent.
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
    body: BufferedBody,
    header: HeaderValue,
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, T>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        Obtain {
            fut: BoxFuture<Result<(HeaderValue, u64), TokenFetchFailed>>,
            req: Option<Request<B>>,
            ctx: Option<Ctx<S, T>>,
        },
        Buffer {
            #[pin]
            fut: BufferFuture<B>,
            parts: Option<Parts>,
            header: Option<HeaderValue>,
            generation: u64,
            ctx: Option<Ctx<S, T>>,
        },
        First {
            #[pin]
            fut: S::Future,
            replay: Option<Replay>,
            generation: u64,
            ctx: Option<Ctx<S, T>>,
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
    pub(crate) fn start(
        shared: Arc<Shared<T>>,
        inner: S,
        req: Request<B>,
        fresh: Option<(HeaderValue, u64)>,
    ) -> Self {
        let state = match fresh {
            Some((header, generation)) if !shared.tuning.replay => {
                let (mut parts, body) = req.into_parts();
                let mut inner = inner;
                parts.headers.insert(AUTHORIZATION, header);
                let fut = inner.call(Request::from_parts(parts, ReplayBody::passthrough(body)));
                State::First {
                    fut,
                    replay: None,
                    generation,
                    ctx: Some(Ctx { shared, inner }),
                }
            }
            Some((header, generation)) => {
                let (parts, body) = req.into_parts();
                let limit = shared.tuning.body_limit;
                State::Buffer {
                    fut: buffer(body, limit),
                    parts: Some(parts),
                    header: Some(header),
                    generation,
                    ctx: Some(Ctx { shared, inner }),
                }
            }
            None => {
                let obtaining = Arc::clone(&shared);
                State::Obtain {
                    fut: Box::pin(async move { obtaining.obtain(None).await }),
                    req: Some(req),
                    ctx: Some(Ctx { shared, inner }),
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
                StateProj::Obtain { fut, req, ctx } => {
                    let result = ready!(fut.as_mut().poll(cx));
                    let (header, generation) = match result {
                        Ok(token) => token,
                        Err(err) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(err.into()));
                        }
                    };
                    let (mut parts, body) = req.take().expect("request").into_parts();
                    let ctx = ctx.take().expect("context");
                    if !ctx.shared.tuning.replay {
                        let Ctx { shared, mut inner } = ctx;
                        parts.headers.insert(AUTHORIZATION, header);
                        let fut =
                            inner.call(Request::from_parts(parts, ReplayBody::passthrough(body)));
                        this.state.set(State::First {
                            fut,
                            replay: None,
                            generation,
                            ctx: Some(Ctx { shared, inner }),
                        });
                        continue;
                    }
                    let limit = ctx.shared.tuning.body_limit;
                    this.state.set(State::Buffer {
                        fut: buffer(body, limit),
                        parts: Some(parts),
                        header: Some(header),
                        generation,
                        ctx: Some(ctx),
                    });
                }
                StateProj::Buffer {
                    fut,
                    parts,
                    header,
                    generation,
                    ctx,
                } => {
                    let buffered = match ready!(fut.poll(cx)) {
                        Ok(buffered) => buffered,
                        Err(err) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(err));
                        }
                    };
                    let mut parts = parts.take().expect("parts");
                    let header = header.take().expect("header");
                    let generation = *generation;
                    let Ctx { shared, mut inner } = ctx.take().expect("context");
                    let (body, replay) = match buffered {
                        Buffered::Complete(body) => {
                            let replay = Replay {
                                method: parts.method.clone(),
                                uri: parts.uri.clone(),
                                version: parts.version,
                                headers: parts.headers.clone(),
                                extensions: parts.extensions.clone(),
                                body: body.replay(),
                                header: header.clone(),
                            };
                            (ReplayBody::buffered(body), Some(replay))
                        }
                        // Too large to keep: sent once; a 401 goes back as is.
                        Buffered::Overflow(overflow) => (ReplayBody::overflow(overflow), None),
                    };
                    parts.headers.insert(AUTHORIZATION, header);
                    let fut = inner.call(Request::from_parts(parts, body));
                    this.state.set(State::First {
                        fut,
                        replay,
                        generation,
                        ctx: Some(Ctx { shared, inner }),
                    });
                }
                StateProj::First {
                    fut,
                    replay,
                    generation,
                    ctx,
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
                    let Ctx { shared, inner } = ctx.take().expect("context");
                    shared.invalidate(generation);
                    let Some(replay) = replay.take() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(response));
                    };
                    this.state.set(State::Retry {
                        fut: Box::pin(retry(shared, inner, replay, generation, response)),
                    });
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

/// After a 401: a new token (single flight), then one replay. Without a new token, the
/// first 401 goes back to the caller as it was.
async fn retry<S, B, T, ResBody, RB>(
    shared: Arc<Shared<T>>,
    mut inner: S,
    replay: Replay,
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
    let header = match shared.obtain(Some((generation, &replay.header))).await {
        Ok((header, _)) => header,
        Err(_) => return Ok(response),
    };
    super::drain(response.into_body()).await;
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
