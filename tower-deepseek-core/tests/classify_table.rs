//! The `FailureClass` table (names, statuses, `Retry-After`, transience, "not sent", the
//! breaker's default verdict, `Display`), class by class. Added for mutants of
//! `classify.rs` that `cargo mutants` found alive against this crate's own tests (the metric
//! label names and statuses were only checked by other crates).

use std::time::Duration;

use http::StatusCode;
use tower_deepseek_core::classify::{FailureClass, Verdict};

/// class, name, status, `retry_after`, transient, not sent, verdict, display.
type Row = (
    FailureClass,
    &'static str,
    Option<StatusCode>,
    Option<Duration>,
    bool,
    bool,
    Verdict,
    &'static str,
);

#[test]
fn every_class_row() {
    use FailureClass as F;
    use Verdict::{Failure, Ignored};
    let ra = Some(Duration::from_secs(3));
    let s = |c: u16| Some(StatusCode::from_u16(c).unwrap());
    let rows: Vec<Row> = vec![
        (
            F::RateLimited { retry_after: ra },
            "rate_limited",
            s(429),
            ra,
            true,
            false,
            Ignored,
            "rate_limited (429)",
        ),
        (
            F::RateLimited { retry_after: None },
            "rate_limited",
            s(429),
            None,
            true,
            false,
            Ignored,
            "rate_limited (429)",
        ),
        (
            F::BadGateway,
            "bad_gateway",
            s(502),
            None,
            true,
            false,
            Failure,
            "bad_gateway (502)",
        ),
        (
            F::Overloaded { retry_after: ra },
            "overloaded",
            s(503),
            ra,
            true,
            false,
            Failure,
            "overloaded (503)",
        ),
        (
            F::GatewayTimeout,
            "gateway_timeout",
            s(504),
            None,
            true,
            false,
            Failure,
            "gateway_timeout (504)",
        ),
        (
            F::Timeout,
            "timeout",
            None,
            None,
            true,
            false,
            Failure,
            "timeout",
        ),
        (
            F::Server {
                status: StatusCode::INTERNAL_SERVER_ERROR,
            },
            "server_error",
            s(500),
            None,
            true,
            false,
            Failure,
            "server_error (500)",
        ),
        (
            F::Server {
                status: StatusCode::from_u16(599).unwrap(),
            },
            "server_error",
            s(599),
            None,
            true,
            false,
            Failure,
            "server_error (599)",
        ),
        (
            F::Connect,
            "connect_error",
            None,
            None,
            true,
            true,
            Failure,
            "connect_error",
        ),
        (
            F::Transport,
            "transport_error",
            None,
            None,
            true,
            false,
            Failure,
            "transport_error",
        ),
        (
            F::Client {
                status: StatusCode::PAYMENT_REQUIRED,
            },
            "client_error",
            s(402),
            None,
            false,
            false,
            Ignored,
            "client_error (402)",
        ),
        (
            F::EmptyBody,
            "empty_body",
            None,
            None,
            true,
            false,
            Failure,
            "empty_body",
        ),
        (
            F::Incomplete,
            "incomplete",
            None,
            None,
            true,
            false,
            Failure,
            "incomplete",
        ),
        (
            F::InBandError,
            "in_band_error",
            None,
            None,
            true,
            false,
            Failure,
            "in_band_error",
        ),
        (
            F::InsufficientResources,
            "insufficient_resources",
            None,
            None,
            true,
            false,
            Failure,
            "insufficient_resources",
        ),
        (
            F::BreakerOpen {
                retry_after: Duration::from_millis(1500),
            },
            "breaker_open",
            None,
            Some(Duration::from_millis(1500)),
            true,
            true,
            Ignored,
            "breaker_open",
        ),
        (
            F::Rejected,
            "rejected",
            None,
            None,
            false,
            true,
            Ignored,
            "rejected",
        ),
    ];
    for (class, name, status, retry_after, transient, not_sent, verdict, display) in rows {
        assert_eq!(class.as_str(), name, "{class:?}");
        assert_eq!(class.status(), status, "{class:?}");
        assert_eq!(class.retry_after(), retry_after, "{class:?}");
        assert_eq!(class.is_transient(), transient, "{class:?}");
        assert_eq!(class.was_not_sent(), not_sent, "{class:?}");
        assert_eq!(class.default_verdict(), verdict, "{class:?}");
        assert_eq!(class.to_string(), display, "{class:?}");
    }
}

#[test]
fn event_stream_content_types() {
    use http::HeaderMap;
    use tower_deepseek_core::classify::is_event_stream;
    let with = |v: &str| {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, v.parse().unwrap());
        is_event_stream(&h)
    };
    assert!(with("text/event-stream"));
    assert!(with("Text/Event-Stream; charset=utf-8"));
    assert!(with("  text/event-stream"));
    assert!(!with("application/json"));
    assert!(!with("text/event"));
    assert!(!is_event_stream(&HeaderMap::new()));
}
