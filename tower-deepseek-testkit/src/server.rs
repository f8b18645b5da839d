//! Accept loop and per-connection tasks.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::handler;
use crate::state::{Phase, Shared};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnState {
    Open,
    Abort { rst: bool },
    Closed,
}

/// Lets a request handler abort its own TCP connection, and wait until it is gone.
#[derive(Clone, Debug)]
pub(crate) struct ConnCtl(Arc<watch::Sender<ConnState>>);

impl ConnCtl {
    fn new() -> ConnCtl {
        ConnCtl(Arc::new(watch::Sender::new(ConnState::Open)))
    }

    /// Asks the connection task to drop the connection (with a TCP RST if `rst`).
    pub(crate) fn abort(&self, rst: bool) {
        self.0.send_if_modified(|s| {
            if *s == ConnState::Open {
                *s = ConnState::Abort { rst };
                true
            } else {
                false
            }
        });
    }

    /// Resolves once the connection task has dropped the connection.
    pub(crate) async fn closed(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|s| *s == ConnState::Closed).await;
    }
}

/// Resolves when the phase reaches at least `at_least` (or the server state is gone).
pub(crate) async fn phase_reached(rx: &mut watch::Receiver<Phase>, at_least: Phase) {
    let _ = rx.wait_for(|p| *p >= at_least).await;
}

pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut phase = shared.phase.subscribe();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        tokio::select! {
            () = phase_reached(&mut phase, Phase::Draining) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    let _ = stream.set_nodelay(true);
                    let conn_phase = shared.phase.subscribe();
                    tokio::spawn(serve_connection(stream, Arc::clone(&shared), builder.clone(), conn_phase));
                }
                Err(err) => {
                    tracing::debug!(target: "tower_deepseek_testkit", %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            },
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    builder: auto::Builder<TokioExecutor>,
    mut phase: watch::Receiver<Phase>,
) {
    let raw = RawSocket::of(&stream);
    let ctl = ConnCtl::new();
    let mut ctl_rx = ctl.0.subscribe();
    let service = {
        let ctl = ctl.clone();
        let shared = Arc::clone(&shared);
        service_fn(move |req| {
            let shared = Arc::clone(&shared);
            let ctl = ctl.clone();
            async move { Ok::<_, Infallible>(handler::handle(shared, ctl, req).await) }
        })
    };
    // Boxed (not stack-pinned) so that it can be dropped before the duplicate socket.
    let mut conn = Box::pin(builder.serve_connection(TokioIo::new(stream), service));
    let mut draining = false;
    let rst = loop {
        let current = *phase.borrow_and_update();
        if current >= Phase::Stopped {
            break false;
        }
        if current >= Phase::Draining && !draining {
            draining = true;
            conn.as_mut().graceful_shutdown();
        }
        tokio::select! {
            biased;
            abort = async {
                match ctl_rx.wait_for(|s| matches!(s, ConnState::Abort { .. })).await {
                    Ok(s) => matches!(*s, ConnState::Abort { rst: true }),
                    Err(_) => false,
                }
            } => break abort,
            changed = phase.changed() => {
                if changed.is_err() {
                    break false;
                }
            }
            res = conn.as_mut() => {
                if let Err(err) = res {
                    tracing::debug!(target: "tower_deepseek_testkit", %err, "connection ended with an error");
                }
                break false;
            }
        }
    };
    if rst {
        raw.arm_reset();
    }
    drop(conn);
    drop(raw);
    ctl.0.send_replace(ConnState::Closed);
}

/// A second handle on the connection's socket, used to make its close abortive (RST).
#[derive(Debug)]
struct RawSocket {
    #[cfg(unix)]
    dup: Option<std::net::TcpStream>,
}

impl RawSocket {
    #[cfg(unix)]
    fn of(stream: &TcpStream) -> RawSocket {
        use std::os::fd::AsFd;
        RawSocket {
            dup: stream
                .as_fd()
                .try_clone_to_owned()
                .ok()
                .map(std::net::TcpStream::from),
        }
    }

    #[cfg(not(unix))]
    fn of(_stream: &TcpStream) -> RawSocket {
        RawSocket {}
    }

    /// Sets `SO_LINGER` to zero: when the last handle on the socket closes, the kernel sends
    /// a RST instead of a FIN. The option belongs to the socket, so setting it through the
    /// duplicate affects the connection that hyper owns.
    #[cfg(unix)]
    fn arm_reset(&self) {
        if let Some(dup) = &self.dup {
            if let Ok(clone) = dup.try_clone() {
                let socket = tokio::net::TcpSocket::from_std_stream(clone);
                if let Err(err) = socket.set_zero_linger() {
                    tracing::debug!(target: "tower_deepseek_testkit", %err, "could not set SO_LINGER 0");
                }
            }
        }
    }

    #[cfg(not(unix))]
    fn arm_reset(&self) {}
}
