//! The `[websocket]` table.

use std::time::Duration;

use serde::Deserialize;
use tower_deepseek::core::config::{ConfigError, duration_ms};

/// The WebSocket route, `GET /v1/chat/completions/ws` (the `[websocket]` table). See the crate
/// README's "WebSocket" section for the protocol.
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek_gateway::GatewayConfig;
///
/// let cfg = GatewayConfig::from_toml(
///     "[websocket]\nping_interval_ms = 15000\nmax_concurrent_requests = 4\n",
/// )
/// .unwrap();
/// assert_eq!(cfg.websocket.ping_interval, Duration::from_secs(15));
/// assert_eq!(cfg.websocket.max_concurrent_requests, 4);
/// assert!(cfg.websocket.enabled);
/// cfg.websocket.validate().unwrap();
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct WebSocketConfig {
    /// Serve the route. Default true (off: the route answers 404 like any unknown route).
    pub enabled: bool,
    /// How often the gateway pings each connection (`ping_interval_ms`). A connection from
    /// which nothing (no pong, no message) arrived during a whole interval after a ping is
    /// closed with 1001. Default 30 000.
    #[serde(rename = "ping_interval_ms", with = "duration_ms")]
    pub ping_interval: Duration,
    /// A connection with no request in flight that sent no message for this long is closed
    /// with 1000 (`idle_timeout_ms`; pongs do not count as messages). Default 300 000.
    #[serde(rename = "idle_timeout_ms", with = "duration_ms")]
    pub idle_timeout: Duration,
    /// Requests answered at once on one connection; one more gets an error message
    /// (`too_many_concurrent_requests`) and the connection stays open. Default 8.
    pub max_concurrent_requests: usize,
    /// The largest message (or frame) a client may send, in bytes; a larger one closes the
    /// connection with 1009. Default 8 MiB (`server.max_body_bytes` applies to each request
    /// too).
    pub max_message_bytes: usize,
    /// WebSocket connections open at once (they do not count against
    /// `server.max_connections` once upgraded); beyond it, an upgrade is refused with a 503
    /// `too_many_connections`. Default 1 024.
    pub max_connections: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            max_concurrent_requests: 8,
            max_message_bytes: tower_deepseek::core::body::DEFAULT_BODY_LIMIT,
            max_connections: 1024,
        }
    }
}

impl WebSocketConfig {
    /// Checks that every setting can work.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first field that cannot: a zero interval, timeout or bound,
    /// or a message limit under 1 KiB.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ping_interval.is_zero() {
            return Err(ConfigError::new("ping_interval_ms", "must be above 0"));
        }
        if self.idle_timeout.is_zero() {
            return Err(ConfigError::new("idle_timeout_ms", "must be above 0"));
        }
        if self.max_concurrent_requests == 0 {
            return Err(ConfigError::new(
                "max_concurrent_requests",
                "must be at least 1",
            ));
        }
        if self.max_message_bytes < 1024 {
            return Err(ConfigError::new(
                "max_message_bytes",
                "must be at least 1024",
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::new("max_connections", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_zeros_are_refused_by_name() {
        WebSocketConfig::default().validate().unwrap();
        let c = WebSocketConfig {
            ping_interval: Duration::ZERO,
            ..WebSocketConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().field(), "ping_interval_ms");
        let c = WebSocketConfig {
            idle_timeout: Duration::ZERO,
            ..WebSocketConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().field(), "idle_timeout_ms");
        let c = WebSocketConfig {
            max_concurrent_requests: 0,
            ..WebSocketConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().field(), "max_concurrent_requests");
        let c = WebSocketConfig {
            max_message_bytes: 10,
            ..WebSocketConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().field(), "max_message_bytes");
        let c = WebSocketConfig {
            max_connections: 0,
            ..WebSocketConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().field(), "max_connections");
    }
}
