//! [`JsonlFileSink`]: the durable JSON Lines file.
//!
//! See [`JsonlFileSink`] for the durability it gives.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use std::{fmt, thread};

use super::AuditSink;
use super::chain::parse_hash;

/// The default interval between two `fsync`s of [`JsonlFileSink`]: 1 s.
pub const DEFAULT_FSYNC_INTERVAL: Duration = Duration::from_secs(1);

/// The default size at which [`JsonlFileSink`] rotates: 100 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 100 * 1024 * 1024;

/// The default number of rotated files [`JsonlFileSink`] keeps: 10.
pub const DEFAULT_KEEP: usize = 10;

/// A JSON-Lines file, written through and synced at an interval (see *Durability* below),
/// with size-based rotation: when the file would exceed
/// `max_bytes`, it is synced and renamed to `<path>.1` (older ones shift to `.2`, … up to
/// `keep`, the oldest is removed) and a new file is started. The hash chain runs on across
/// files and across restarts.
///
/// Cheap to clone: clones share the file. The background `fsync` thread stops when the last
/// clone is dropped (after a last sync).
///
/// # Durability
///
/// - **Written through.** Each record goes to the OS in one `write` of the whole line (record
///   and newline, on a file opened in append mode) when the layer hands it over, that is
///   before the last byte of the answer reaches the caller. Nothing waits in a user-space
///   buffer, so a crashed or `kill -9`ed process loses no record that was handed over: the
///   page cache survives the process.
/// - **Synced at an interval.** A background thread (`deepseek-audit-fsync`, one per sink)
///   calls `fdatasync` every [`fsync_interval`](JsonlFileSinkBuilder::fsync_interval) (default
///   [`DEFAULT_FSYNC_INTERVAL`], 1 s) when records were written since the last one, so that a
///   power loss or kernel crash loses at most that interval. The `write` itself is a short
///   syscall on the task that ends the call; the `fsync`, which can take milliseconds, never
///   runs on a runtime thread. With `Duration::ZERO` every record is synced inline before the
///   call completes (the strongest guarantee, at the cost of one `fdatasync` per call on the
///   runtime thread that ends it). [`AuditSink::flush`] syncs at once (the gateway calls it on
///   shutdown), and dropping the sink syncs too.
/// - **No torn line.** A write that fails part way (a full disk) is cut off again
///   (`ftruncate` to the length before it), so the file never holds half a record; if even that
///   fails, the cut is retried before the next write. A line torn by a crash in the middle of a
///   `write` is found when the file is opened again: the partial last line is moved to
///   `<path>.torn` (appended, one line per repair) and cut off the log before anything is
///   appended.
/// - **The chain goes on.** On open, the sink reads the `hash` of the last record of the file
///   (or, when the file is empty, of the newest rotated file `<path>.1`) and reports it through
///   [`AuditSink::chain_tail`]: a hash-chained [`AuditLayer`](crate::AuditLayer) links its first
///   record to it, so one chain spans restarts. Rotation keeps the chain: the first record of
///   the new file links to the last one of the old file.
///
/// One process at a time may append to a file: two writers would interleave their chains.
#[derive(Clone)]
pub struct JsonlFileSink {
    inner: Arc<FileInner>,
    /// Dropping the last sender stops the `fsync` thread.
    _stop: Option<Arc<mpsc::Sender<()>>>,
}

struct FileInner {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    fsync_interval: Duration,
    state: Mutex<FileState>,
    /// Records written to the OS, and of those, records synced (since open).
    written: AtomicU64,
    synced: AtomicU64,
    /// The background sync failed: the next write syncs inline first.
    sync_failed: AtomicBool,
    /// The hash of the last record found on open.
    tail: Option<[u8; 32]>,
}

struct FileState {
    file: Arc<File>,
    /// Bytes of complete records in the file.
    size: u64,
    /// A failed write may have left bytes after `size`: cut them before the next write.
    cut_pending: bool,
    /// The line being written (record and newline), reused.
    line: Vec<u8>,
}

