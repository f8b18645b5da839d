//! [`SinkFailurePolicy`], the audit setting a serde config names (`on_sink_failure`).

#[cfg(doc)]
use super::{AuditHandle, AuditSink, AuditUnavailable};

/// What to do when a sink cannot take a record (a full disk, an I/O error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SinkFailurePolicy {
    /// No answer without its record (default). The call whose record could not be written
    /// fails: with [`AuditUnavailable`] if it ended before its response (a gateway answers
    /// 503), else its response body ends with [`AuditUnavailable`] in place of its last frame,
    /// so the answer is never completed. New calls are then refused with [`AuditUnavailable`]
    /// until [`AuditSink::probe`] succeeds.
    #[default]
    FailClosed,
    /// Serve: the answer is delivered without its record. The loss is counted
    /// (`deepseek_audit_sink_errors_total`, [`AuditHandle::failed_writes`]) and logged (the
    /// error kind, never the record).
    FailOpen,
}
