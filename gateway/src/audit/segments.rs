//! The audit log on disk: a folder of segment files and a checkpoint.
//!
//! Records are appended to the newest segment, `<first seq, 20 digits>-<first record's time>.jsonl`;
//! a segment that reaches the configured size is closed and the next one starts where it ended
//! (its first record's `prev_hash` is the previous segment's last hash). Segment names carry
//! their first sequence number and time, so a scan of the log can skip segments a filter on
//! `seq` or `time` excludes without opening them; the writer keeps `time` non-decreasing.
//!
//! `checkpoint.json` holds the number of records and the last hash, rewritten (atomically) after
//! every group commit. A log cut short is detected by comparing it with the checkpoint: at
//! startup for the newest segment, by `meshgate audit verify` for the whole history.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::chain::Walk;

/// The checkpoint's file name in the log folder.
pub const CHECKPOINT: &str = "checkpoint.json";

/// Largest record the writer produces (every caller-influenced field is capped); bounds how far
/// back from a segment's end its last record starts.
const MAX_RECORD: u64 = 64 * 1024;

/// Why the log on disk cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// File or folder.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A record breaks the chain.
    #[error("{segment} is broken at line {line}: {reason}")]
    Broken {
        /// Segment file name.
        segment: String,
        /// 1-based line in that segment.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The log holds fewer records than its checkpoint, or other records than it names.
    #[error("the log was cut short or replaced: {0}")]
    CutShort(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.display().to_string(), source }
}

/// One segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The file.
    pub path: PathBuf,
    /// Sequence number of its first record.
    pub first_seq: u64,
    /// `time` of its first record (RFC 3339, UTC, milliseconds).
    pub first_time: String,
}

impl Segment {
    /// The segment starting with record `first_seq` written at `first_time` (RFC 3339).
    pub fn new(dir: &Path, first_seq: u64, first_time: &str) -> Self {
        let compact: String = first_time.chars().filter(|c| !matches!(c, '-' | ':')).collect();
        Self { path: dir.join(format!("{first_seq:020}-{compact}.jsonl")), first_seq, first_time: first_time.into() }
    }

    fn parse(path: PathBuf) -> Option<Self> {
        let name = path.file_name()?.to_str()?.strip_suffix(".jsonl")?;
        let (seq, compact) = name.split_once('-')?;
        let first_seq = seq.parse().ok().filter(|_| seq.len() == 20)?;
        // 20261122T101500.123Z -> 2026-11-22T10:15:00.123Z
        let c = compact.as_bytes();
        if c.len() != 20 || c[8] != b'T' || c[15] != b'.' || c[19] != b'Z' {
            return None;
        }
        let first_time = format!(
            "{}-{}-{}T{}:{}:{}",
            &compact[0..4],
            &compact[4..6],
            &compact[6..8],
            &compact[9..11],
            &compact[11..13],
            &compact[13..]
        );
        Some(Self { path, first_seq, first_time })
    }

    /// The file name.
    pub fn name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

/// The segments in `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<Segment>, Error> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        if let Some(s) = Segment::parse(entry.path()) {
            out.push(s);
        }
    }
    out.sort_by_key(|s| s.first_seq);
    Ok(out)
}

/// What the log holds after its last durable commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Records in the log (the next record's sequence number).
    pub records: u64,
    /// Hash of the last record.
    pub hash: String,
}

