//! The writer thread: group commit.
//!
//! One OS thread owns the files. It takes every record waiting in the queue (up to
//! [`MAX_GROUP`]), stamps each with `time`, `seq`, `prev_hash` and `hash`, appends them to the
//! newest segment in one write, syncs the file, rewrites the checkpoint, and only then tells each
//! sender its record is durable. Concurrent calls share one sync. A failed write is cut back off
//! the file, so the chain on disk stays whole and the next group retries from the same place.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::chain::{self, Walk};
use super::segments::{self, Checkpoint, Resumed, Segment};

/// Most records committed by one sync.
const MAX_GROUP: usize = 4096;

/// What the writer is asked to do. Every acknowledgement says whether the records before it are
/// durable.
#[derive(Debug)]
pub(super) enum Msg {
    /// Append a record; acknowledged (when asked) once it is durable.
    Record(Value, Option<oneshot::Sender<bool>>),
    /// Acknowledged once everything before it is durable.
    Flush(oneshot::Sender<bool>),
    /// Commit what is queued, then stop.
    Close(oneshot::Sender<bool>),
}

/// The writer's state.
pub(super) struct Writer {
    dir: PathBuf,
    segment_bytes: u64,
    /// The newest segment, its file, and its committed length.
    tail: Option<(Segment, File, u64)>,
    walk: Walk,
    last_time: String,
    healthy: Arc<AtomicBool>,
}

impl Writer {
    /// Resumes the log described by `resumed` in `dir`.
    pub(super) fn new(
        dir: PathBuf,
        resumed: Resumed,
        segment_bytes: u64,
        healthy: Arc<AtomicBool>,
    ) -> Result<Self, segments::Error> {
        let tail = match resumed.tail {
            Some((segment, len)) => {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&segment.path)
                    .map_err(|source| segments::Error::Io { path: segment.path.display().to_string(), source })?;
                Some((segment, file, len))
            }
            None => None,
        };
        Ok(Self { dir, segment_bytes, tail, walk: resumed.walk, last_time: resumed.last_time, healthy })
    }

    /// Runs until the queue closes or a [`Msg::Close`].
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(m) => group.push(m),
                    Err(_) => break,
                }
            }
            let mut records = Vec::new();
            let mut acks = Vec::new();
            let mut closing = false;
            for m in group {
                match m {
                    Msg::Record(r, ack) => {
                        records.push(r);
                        acks.extend(ack);
                    }
                    Msg::Flush(ack) => acks.push(ack),
                    Msg::Close(ack) => {
                        acks.push(ack);
                        closing = true;
                    }
                }
            }
            let durable = self.commit(records);
            for ack in acks {
                let _ = ack.send(durable);
            }
            if closing {
                return;
            }
        }
    }

    /// Appends `records` durably; false (and nothing appended) when the files cannot be written.
    fn commit(&mut self, records: Vec<Value>) -> bool {
        if records.is_empty() {
            return self.healthy.load(Ordering::Relaxed);
        }
        let mut walk = self.walk.clone();
        let mut time = self.last_time.clone();
        let mut first_time = None;
        let first_seq = walk.seq;
        let mut buf = Vec::with_capacity(records.len() * 1024);
        for mut r in records {
            // `time` never goes back, even when the clock does: segment names bound their
            // records' times, and scans skip segments by them.
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            if now > time {
                time = now;
            }
            first_time.get_or_insert_with(|| time.clone());
            r["time"] = json!(time);
            r["seq"] = json!(walk.seq);
            r["prev_hash"] = json!(walk.prev);
            let hash = chain::hash_of(&r);
            r["hash"] = json!(hash);
            serde_json::to_writer(&mut buf, &r).unwrap_or_default();
            buf.push(b'\n');
            walk.seq += 1;
            walk.prev = hash;
        }
        match self.append(&buf, first_seq, first_time.as_deref().unwrap_or_default()) {
            Ok(()) => {
                self.walk = walk;
                self.last_time = time;
                match (Checkpoint { records: self.walk.seq, hash: self.walk.prev.clone() }).write(&self.dir) {
                    Ok(()) => self.healthy.store(true, Ordering::Relaxed),
                    Err(e) => {
                        // The records are durable; a stale checkpoint only weakens truncation
                        // checks, but the operator must know and calls fail closed until it heals.
                        tracing::error!(error = %e, "writing the audit checkpoint failed; refusing requests");
                        self.healthy.store(false, Ordering::Relaxed);
                    }
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "writing the audit log failed; refusing requests");
                self.healthy.store(false, Ordering::Relaxed);
                false
            }
        }
    }

    fn append(&mut self, buf: &[u8], first_seq: u64, first_time: &str) -> Result<(), segments::Error> {
        let rotate = match &self.tail {
            None => true,
            Some((_, _, len)) => *len > 0 && *len + buf.len() as u64 > self.segment_bytes,
        };
        if rotate {
            let segment = Segment::new(&self.dir, first_seq, first_time);
            let io = |source| segments::Error::Io { path: segment.path.display().to_string(), source };
            let file = OpenOptions::new().create_new(true).append(true).open(&segment.path).map_err(io)?;
            segments::sync_dir(&self.dir)?;
            if let Some((old, _, len)) = &self.tail {
                tracing::info!(closed = %old.name(), bytes = len, opened = %segment.name(), "audit segment rotated");
            }
            self.tail = Some((segment, file, 0));
        }
        let Some((segment, file, len)) = self.tail.as_mut() else {
            return Err(segments::Error::CutShort("no segment to append to".into()));
        };
        let written = file.write_all(buf).and_then(|()| file.sync_data());
        if let Err(source) = written {
            // Cut a partial append back off, so the next group starts on a whole chain.
            let _ = file.set_len(*len);
            return Err(segments::Error::Io { path: segment.path.display().to_string(), source });
        }
        *len += buf.len() as u64;
        Ok(())
    }
}
