//! Traces across instances: OpenTelemetry spans exported over OTLP/HTTP (protobuf), behind the
//! `otel` cargo feature and the `[otel]` table of the configuration (off when the table is
//! absent).
//!
//! # The spans of one call
//!
//! | span | kind | from .. to | attributes |
//! |---|---|---|---|
//! | `POST /v1/chat/completions` (the method and the route) | server | the request .. the end of the answer's body | `http.request.method`, `http.route`, `http.response.status_code`, `deepseek.outcome` |
//! | `gateway.handler` | internal | the request .. the request admitted (key check, headers, body read) | `http.response.status_code` when the gateway answers itself |
//! | `chat deepseek-chat` (`gen_ai.operation.name` and the model; the stack call) | client | into the stack .. the end of the answer's body | the GenAI attributes below, `deepseek.retry.attempts`, `deepseek.retry.failures`, `deepseek.breaker.state`, `deepseek.cache.status`, `http.response.status_code` |
//! | `deepseek.<layer>` (the library layers' `tracing` spans, nested as the layers are) | internal | the layer's call .. its answer's head | `deepseek.layer`, `deepseek.outcome`, `deepseek.cache.status`, `deepseek.retry.attempts`, `deepseek.breaker.state` |
//! | `POST` (one per upstream attempt, under its `deepseek.timeout`) | client | the attempt leaves .. its response head | `http.request.method`, `server.address`, `server.port`, `url.path`, `deepseek.attempt`, `http.response.status_code`, `error.type` |
//!
//! GenAI attributes (OpenTelemetry semantic conventions): `gen_ai.system` and
//! `gen_ai.provider.name` (`deepseek`), `gen_ai.operation.name` (`chat`, `text_completion`),
//! `gen_ai.request.model`, `gen_ai.response.model`, `gen_ai.usage.input_tokens`,
//! `gen_ai.usage.output_tokens`, `gen_ai.usage.cache_read.input_tokens` (DeepSeek's
//! `prompt_cache_hit_tokens`), `deepseek.usage.prompt_cache_miss_tokens`,
//! `gen_ai.response.finish_reasons`.
//!
//! A cache hit has no attempt span (nothing went upstream); retries are one attempt span each.
//! The stack's layers publish what they did in response extensions (core's `protocol`:
//! `Attempts`, `BreakerStatus`) and the `x-cache` header: the gateway reads them for the
//! stack-call span's attributes. The layers' own spans (`tower_deepseek::core::trace`: one
//! `tracing` span per layer call, at `DEBUG`) are exported through `tracing-opentelemetry`:
//! each stack call runs under the gateway's own subscriber (`CallTrace::in_stack`) with the
//! stack-call span as the current OpenTelemetry context, so they become its children. That
//! subscriber exports the spans of `tower_deepseek*` targets only, with their own fields and
//! no source location, thread or timing fields, and hands every event on to the program's
//! subscriber (the log); no global subscriber is installed.
//!
//! # Never exported
//!
//! No prompt, answer, request or response body, header value, API key, client key, tenant,
//! request id, client address or query string goes into a span name or attribute. Model names
//! are client input: one that is not a plain model identifier is exported as `_OTHER`.
//!
//! # Context propagation
//!
//! A W3C `traceparent` (and `tracestate`) from the client is continued: the server span is
//! its child. The client's header is not forwarded (the upstream allow-list drops it); each
//! upstream attempt carries a `traceparent` the gateway writes, naming that attempt's span.

use serde::Deserialize;

/// The `[otel]` table: where and how to export traces. Absent: no tracing.
///
/// ```toml
/// [otel]
/// endpoint = "http://127.0.0.1:4318"   # OTLP/HTTP; `/v1/traces` is added to a bare URL
/// service_name = "deepseek-gateway"
/// sampling_ratio = 1.0                 # of the traces that start here; a client's sampled flag wins
/// timeout_ms = 10000                   # one export request
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct OtelConfig {
    /// The OTLP/HTTP endpoint (`http://` or `https://`): the URL of the traces
    /// (`http://collector:4318/v1/traces`), or a base URL without a path, to which
    /// `/v1/traces` is added. Default `http://127.0.0.1:4318`.
    pub endpoint: String,
    /// `service.name` of the exported resource. Default `deepseek-gateway`.
    pub service_name: String,
    /// The share of the traces started at the gateway that are sampled, 0.0 to 1.0
    /// (default 1.0). A client's `traceparent` decides for the traces it continues.
    pub sampling_ratio: f64,
    /// The timeout of one export request, in milliseconds (default 10000).
    pub timeout_ms: u64,
}