impl fmt::Debug for JsonlFileSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonlFileSink")
            .field("path", &self.inner.path)
            .field("max_bytes", &self.inner.max_bytes)
            .field("keep", &self.inner.keep)
            .field("fsync_interval", &self.inner.fsync_interval)
            .finish()
    }
}

/// Builds a [`JsonlFileSink`]; from [`JsonlFileSink::builder`].
#[must_use]
#[derive(Debug, Clone)]
pub struct JsonlFileSinkBuilder {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    fsync_interval: Duration,
}

impl JsonlFileSinkBuilder {
    /// Rotate when the file would exceed this size (at least 1). Default [`DEFAULT_MAX_BYTES`].
    pub fn max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes.max(1);
        self
    }

    /// Rotated files kept (at least 1). Default [`DEFAULT_KEEP`].
    pub fn keep(mut self, keep: usize) -> Self {
        self.keep = keep.max(1);
        self
    }

    /// How often written records are `fsync`ed (when any were written since the last sync).
    /// Default [`DEFAULT_FSYNC_INTERVAL`]; `Duration::ZERO` syncs every record before the
    /// call completes (no background thread). See [`JsonlFileSink`].
    pub fn fsync_interval(mut self, interval: Duration) -> Self {
        self.fsync_interval = interval;
        self
    }

    /// Opens (appends to) the file: repairs a torn last line, reads the chain's tail, and
    /// starts the `fsync` thread.
    ///
    /// # Errors
    ///
    /// The file cannot be opened, read or repaired, or the thread cannot be started.
    pub fn open(self) -> io::Result<JsonlFileSink> {
        let path = self.path;
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let size = repair_torn_tail(&file, &path)?;
        let tail = match last_line(&file, size)? {
            Some(line) => parse_hash(&line),
            None => {
                // A new (or just rotated) file: the chain goes on from the newest rotated one.
                let rotated = rotated_path(&path, 1);
                match File::open(&rotated) {
                    Ok(old) => {
                        let len = old.metadata()?.len();
                        last_line(&old, len)?.and_then(|l| parse_hash(&l))
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(e) => return Err(e),
                }
            }
        };
        let inner = Arc::new(FileInner {
            path,
            max_bytes: self.max_bytes,
            keep: self.keep,
            fsync_interval: self.fsync_interval,
            state: Mutex::new(FileState {
                file: Arc::new(file),
                size,
                cut_pending: false,
                line: Vec::with_capacity(1024),
            }),
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            sync_failed: AtomicBool::new(false),
            tail,
        });
        let stop = if self.fsync_interval.is_zero() {
            None
        } else {
            let (tx, rx) = mpsc::channel();
            let weak = Arc::downgrade(&inner);
            let interval = self.fsync_interval;
            thread::Builder::new()
                .name("deepseek-audit-fsync".to_owned())
                .spawn(move || sync_loop(&weak, &rx, interval))?;
            Some(Arc::new(tx))
        };
        Ok(JsonlFileSink { inner, _stop: stop })
    }
}

/// Syncs every `interval` until every sender is dropped.
fn sync_loop(inner: &Weak<FileInner>, stop: &mpsc::Receiver<()>, interval: Duration) {
    loop {
        match stop.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {}
            // Stopped: the last sink syncs when dropped; if this thread held the file at
            // that moment, it syncs here instead.
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                if let Some(inner) = inner.upgrade() {
                    let _ = inner.sync_now();
                }
                return;
            }
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if let Err(e) = inner.sync_now() {
            inner.sync_failed.store(true, Ordering::Release);
            metrics::counter!("deepseek_audit_fsync_errors_total").increment(1);
            tracing::error!(target: "tower_deepseek_redact", error_kind = ?e.kind(), "audit log fsync failed; the next record syncs inline");
        }
    }
}