impl Checkpoint {
    /// Reads `dir`'s checkpoint; `None` when there is none yet.
    pub fn read(dir: &Path) -> Result<Option<Self>, Error> {
        let path = dir.join(CHECKPOINT);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::CutShort(format!("{CHECKPOINT} is not a checkpoint ({e})"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Replaces `dir`'s checkpoint: written to a temporary file, synced, then renamed over the old
    /// one, so a crash leaves either checkpoint, both consistent with the log.
    pub fn write(&self, dir: &Path) -> Result<(), Error> {
        let tmp = dir.join(format!("{CHECKPOINT}.tmp"));
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&serde_json::to_vec(self).unwrap_or_default()).map_err(io(&tmp))?;
        f.sync_data().map_err(io(&tmp))?;
        std::fs::rename(&tmp, dir.join(CHECKPOINT)).map_err(io(&tmp))
    }
}

/// Compares a chain, as it is walked, with the checkpoint.
struct AgainstCheckpoint {
    checkpoint: Option<Checkpoint>,
    /// Whether the record the checkpoint names was walked and matched its hash.
    matched: bool,
}

impl AgainstCheckpoint {
    /// Starts where `walk` stands.
    fn new(checkpoint: Option<Checkpoint>, walk: &Walk) -> Self {
        let mut this = Self { checkpoint, matched: false };
        this.after(walk);
        this
    }

    /// Notes the chain after one more record.
    fn after(&mut self, walk: &Walk) {
        if let Some(c) = self.checkpoint.as_ref().filter(|c| c.records == walk.seq) {
            self.matched = c.hash == walk.prev;
        }
    }

    /// Whether the walk, which started at record `from`, agrees with the checkpoint; a checkpoint
    /// before `from` is not judged.
    fn finish(&self, walk: &Walk, from: u64) -> Result<(), Error> {
        let Some(c) = &self.checkpoint else { return Ok(()) };
        if c.records > walk.seq {
            return Err(Error::CutShort(format!(
                "the checkpoint counts {} records, the log ends after {}",
                c.records, walk.seq
            )));
        }
        if c.records >= from && !self.matched {
            return Err(Error::CutShort(format!(
                "record {} is not the one the checkpoint names",
                c.records.saturating_sub(1)
            )));
        }
        Ok(())
    }
}

/// Syncs a folder, so files created or renamed in it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// The last complete record of a segment, read from its end.
fn last_record(path: &Path) -> Result<Option<serde_json::Value>, Error> {
    let mut f = File::open(path).map_err(io(path))?;
    let len = f.metadata().map_err(io(path))?.len();
    let from = len.saturating_sub(MAX_RECORD);
    f.seek(SeekFrom::Start(from)).map_err(io(path))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).map_err(io(path))?;
    let end = match tail.iter().rposition(|b| *b == b'\n') {
        Some(i) => i,
        None => return Ok(None),
    };
    let start = tail[..end].iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    Ok(serde_json::from_slice(&tail[start..end]).ok())
}

/// Where the chain stands at the start of `segments[i]`, from the end of the one before it.
fn chain_before(segments: &[Segment], i: usize) -> Result<Walk, Error> {
    if i == 0 {
        if segments[0].first_seq != 0 {
            return Err(Error::CutShort(format!(
                "the oldest segment, {}, starts at record {}, not 0",
                segments[0].name(),
                segments[0].first_seq
            )));
        }
        return Ok(Walk::genesis());
    }
    let prev = &segments[i - 1];
    let last = last_record(&prev.path)?.ok_or_else(|| Error::CutShort(format!("{} holds no record", prev.name())))?;
    let seq = last.get("seq").and_then(serde_json::Value::as_u64).unwrap_or(u64::MAX);
    let hash = last.get("hash").and_then(serde_json::Value::as_str).unwrap_or_default();
    Ok(Walk { seq: seq.wrapping_add(1), prev: hash.to_string() })
}

/// How the writer resumes an existing log.
#[derive(Debug)]
pub struct Resumed {
    /// The chain after the last record.
    pub walk: Walk,
    /// The newest segment and its length, when there is one.
    pub tail: Option<(Segment, u64)>,
    /// `time` of the last record.
    pub last_time: String,
}

/// Checks the newest segment (its link to the one before, every record in it, and the
/// checkpoint) and returns where writing resumes. A record cut short at the very end (a process
/// killed while appending, never acknowledged) is moved to a `.partial` file beside the segment
/// and logged. Older segments are not read: `meshgate audit verify` checks the whole history.
pub fn resume(dir: &Path) -> Result<Resumed, Error> {
    let segments = list(dir)?;
    let checkpoint = Checkpoint::read(dir)?;
    let Some(last) = segments.last() else {
        return match checkpoint {
            Some(c) if c.records > 0 => {
                Err(Error::CutShort(format!("the checkpoint counts {} records but no segment exists", c.records)))
            }
            _ => Ok(Resumed { walk: Walk::genesis(), tail: None, last_time: String::new() }),
        };
    };
    let mut walk = chain_before(&segments, segments.len() - 1)?;
    if walk.seq != last.first_seq {
        return Err(Error::CutShort(format!(
            "{} starts at record {} but the segment before it ends at {}",
            last.name(),
            last.first_seq,
            walk.seq.wrapping_sub(1)
        )));
    }
    let mut text = std::fs::read(&last.path).map_err(io(&last.path))?;
    let whole = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if whole < text.len() {
        let partial = last.path.with_extension(format!("jsonl.partial-{}", chrono::Utc::now().timestamp()));
        std::fs::write(&partial, &text[whole..]).map_err(io(&partial))?;
        let f = std::fs::OpenOptions::new().write(true).open(&last.path).map_err(io(&last.path))?;
        f.set_len(whole as u64).and_then(|()| f.sync_all()).map_err(io(&last.path))?;
        tracing::warn!(
            segment = %last.name(),
            bytes = text.len() - whole,
            kept_in = %partial.display(),
            "the audit log ended in a record cut short (never acknowledged); moved aside"
        );
        text.truncate(whole);
    }
    let text = String::from_utf8(text).map_err(|_| Error::Broken {
        segment: last.name(),
        line: 0,
        reason: "not UTF-8 text".into(),
    })?;
    let mut last_time = String::new();
    let mut against = AgainstCheckpoint::new(checkpoint, &walk);
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let record = walk.push(line).map_err(|reason| Error::Broken { segment: last.name(), line: i + 1, reason })?;
        against.after(&walk);
        if let Some(t) = record["time"].as_str() {
            last_time = t.to_string();
        }
    }
    // A checkpoint inside older segments is checked by `audit verify`, not at startup.
    against.finish(&walk, last.first_seq)?;
    Ok(Resumed { tail: Some((last.clone(), text.len() as u64)), walk, last_time })
}

