//! The review sink's queue: records are handed to a background thread, so that a call pays
//! an enqueue and never a write.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::audit::AuditSink;

enum Msg {
    Line(Vec<u8>),
    Flush(oneshot::Sender<io::Result<()>>),
}

/// The sending side; the thread (`deepseek-review-sink`) stops when it is dropped.
pub(super) struct Writer {
    tx: mpsc::Sender<Msg>,
    dropped: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl Writer {
    pub(super) fn new(sink: Arc<dyn AuditSink>, capacity: usize) -> io::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Msg>(capacity);
        let failed = Arc::new(AtomicU64::new(0));
        let f = failed.clone();
        std::thread::Builder::new()
            .name("deepseek-review-sink".into())
            .spawn(move || {
                while let Some(msg) = rx.blocking_recv() {
                    match msg {
                        Msg::Line(line) => {
                            if let Err(e) = sink.write(&line) {
                                f.fetch_add(1, Ordering::Relaxed);
                                metrics::counter!("deepseek_review_sink_errors_total").increment(1);
                                tracing::warn!(target: "tower_deepseek_redact", kind = ?e.kind(), "review record not written");
                            }
                        }
                        Msg::Flush(done) => {
                            let _ = done.send(sink.flush());
                        }
                    }
                }
                let _ = sink.flush();
            })?;
        Ok(Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            failed,
        })
    }

    /// Queues one record (a JSON object, no newline); a full queue drops it, counted.
    pub(super) fn enqueue(&self, line: Vec<u8>, kind: &'static str) {
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => {
                metrics::counter!("deepseek_review_records_total", "kind" => kind).increment(1);
            }
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("deepseek_review_dropped_total", "what" => "record").increment(1);
            }
        }
    }

    /// Waits until every record queued before has been written, then flushes the sink.
    pub(super) async fn flush(&self) -> io::Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Msg::Flush(done))
            .await
            .map_err(|_| io::Error::other("review sink thread stopped"))?;
        wait.await
            .map_err(|_| io::Error::other("review sink thread stopped"))?
    }

    pub(super) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(super) fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}