impl JsonlFileSink {
    /// Opens (appends to) `path`, rotating at `max_bytes` and keeping `keep` old files, with
    /// the default `fsync` interval. Same as
    /// `JsonlFileSink::builder(path).max_bytes(max_bytes).keep(keep).open()`.
    ///
    /// # Errors
    ///
    /// See [`JsonlFileSinkBuilder::open`].
    pub fn open(path: impl AsRef<Path>, max_bytes: u64, keep: usize) -> io::Result<Self> {
        Self::builder(path).max_bytes(max_bytes).keep(keep).open()
    }

    /// A builder for the file at `path`.
    pub fn builder(path: impl AsRef<Path>) -> JsonlFileSinkBuilder {
        JsonlFileSinkBuilder {
            path: path.as_ref().to_path_buf(),
            max_bytes: DEFAULT_MAX_BYTES,
            keep: DEFAULT_KEEP,
            fsync_interval: DEFAULT_FSYNC_INTERVAL,
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Records written to the OS since the sink was opened.
    pub fn written_records(&self) -> u64 {
        self.inner.written.load(Ordering::Acquire)
    }

    /// Records known to be on disk (`fsync`ed) since the sink was opened.
    pub fn synced_records(&self) -> u64 {
        self.inner.synced.load(Ordering::Acquire)
    }
}

impl Drop for JsonlFileSink {
    fn drop(&mut self) {
        // The last clone: make what was written durable before the file closes.
        if Arc::strong_count(&self.inner) == 1 {
            let _ = self.inner.sync_now();
        }
    }
}

pub(super) fn rotated_path(path: &Path, n: usize) -> PathBuf {
    let mut p = path.to_path_buf().into_os_string();
    p.push(format!(".{n}"));
    p.into()
}

impl FileInner {
    fn lock(&self) -> MutexGuard<'_, FileState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `fdatasync`s the file if records were written since the last sync.
    fn sync_now(&self) -> io::Result<()> {
        let (file, target) = {
            let st = self.lock();
            let target = self.written.load(Ordering::Acquire);
            if target == self.synced.load(Ordering::Acquire) {
                return Ok(());
            }
            (st.file.clone(), target)
        };
        // Outside the lock: writers go on while the disk syncs.
        file.sync_data()?;
        self.synced.fetch_max(target, Ordering::AcqRel);
        self.sync_failed.store(false, Ordering::Release);
        Ok(())
    }

    fn rotate(&self, st: &mut FileState) -> io::Result<()> {
        // Every record of the old file is durable before it is renamed.
        st.file.sync_data()?;
        self.synced
            .fetch_max(self.written.load(Ordering::Acquire), Ordering::AcqRel);
        let _ = std::fs::remove_file(rotated_path(&self.path, self.keep));
        for n in (1..self.keep).rev() {
            let from = rotated_path(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, rotated_path(&self.path, n + 1))?;
            }
        }
        let first = rotated_path(&self.path, 1);
        std::fs::rename(&self.path, &first)?;
        let file = match OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)
        {
            Ok(f) => f,
            Err(e) => {
                // Keep appending to the old file rather than to a renamed one.
                let _ = std::fs::rename(&first, &self.path);
                return Err(e);
            }
        };
        sync_dir(&self.path);
        st.file = Arc::new(file);
        st.size = 0;
        Ok(())
    }

