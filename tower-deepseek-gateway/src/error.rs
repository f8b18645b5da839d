//! Errors as OpenAI-style JSON responses.
//!
//! Every layer's error is mapped by the facade ([`tower_deepseek::error`]): one table for the
//! library and the gateway.

use std::error::Error as StdError;
use std::time::Duration;

use axum::body::Body;
use http::{Response, StatusCode};

/// The status an error is answered with.
pub(crate) fn status_for(err: &(dyn StdError + 'static)) -> StatusCode {
    tower_deepseek::error::status_for(err)
}

/// An OpenAI-style JSON error response for a layer's error.
pub(crate) fn error_response(err: &(dyn StdError + 'static)) -> Response<Body> {
    tower_deepseek::error::error_response(err).map(Body::new)
}

/// `{"error":{"message","type","code"}}` with `status`.
pub(crate) fn json_error(
    status: StatusCode,
    kind: &str,
    code: &str,
    message: &str,
    retry_after: Option<Duration>,
) -> Response<Body> {
    tower_deepseek::error::json_error(status, kind, code, message, retry_after).map(Body::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower_deepseek::core::error::{BodyTooLarge, BreakerOpen};

    async fn json(res: Response<Body>) -> serde_json::Value {
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap()
    }

    #[tokio::test]
    async fn maps_layer_errors_with_status_and_shape() {
        let res = error_response(&BodyTooLarge::new(8));
        assert_eq!(res.status(), 413);
        let v = json(res).await;
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].is_string());

        let res = error_response(&BreakerOpen::new(Duration::from_millis(1500)));
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()["retry-after"], "2");

        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(status_for(&io), StatusCode::BAD_GATEWAY);
    }
}