impl Default for OtelConfig {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:4318".to_owned(),
            service_name: "deepseek-gateway".to_owned(),
            sampling_ratio: 1.0,
            timeout_ms: 10_000,
        }
    }
}

impl OtelConfig {
    /// Checks the values: an `http`/`https` endpoint with a host, a ratio in `[0, 1]`, a
    /// positive timeout, a service name.
    ///
    /// # Errors
    ///
    /// What is wrong, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        let uri: http::Uri = self
            .endpoint
            .parse()
            .map_err(|_| format!("`endpoint` {:?} is not a URL", self.endpoint))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(format!(
                "`endpoint` {:?} must be an http:// or https:// URL with a host",
                self.endpoint
            ));
        }
        if !(self.sampling_ratio.is_finite() && (0.0..=1.0).contains(&self.sampling_ratio)) {
            return Err("`sampling_ratio` must be between 0.0 and 1.0".to_owned());
        }
        if self.timeout_ms == 0 {
            return Err("`timeout_ms` must be above 0".to_owned());
        }
        if self.service_name.trim().is_empty() {
            return Err("`service_name` must not be empty".to_owned());
        }
        Ok(())
    }

    /// The URL the spans are posted to.
    pub fn traces_url(&self) -> String {
        let base = self.endpoint.trim_end_matches('/');
        match self.endpoint.parse::<http::Uri>() {
            Ok(u) if matches!(u.path(), "" | "/") => format!("{base}/v1/traces"),
            _ => self.endpoint.clone(),
        }
    }
}

/// A model name fit for an attribute: a plain identifier (letters, digits, `.-_:/`, at most 64
/// bytes), else `_OTHER` (the semantic conventions' value for "not one of ours"), so that no
/// client text rides in it.
#[cfg_attr(not(feature = "otel"), allow(dead_code))]
fn model_attr(model: &str) -> String {
    let plain = !model.is_empty()
        && model.len() <= 64
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'/'));
    if plain {
        model.to_owned()
    } else {
        "_OTHER".to_owned()
    }
}

#[cfg(feature = "otel")]
mod imp;
#[cfg(feature = "otel")]
pub(crate) use imp::{CallTrace, TraceLayer, Tracing, traced};

#[cfg(not(feature = "otel"))]
mod off;
#[cfg(not(feature = "otel"))]
pub(crate) use off::{CallTrace, TraceLayer, Tracing, traced};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked_and_the_traces_path_added_to_a_bare_url() {
        let c = OtelConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.traces_url(), "http://127.0.0.1:4318/v1/traces");
        let mut c = OtelConfig {
            endpoint: "https://otel.example.com:4318/custom/traces".to_owned(),
            ..OtelConfig::default()
        };
        assert_eq!(
            c.traces_url(),
            "https://otel.example.com:4318/custom/traces"
        );
        c.sampling_ratio = 1.5;
        assert!(c.validate().unwrap_err().contains("sampling_ratio"));
        c.sampling_ratio = 0.5;
        c.endpoint = "ftp://x".to_owned();
        assert!(c.validate().unwrap_err().contains("endpoint"));
        c.endpoint = "http://x".to_owned();
        c.timeout_ms = 0;
        assert!(c.validate().unwrap_err().contains("timeout_ms"));
    }

    #[cfg(not(feature = "otel"))]
    #[test]
    fn without_the_feature_the_table_is_refused() {
        let err = Tracing::new(&OtelConfig::default()).unwrap_err();
        assert!(err.contains("`otel` feature"), "{err}");
    }

    #[test]
    fn only_plain_model_names_are_exported() {
        assert_eq!(model_attr("deepseek-chat"), "deepseek-chat");
        assert_eq!(model_attr("my email is a@b.c"), "_OTHER");
        assert_eq!(model_attr(&"x".repeat(65)), "_OTHER");
        assert_eq!(model_attr(""), "_OTHER");
    }
}