    fn write_line(&self, record: &[u8]) -> io::Result<()> {
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.cut_pending {
            st.file.set_len(st.size)?;
            st.cut_pending = false;
        }
        if self.sync_failed.load(Ordering::Acquire) {
            st.file.sync_data()?;
            self.synced
                .fetch_max(self.written.load(Ordering::Acquire), Ordering::AcqRel);
            self.sync_failed.store(false, Ordering::Release);
        }
        let len = record.len() as u64 + 1;
        if st.size > 0 && st.size + len > self.max_bytes {
            self.rotate(st)?;
        }
        st.line.clear();
        st.line.extend_from_slice(record);
        st.line.push(b'\n');
        let mut result = (&*st.file).write_all(&st.line);
        if result.is_ok() && self.fsync_interval.is_zero() {
            result = st.file.sync_data();
        }
        if let Err(e) = result {
            // Part of the line may be in the file: cut it off (it is not a record).
            if st.file.set_len(st.size).is_err() {
                st.cut_pending = true;
            }
            return Err(e);
        }
        st.size += len;
        let n = self.written.fetch_add(1, Ordering::AcqRel) + 1;
        if self.fsync_interval.is_zero() {
            self.synced.fetch_max(n, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Whether a record of typical size would fit: writes a 4 KiB probe file next to the log
    /// and removes it.
    fn probe(&self) -> io::Result<()> {
        {
            let mut st = self.lock();
            if st.cut_pending {
                st.file.set_len(st.size)?;
                st.cut_pending = false;
            }
        }
        let mut p = self.path.clone().into_os_string();
        p.push(".probe");
        let p = PathBuf::from(p);
        let result = File::create(&p).and_then(|mut f| f.write_all(&[b' '; 4096]));
        let _ = std::fs::remove_file(&p);
        result
    }
}

impl AuditSink for JsonlFileSink {
    fn write(&self, record: &[u8]) -> io::Result<()> {
        self.inner.write_line(record)
    }

    /// Syncs the records written so far to disk.
    fn flush(&self) -> io::Result<()> {
        self.inner.sync_now()
    }

    fn probe(&self) -> io::Result<()> {
        self.inner.probe()
    }

    fn chain_tail(&self) -> Option<[u8; 32]> {
        self.inner.tail
    }
}

/// Best effort: syncs the directory holding `path`, so that a new or renamed file survives a
/// power loss.
fn sync_dir(path: &Path) {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Reads `len` bytes of `file` ending at `end`.
fn read_range(file: &File, end: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut f = file;
    f.seek(SeekFrom::Start(end - len))?;
    let mut buf = vec![0; len as usize];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

/// The offset just after the last `\n` at or before `end` (0 if none).
fn line_start_before(file: &File, end: u64) -> io::Result<u64> {
    const BLOCK: u64 = 8 * 1024;
    let mut pos = end;
    while pos > 0 {
        let len = BLOCK.min(pos);
        let buf = read_range(file, pos, len)?;
        if let Some(i) = memchr::memrchr(b'\n', &buf) {
            return Ok(pos - len + i as u64 + 1);
        }
        pos -= len;
    }
    Ok(0)
}

/// Moves a partial last line (a file that does not end with a newline) to `<path>.torn` and
/// cuts it off. Returns the file's length after the repair.
fn repair_torn_tail(file: &File, path: &Path) -> io::Result<u64> {
    let size = file.metadata()?.len();
    if size == 0 || read_range(file, size, 1)?[0] == b'\n' {
        return Ok(size);
    }
    let keep = line_start_before(file, size)?;
    let mut torn = read_range(file, size, size - keep)?;
    torn.push(b'\n');
    let mut aside = path.to_path_buf().into_os_string();
    aside.push(".torn");
    let mut t = OpenOptions::new().create(true).append(true).open(&aside)?;
    t.write_all(&torn)?;
    t.sync_data()?;
    file.set_len(keep)?;
    file.sync_data()?;
    tracing::warn!(target: "tower_deepseek_redact", bytes = torn.len() - 1, aside = %Path::new(&aside).display(), "audit log ended with a partial line (a crash during a write): moved aside");
    Ok(keep)
}

/// The last complete line of a file of `size` bytes that ends with a newline, without it.
fn last_line(file: &File, size: u64) -> io::Result<Option<Vec<u8>>> {
    if size == 0 {
        return Ok(None);
    }
    let end = size - 1;
    let start = line_start_before(file, end)?;
    if start == end {
        return Ok(None);
    }
    read_range(file, end, end - start).map(Some)
}
