//! [`AuditSink`] and the sinks to a `tracing` event and to any writer ([`JsonlFileSink`], the
//! file with rotation, is in its own module).

use std::fmt;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

#[cfg(doc)]
use super::{JsonlFileSink, SinkFailurePolicy};

/// Where audit records go. Implementations must be cheap and must not block for long: `write`
/// runs when a response ends, on the task that polls it, before the caller gets the last byte.
///
/// It is a sink of JSON lines, and the [review layer](crate::review) writes its records to the
/// same sinks (from a background thread: there `write` may block).
///
/// A sink that returns `Ok` from [`write`](Self::write) has taken the record: it must not hold
/// it in a buffer that nothing flushes (the layer's promise is that an answer is never
/// complete before its record was written; see the [module docs](super)).
pub trait AuditSink: Send + Sync + 'static {
    /// Writes one record: a JSON object on one line, without the trailing newline.
    ///
    /// # Errors
    ///
    /// Any I/O error; the layer applies its [`SinkFailurePolicy`]. A sink that fails must not
    /// keep part of the record (no torn line).
    fn write(&self, record: &[u8]) -> io::Result<()>;

    /// Makes the records written so far durable (for a file: `fsync`).
    ///
    /// # Errors
    ///
    /// Any I/O error.
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    /// After a failure, whether the sink can take records again: under
    /// [`SinkFailurePolicy::FailClosed`] the layer refuses calls until this succeeds. Default:
    /// [`flush`](Self::flush).
    ///
    /// # Errors
    ///
    /// The sink still cannot take records.
    fn probe(&self) -> io::Result<()> {
        self.flush()
    }

    /// The `hash` of the last record the sink already holds (written by an earlier process),
    /// so that a hash-chained layer links its first record to it and one chain spans restarts.
    /// Default: none (the chain starts from zeros).
    fn chain_tail(&self) -> Option<[u8; 32]> {
        None
    }
}

/// Emits each record as a `tracing` event (target `deepseek_audit`, level INFO, field
/// `record`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingSink;

impl AuditSink for TracingSink {
    fn write(&self, record: &[u8]) -> io::Result<()> {
        let record = std::str::from_utf8(record).map_err(io::Error::other)?;
        tracing::info!(target: "deepseek_audit", record = %record);
        Ok(())
    }
}

/// Writes JSON Lines to any [`Write`]: each record is written whole (one `write_all` of the
/// line and its newline) and the writer flushed, so nothing waits in a buffer. Cheap to clone
/// (shared).
pub struct WriterSink<W: Write> {
    inner: Arc<Mutex<WriterState<W>>>,
}

struct WriterState<W> {
    writer: W,
    line: Vec<u8>,
}

impl<W: Write> Clone for WriterSink<W> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<W: Write> fmt::Debug for WriterSink<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriterSink").finish_non_exhaustive()
    }
}

impl<W: Write> WriterSink<W> {
    /// Wraps `writer`.
    pub fn new(writer: W) -> Self {
        Self {
            inner: Arc::new(Mutex::new(WriterState {
                writer,
                line: Vec::new(),
            })),
        }
    }

    /// Runs `f` on the writer.
    pub fn with_inner<R>(&self, f: impl FnOnce(&mut W) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g.writer)
    }
}

impl<W: Write + Send + 'static> AuditSink for WriterSink<W> {
    fn write(&self, record: &[u8]) -> io::Result<()> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let WriterState { writer, line } = &mut *g;
        line.clear();
        line.extend_from_slice(record);
        line.push(b'\n');
        writer.write_all(line)?;
        writer.flush()
    }

    fn flush(&self) -> io::Result<()> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .writer
            .flush()
    }
}
