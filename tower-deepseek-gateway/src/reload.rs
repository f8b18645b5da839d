//! Reloading a running gateway: the client keys, the limits (`[[keys]]`, `[rate_limit]`) and
//! the upstreams' weights (`[[upstreams]] weight`) from a new configuration, without dropping a
//! request in flight.
//!
//! A reload builds the new keys and rate limiters next to the running ones, around the same
//! layers (cache, breaker, OAuth2 token, audit chain, connection pool: their state goes on),
//! and swaps them in at once ([`arc_swap`]): a request that has started keeps the keys and
//! limits it started with, a request that starts after the swap sees the new ones. A limiter
//! whose settings did not change keeps its window. Anything invalid in the new configuration
//! fails the reload as a whole: the running configuration stays, and the error (never a
//! secret) is returned and logged. New weights apply to the next pick of every call, those in
//! flight included (an upstream's breaker, latency average and connections go on); the
//! upstreams themselves (number, names, URLs: a change fails the reload) and their other
//! settings are read at start only, like every other setting.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::config::GatewayConfig;
use crate::{Live, Shared, StartError, inbound, stack};

/// `deepseek_gateway_config_reloads_total{outcome}`: reloads by outcome (`ok`, `error`).
pub(crate) const RELOADS_TOTAL: &str = "deepseek_gateway_config_reloads_total";

/// Reloads the client keys, limits and upstream weights of a running [`Gateway`](crate::Gateway); from
/// [`Gateway::reloader`](crate::Gateway::reloader). Cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    fixed: stack::Fixed,
    listen: SocketAddr,
    allow_open: bool,
    // One reload at a time.
    lock: Mutex<()>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("listen", &self.inner.listen)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    pub(crate) fn new(
        shared: Arc<Shared>,
        fixed: stack::Fixed,
        listen: SocketAddr,
        allow_open: bool,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                shared,
                fixed,
                listen,
                allow_open,
                lock: Mutex::new(()),
            }),
        }
    }

    /// Takes the client keys, the limits and the upstream weights of `config`; requests in
    /// flight finish with the keys and limits they started with.
    ///
    /// # Errors
    ///
    /// [`StartError`]: an invalid key hash, an invalid `[rate_limit]` (or a key's own
    /// limits), no keys left on a non-loopback address, or `[[upstreams]]` that are not the
    /// running ones (number, names, URLs). The running configuration stays.
    pub fn reload(&self, config: &GatewayConfig) -> Result<(), StartError> {
        let result = self.try_reload(config);
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(RELOADS_TOTAL, "outcome" => outcome).increment(1);
        result
    }

    fn try_reload(&self, config: &GatewayConfig) -> Result<(), StartError> {
        let inner = &*self.inner;
        let _one = inner.lock.lock().unwrap_or_else(|p| p.into_inner());
        let keys = inbound::Keys::new(&config.keys).map_err(|e| StartError::Keys(e.to_string()))?;
        if keys.is_empty()
            && !inner.listen.ip().is_loopback()
            && !(inner.allow_open || config.server.allow_open_non_loopback)
        {
            return Err(StartError::OpenNonLoopback { addr: inner.listen });
        }
        let weights = inner.fixed.weights(config)?;
        let (service, _) = inner.fixed.compose(config)?;
        if let Some(w) = weights {
            inner.fixed.set_weights(&w)?;
        }
        inner.shared.live.store(Arc::new(Live { keys, service }));
        Ok(())
    }
}

/// Reloads on every SIGHUP, for as long as the returned future runs: `load` reads the
/// configuration again (the binary: file, environment and flags), then
/// [`Reloader::reload`] takes it. Each reload is logged: `configuration reloaded`, or
/// `reload failed` with the reason (the running configuration stays).
///
/// The signal handler is installed when this function is called (call it inside a tokio
/// runtime, before telling anyone the gateway is up): from then on a SIGHUP no longer ends the
/// process. On a platform without SIGHUP, the future never completes and does nothing.
pub fn reload_on_sighup<F, E>(
    reloader: Reloader,
    load: F,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    F: Fn() -> Result<GatewayConfig, E> + Send + 'static,
    E: std::fmt::Display,
{
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    async move {
        #[cfg(unix)]
        {
            let Ok(mut hup) = hup else {
                tracing::warn!(target: "tower_deepseek_gateway", "cannot listen for SIGHUP: reloads are off");
                return std::future::pending().await;
            };
            while hup.recv().await.is_some() {
                let result = match load() {
                    Ok(cfg) => reloader.reload(&cfg).map_err(|e| e.to_string()),
                    Err(e) => {
                        metrics::counter!(RELOADS_TOTAL, "outcome" => "error").increment(1);
                        Err(e.to_string())
                    }
                };
                match result {
                    Ok(()) => {
                        tracing::info!(target: "tower_deepseek_gateway", "configuration reloaded (client keys, limits, upstream weights)")
                    }
                    Err(reason) => {
                        tracing::error!(target: "tower_deepseek_gateway", %reason, "reload failed: keeping the running configuration")
                    }
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (reloader, load);
            std::future::pending::<()>().await;
        }
    }
}