/// What a whole-log check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Records checked.
    pub records: u64,
    /// Segments checked.
    pub segments: usize,
    /// Whether a checkpoint was there to compare with.
    pub checkpointed: bool,
}

/// Checks every segment of the log in `dir` in order, the links between them, and the
/// checkpoint.
pub fn verify_all(dir: &Path) -> Result<Report, Error> {
    let segments = list(dir)?;
    let checkpoint = Checkpoint::read(dir)?;
    let checkpointed = checkpoint.is_some();
    let mut walk = Walk::genesis();
    let mut against = AgainstCheckpoint::new(checkpoint, &walk);
    for s in &segments {
        if s.first_seq != walk.seq {
            return Err(Error::CutShort(format!(
                "{} starts at record {} where {} was expected: a segment is missing",
                s.name(),
                s.first_seq,
                walk.seq
            )));
        }
        let text = std::fs::read_to_string(&s.path).map_err(io(&s.path))?;
        for (i, line) in text.split_inclusive('\n').enumerate() {
            walk.push(line).map_err(|reason| Error::Broken { segment: s.name(), line: i + 1, reason })?;
            against.after(&walk);
        }
    }
    against.finish(&walk, 0)?;
    Ok(Report { records: walk.seq, segments: segments.len(), checkpointed })
}

/// Every record of the log in `dir`, as text, oldest first (tests and small tools).
pub fn read_all(dir: &Path) -> Result<String, Error> {
    let mut out = String::new();
    for s in list(dir)? {
        out.push_str(&std::fs::read_to_string(&s.path).map_err(io(&s.path))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let dir = Path::new("/x");
        let s = Segment::new(dir, 42, "2026-11-22T10:15:00.123Z");
        assert_eq!(s.name(), "00000000000000000042-20261122T101500.123Z.jsonl");
        assert_eq!(Segment::parse(s.path.clone()), Some(s));
        assert_eq!(Segment::parse(dir.join("checkpoint.json")), None);
        assert_eq!(Segment::parse(dir.join("42-20261122T101500.123Z.jsonl")), None);
    }
}
