//! The disk spool: every result is written here, with a checksum, before it may be sent; it is
//! forgotten only after the collector acked it. So a collector restart, a partition or the
//! agent's own crash loses nothing that was written.
//!
//! Layout: `seg-<first seq>.log` segment files of records `[u32 len][u32 crc32][MessagePack
//! ProbeResult]`, appended and synced; and `ledger` (next seq, highest acked seq), replaced
//! atomically (write, fsync, rename, fsync dir). Order matters on ack: first the ledger that no
//! longer needs a segment is made durable, then the segment is deleted — the other order can
//! leave a ledger pointing at results that are gone.
//!
//! Recovery never fails and never hangs: a torn tail or a corrupt record is skipped and counted.
//! The spool is bounded: when full, the oldest segment goes (even unacked) and the number of
//! results dropped is carried to the collector in the next batch.
//!
//! A full disk is survived, not just reported: appends stop [`SPACE_RESERVE`] short of the
//! filesystem's end (so the ledger can still be rewritten and an ack can still free space), a
//! write that fails half-way is cut back so the segment stays readable, results that could not be
//! written are counted and reported like evicted ones (`dropped_before` of the batch that starts
//! right after them), and while appends fail even the active segment is deleted once acked.
//!
//! A loss the spool finds on its own is reported the same way: at open, a record that fails its
//! checksum, a segment cut short or gone, or a ledger that numbered further than the records
//! that are left, each leaves a gap in the numbering; the gap is counted ([`Recovery::missing`])
//! and told with the first result after it, so the collector hears of it as of a disk-full loss.
//!
//! An agent that starts over keeps its numbering above what the collector holds. A spool created
//! empty (a rebuilt machine, a new `spool.dir`, a lost disk) says so in the hello
//! ([`Spool::numbering`]) until a collector has welcomed it; when the welcome's high-water mark
//! is above where the spool stands ([`egresswatch_wire::message::numbering_continues_above`]),
//! [`Spool::continue_above`] renumbers every unacked result to follow the mark, in one ledger
//! write: records keep the numbers they were written with and a shift in the ledger
//! ([`Shift`]) says how they are read. Without it the agent would send nothing until its own
//! numbering passed the mark, and the cumulative ack would then delete all of that unsent.
//!
//! Reading back is from memory in the steady state: the newest unacked results written by this
//! process are also kept in a small ring ([`RECENT_RESULTS`]), so sending a batch does not re-read
//! and decode the whole active segment (acked records included) each time. Only a backlog older
//! than the ring (after a restart, or a long partition) is read from disk.

use crate::error::AgentError;
use egresswatch_wire::ProbeResult;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// A segment is closed and a new one begun past this size (smaller for small spools, so the
/// cap can drop old results in steps much finer than the whole spool).
const SEGMENT_BYTES: u64 = 1024 * 1024;
const MIN_SEGMENT_BYTES: u64 = 8 * 1024;
/// Largest record accepted when reading back (a result is far smaller).
const MAX_RECORD_BYTES: u32 = 64 * 1024;
const LEDGER: &str = "ledger";
/// Unacked results kept in memory besides the disk, newest last: several batches' worth at any
/// steady rate, a few hundred KiB at most.
pub const RECENT_RESULTS: usize = 1024;
/// Free space appends leave on the spool's filesystem. Without it a spool that filled the disk
/// to the last byte could not rewrite its ledger, so it could never record the ack that would
/// empty it.
pub const SPACE_RESERVE: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Ledger {
    pub next_seq: u64,
    pub acked_seq: u64,
}

/// Records written with a sequence number below `below` are read as that number plus `by`
/// (a renumbering by [`Spool::continue_above`]; later ones add up).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Shift {
    pub below: u64,
    pub by: u64,
}

/// The ledger file: [`Ledger`], whether a collector has welcomed this numbering, and the
/// renumberings still in effect. A ledger written before these existed reads as welcomed and
/// unshifted, which is what it was.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct LedgerFile {
    next_seq: u64,
    acked_seq: u64,
    #[serde(default = "welcomed_by_default")]
    welcomed: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    shifts: Vec<Shift>,
}

fn welcomed_by_default() -> bool {
    true
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// The number its first record was written with (its name).
    written_first: u64,
    first_seq: u64,
    last_seq: u64,
    bytes: u64,
}

/// What recovery found, for the log.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Recovery {
    pub records: u64,
    pub corrupt: u64,
    pub torn_bytes: u64,
    /// Unacked results found missing (unreadable, cut short, evicted or gone): told to the
    /// collector as dropped before the result that follows them.
    pub missing: u64,
}

/// What [`Spool::continue_above`] did: the unacked results it renumbered, and the number the
/// first of them (or the next result written, if none waited) now carries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Renumbered {
    pub results: u64,
    pub first_seq: u64,
    pub by: u64,
}

/// Tells one opening of a spool from another in this process.
static OPENINGS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub struct Spool {
    /// This opening's number: a hello's account of the spool holds for the welcome only if the
    /// spool was not opened anew in between.
    opening: u64,
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    ledger: Ledger,
    /// A collector has welcomed this numbering (false for a spool created empty, until then).
    welcomed: bool,
    shifts: Vec<Shift>,
    segments: Vec<Segment>,
    active: Option<File>,
    /// Results lost just before a sequence number (evicted by the cap, or never written because
    /// the disk was full), told to the collector with the batch that starts there until acked.
    drop_notes: BTreeMap<u64, u64>,
    /// Results refused since the last good append; noted at the next sequence number written.
    refused_since_last_append: u64,
    /// The last append failed: free space wherever an ack allows, the active segment included.
    appends_failing: bool,
    /// The newest results written by this process and not yet acked or evicted, consecutive.
    recent: std::collections::VecDeque<ProbeResult>,
    pub recovery: Recovery,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let context = context.into();
    move |e| AgentError::io(context, e)
}

fn segment_name(first_seq: u64) -> String {
    format!("seg-{first_seq:020}.log")
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, recovering what a crash left.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, AgentError> {
        fs::create_dir_all(dir).map_err(io(format!("creating spool {}", dir.display())))?;
        let found = read_ledger(dir);
        let mut names: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(io(format!("reading spool {}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("seg-") && n.ends_with(".log"))
            })
            .collect();
        names.sort();
        // Without a ledger the numbering is new only if nothing was ever written here; segments
        // without a ledger (it was lost) number from what they hold.
        let welcomed = found
            .as_ref()
            .map_or(!names.is_empty(), |ledger| ledger.welcomed);
        let (ledger, shifts) = found.map_or((Ledger::default(), Vec::new()), |l| {
            (
                Ledger {
                    next_seq: l.next_seq,
                    acked_seq: l.acked_seq,
                },
                l.shifts,
            )
        });
        let mut spool = Spool {
            opening: OPENINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(MIN_SEGMENT_BYTES, SEGMENT_BYTES),
            ledger,
            welcomed,
            shifts,
            segments: Vec::new(),
            active: None,
            drop_notes: BTreeMap::new(),
            refused_since_last_append: 0,
            appends_failing: false,
            recent: std::collections::VecDeque::new(),
            recovery: Recovery::default(),
        };
        let count = names.len();
        // The numbering is checked as the records are read: each result up from the first
        // unacked one should be there; what is not is noted before the next one that is.
        let acked = spool.ledger.acked_seq;
        let mut expected = acked + 1;
        let mut gaps: BTreeMap<u64, u64> = BTreeMap::new();
        let mut note_gap_before = |seq: u64, expected: &mut u64| {
            if seq > *expected {
                *gaps.entry(seq).or_default() += seq - *expected;
            }
            *expected = (*expected).max(seq + 1);
        };
        let mut claimed_up_to = 0;
        for (i, path) in names.into_iter().enumerate() {
            let last = i + 1 == count;
            let written_first = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("seg-")?.strip_suffix(".log")?.parse().ok());
            let shifts = spool.shifts.clone();
            let Scan {
                seqs: records,
                good_bytes,
                corrupt,
                trailing_corrupt,
                total,
            } = scan(&path, |seq| shifted(&shifts, seq), |_| {});
            spool.recovery.records += records.len() as u64;
            spool.recovery.corrupt += corrupt;
            // A gap is noted before the next good record: a note must travel with a result.
            for &seq in records.iter().filter(|&&seq| seq > acked) {
                note_gap_before(seq, &mut expected);
            }
            // Unreadable records after the last good one of the newest segment still took
            // their numbers, which are not given out again.
            if last {
                claimed_up_to = match (records.last(), written_first) {
                    (Some(&newest), _) => newest + trailing_corrupt,
                    // Nothing readable: its records were numbered from its name on.
                    (None, Some(first)) => {
                        (shifted(&shifts, first) + trailing_corrupt).saturating_sub(1)
                    }
                    (None, None) => 0,
                };
            }
            if last && good_bytes < total {
                // A torn tail from a crash mid-write: cut it so appends continue cleanly.
                spool.recovery.torn_bytes += total - good_bytes;
                if let Ok(f) = OpenOptions::new().write(true).open(&path) {
                    let _ = f.set_len(good_bytes);
                    let _ = f.sync_all();
                }
            }
            match (records.first(), records.last()) {
                (Some(first), Some(last_seq)) => spool.segments.push(Segment {
                    path,
                    written_first: written_first.unwrap_or(*first),
                    first_seq: *first,
                    last_seq: *last_seq,
                    bytes: good_bytes,
                }),
                _ => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        let highest = spool.segments.last().map(|s| s.last_seq).unwrap_or(0);
        spool.ledger.next_seq = spool
            .ledger
            .next_seq
            .max(highest + 1)
            .max(claimed_up_to + 1)
            .max(1);
        // Numbers given out and not found: lost at the end, noted before the next result.
        note_gap_before(spool.ledger.next_seq, &mut expected);
        spool.recovery.missing = gaps.values().sum();
        spool.drop_notes = gaps;
        spool.write_ledger()?;
        spool.forget_acked()?;
        Ok(spool)
    }

    pub fn ledger(&self) -> Ledger {
        self.ledger
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Which opening of a spool in this process this is.
    pub fn opening(&self) -> u64 {
        self.opening
    }

    /// Bytes on disk in segments.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Changes the cap (a config reload); it is enforced from the next append on.
    pub fn set_max_bytes(&mut self, max_bytes: u64) {
        self.max_bytes = max_bytes;
    }

    /// Numbers and writes one result durably; returns its sequence number. A result that cannot
    /// be written (disk full, I/O error) takes no sequence number: it is counted, and the count
    /// travels with the next result that is written.
    pub fn append(&mut self, mut result: ProbeResult) -> Result<u64, AgentError> {
        let seq = self.ledger.next_seq;
        result.seq = seq;
        let body = rmp_serde::to_vec(&result).map_err(|e| AgentError::Io {
            context: "encoding a result".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let mut record = Vec::with_capacity(body.len() + 8);
        record.extend_from_slice(&(body.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        record.extend_from_slice(&body);
        if let Err(e) = self
            .check_dir()
            .and_then(|()| self.check_room(record.len() as u64))
            .and_then(|()| self.write_record(seq, &record))
        {
            self.refused_since_last_append += 1;
            self.appends_failing = true;
            return Err(e);
        }
        if self.recent.back().is_some_and(|r| r.seq + 1 != seq) {
            self.recent.clear();
        }
        if self.recent.len() >= RECENT_RESULTS {
            self.recent.pop_front();
        }
        self.recent.push_back(result);
        if self.refused_since_last_append > 0 {
            *self.drop_notes.entry(seq).or_default() +=
                std::mem::take(&mut self.refused_since_last_append);
        }
        self.appends_failing = false;
        self.ledger.next_seq = seq + 1;
        self.enforce_cap()?;
        Ok(seq)
    }

    /// Refuses a write into a directory that is gone (an open segment would take it, into a
    /// file nobody can read again).
    fn check_dir(&self) -> Result<(), AgentError> {
        if self.dir.is_dir() {
            return Ok(());
        }
        Err(AgentError::io(
            format!("spool {}", self.dir.display()),
            std::io::Error::new(std::io::ErrorKind::NotFound, "the directory is gone"),
        ))
    }

    /// Refuses a write that would eat into [`SPACE_RESERVE`].
    fn check_room(&self, record_bytes: u64) -> Result<(), AgentError> {
        match free_bytes(&self.dir) {
            Some(free) if free < SPACE_RESERVE + record_bytes => {
                Err(AgentError::SpoolFull(format!(
                    "{free} bytes free on the filesystem of {}, {SPACE_RESERVE} kept in reserve",
                    self.dir.display()
                )))
            }
            _ => Ok(()),
        }
    }

    /// Appends one framed record to the active segment (a new one when due) and syncs it. On
    /// failure nothing of the record is left behind: a torn record in the middle of a segment
    /// would misframe every record after it.
    fn write_record(&mut self, seq: u64, record: &[u8]) -> Result<(), AgentError> {
        let rotate = match self.segments.last() {
            None => true,
            Some(s) => s.bytes + record.len() as u64 > self.segment_bytes || self.active.is_none(),
        };
        if rotate {
            let path = self.dir.join(segment_name(seq));
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io(format!("creating {}", path.display())))?;
            sync_dir(&self.dir);
            self.segments.push(Segment {
                path,
                written_first: seq,
                first_seq: seq,
                last_seq: seq,
                bytes: 0,
            });
            self.active = Some(file);
        }
        let file = self
            .active
            .as_mut()
            .ok_or_else(|| AgentError::io("spool", std::io::Error::other("no active segment")))?;
        if let Err(e) = file.write_all(record).and_then(|()| file.sync_data()) {
            self.cut_failed_write();
            return Err(AgentError::io("writing the spool", e));
        }
        if let Some(seg) = self.segments.last_mut() {
            seg.last_seq = seq;
            seg.bytes += record.len() as u64;
        }
        Ok(())
    }

    /// Cuts the active segment back to its last whole record after a failed write. If even that
    /// fails, the segment is closed as it is (recovery reads up to the torn tail) and the next
    /// append starts a new one.
    fn cut_failed_write(&mut self) {
        let Some(seg) = self.segments.last() else {
            return;
        };
        let cut = self
            .active
            .as_ref()
            .is_some_and(|f| f.set_len(seg.bytes).is_ok());
        if cut {
            return;
        }
        self.active = None;
        if seg.bytes == 0 {
            // Nothing good in it, and its name is the one the next segment will want.
            let _ = fs::remove_file(&seg.path);
            self.segments.pop();
        }
    }

    /// Results not yet acked, from `from_seq` on, at most `max`, consecutive (a batch needs
    /// consecutive numbers). Also returns how many results were lost just before the first of
    /// them; a batch ends before a result that has its own such count, so each count is told
    /// with the result it precedes (and told again if that batch is resent).
    pub fn unacked(&self, from_seq: u64, max: usize) -> (Vec<ProbeResult>, u64) {
        let from = from_seq.max(self.ledger.acked_seq + 1);
        let notes = &self.drop_notes;
        if from >= self.ledger.next_seq || max == 0 {
            return (Vec::new(), 0);
        }
        if let Some(first) = self.recent.front().map(|r| r.seq).filter(|&f| f <= from) {
            let mut out: Vec<ProbeResult> = Vec::new();
            for r in self.recent.iter().skip((from - first) as usize).take(max) {
                if !out.is_empty() && notes.contains_key(&r.seq) {
                    break;
                }
                out.push(r.clone());
            }
            let dropped = out
                .first()
                .and_then(|r| notes.get(&r.seq))
                .copied()
                .unwrap_or(0);
            return (out, dropped);
        }
        let mut out: Vec<ProbeResult> = Vec::new();
        let mut complete = false;
        let shifts = &self.shifts;
        for seg in self.segments.iter().filter(|s| s.last_seq >= from) {
            scan(
                &seg.path,
                |seq| shifted(shifts, seq),
                |r: &ProbeResult| {
                    if complete || out.len() >= max || r.seq < from {
                        return;
                    }
                    if !out.is_empty() && notes.contains_key(&r.seq) {
                        complete = true;
                        return;
                    }
                    let consecutive = out.last().is_none_or(|last| r.seq == last.seq + 1);
                    if consecutive {
                        out.push(r.clone());
                    }
                },
            );
            if complete || out.len() >= max {
                break;
            }
        }
        let dropped = out
            .first()
            .and_then(|r| notes.get(&r.seq))
            .copied()
            .unwrap_or(0);
        (out, dropped)
    }

    /// Results refused (disk full) and not yet noted against a written result.
    pub fn refused_pending(&self) -> u64 {
        self.refused_since_last_append
    }

    /// Counts `results` that were never offered to this spool (it could not be opened): they
    /// are told with the next result written, as refused ones are.
    pub fn note_not_kept(&mut self, results: u64) {
        self.refused_since_last_append += results;
    }

    /// What the hello says of this spool: the number it writes next, and whether no collector
    /// has welcomed its numbering yet.
    pub fn numbering(&self) -> (u64, bool) {
        (self.ledger.next_seq, !self.welcomed)
    }

    /// The collector's welcome: it holds this agent's results up to `high_water`. `said` is
    /// what the hello told it ([`Spool::numbering`] then), so both sides decide alike. When the
    /// numbering must continue above the mark, every unacked result (and every note) moves up to
    /// follow it, made durable in one ledger write before anything else changes; the spool is
    /// then welcomed. Returns what moved, if anything did.
    pub fn continue_above(
        &mut self,
        said: (u64, bool),
        high_water: u64,
    ) -> Result<Option<Renumbered>, AgentError> {
        let (said_next, said_new) = said;
        let by = high_water.saturating_sub(self.ledger.acked_seq);
        if !egresswatch_wire::message::numbering_continues_above(said_next, said_new, high_water)
            || by == 0
        {
            if !self.welcomed {
                self.welcomed = true;
                if let Err(e) = self.write_ledger() {
                    self.welcomed = false;
                    return Err(e);
                }
            }
            return Ok(None);
        }
        let waiting = self.ledger.next_seq - self.ledger.acked_seq - 1;
        let mut shifts = self.shifts.clone();
        shifts.push(Shift {
            below: self.ledger.next_seq,
            by,
        });
        let ledger = Ledger {
            next_seq: self.ledger.next_seq + by,
            acked_seq: high_water,
        };
        self.store_ledger(ledger, true, &shifts)?;
        self.ledger = ledger;
        self.welcomed = true;
        self.shifts = shifts;
        for seg in &mut self.segments {
            seg.first_seq += by;
            seg.last_seq += by;
        }
        for r in &mut self.recent {
            r.seq += by;
        }
        self.drop_notes = std::mem::take(&mut self.drop_notes)
            .into_iter()
            .map(|(seq, n)| (seq + by, n))
            .collect();
        Ok(Some(Renumbered {
            results: waiting,
            first_seq: high_water + 1,
            by,
        }))
    }

    /// Records the collector's cumulative ack: ledger first (durably), then delete what it
    /// no longer needs.
    pub fn ack(&mut self, up_to_seq: u64) -> Result<(), AgentError> {
        if up_to_seq <= self.ledger.acked_seq {
            return Ok(());
        }
        self.ledger.acked_seq = up_to_seq
            .min(self.ledger.next_seq.saturating_sub(1))
            .max(self.ledger.acked_seq);
        self.write_ledger()?;
        let acked = self.ledger.acked_seq;
        self.drop_notes.retain(|&seq, _| seq > acked);
        while self.recent.front().is_some_and(|r| r.seq <= acked) {
            self.recent.pop_front();
        }
        self.forget_acked()
    }

    /// Deletes segments every result of which is acked; the active one only while appends fail
    /// (the space is needed more than the file), since the next append must then open a new one.
    fn forget_acked(&mut self) -> Result<(), AgentError> {
        let acked = self.ledger.acked_seq;
        let keep_active = !self.appends_failing;
        let active_first = self.segments.last().map(|s| s.first_seq);
        let (gone, kept): (Vec<Segment>, Vec<Segment>) = self.segments.drain(..).partition(|s| {
            s.last_seq <= acked && (!keep_active || Some(s.first_seq) != active_first)
        });
        if !keep_active && kept.is_empty() && !gone.is_empty() {
            self.active = None;
        }
        self.segments = kept;
        for seg in gone {
            fs::remove_file(&seg.path).map_err(io(format!("removing {}", seg.path.display())))?;
        }
        Ok(())
    }

    fn enforce_cap(&mut self) -> Result<(), AgentError> {
        while self.bytes() > self.max_bytes && self.segments.len() > 1 {
            let oldest = self.segments.remove(0);
            let lost = oldest
                .last_seq
                .saturating_sub(oldest.first_seq.max(self.ledger.acked_seq + 1))
                + 1;
            // Notes inside the evicted segment move to the first result after it.
            let mut carried: u64 = self
                .drop_notes
                .range(..=oldest.last_seq)
                .map(|(_, n)| *n)
                .sum();
            self.drop_notes.retain(|&seq, _| seq > oldest.last_seq);
            if oldest.last_seq > self.ledger.acked_seq {
                carried += lost;
                tracing::warn!(
                    dropped = lost,
                    "spool full: dropped the oldest unacked results"
                );
            }
            if carried > 0 {
                *self.drop_notes.entry(oldest.last_seq + 1).or_default() += carried;
            }
            while self
                .recent
                .front()
                .is_some_and(|r| r.seq <= oldest.last_seq)
            {
                self.recent.pop_front();
            }
            fs::remove_file(&oldest.path)
                .map_err(io(format!("removing {}", oldest.path.display())))?;
        }
        Ok(())
    }

    fn write_ledger(&mut self) -> Result<(), AgentError> {
        // A shift no segment was written under any more is done with.
        let oldest_written = self.segments.first().map(|s| s.written_first);
        self.shifts
            .retain(|shift| oldest_written.is_some_and(|w| w < shift.below));
        self.store_ledger(self.ledger, self.welcomed, &self.shifts)
    }

    fn store_ledger(
        &self,
        ledger: Ledger,
        welcomed: bool,
        shifts: &[Shift],
    ) -> Result<(), AgentError> {
        let tmp = self.dir.join("ledger.tmp");
        let file = LedgerFile {
            next_seq: ledger.next_seq,
            acked_seq: ledger.acked_seq,
            welcomed,
            shifts: shifts.to_vec(),
        };
        let text = serde_json::to_vec(&file).map_err(|e| {
            AgentError::io("encoding the ledger", std::io::Error::other(e.to_string()))
        })?;
        let mut f = File::create(&tmp).map_err(io(format!("writing {}", tmp.display())))?;
        f.write_all(&text)
            .and_then(|()| f.sync_all())
            .map_err(io(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, self.dir.join(LEDGER)).map_err(io("replacing the ledger"))?;
        sync_dir(&self.dir);
        Ok(())
    }
}

/// Bytes an unprivileged writer may still use on the filesystem holding `dir`; `None` when the
/// filesystem cannot say (then only a failing write tells).
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes only into the zeroed struct we own; `path` is a valid C string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn read_ledger(dir: &Path) -> Option<LedgerFile> {
    fs::read(dir.join(LEDGER))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// The number a record written as `written` is read as, after the renumberings `shifts`.
fn shifted(shifts: &[Shift], written: u64) -> u64 {
    shifts
        .iter()
        .filter(|s| written < s.below)
        .fold(written, |seq, s| seq + s.by)
}

/// What [`scan`] read of a segment.
#[derive(Debug, Default)]
struct Scan {
    /// The good records' numbers, as read (shifted).
    seqs: Vec<u64>,
    /// Bytes up to the last whole record, good or not.
    good_bytes: u64,
    corrupt: u64,
    /// Corrupt records after the last good one.
    trailing_corrupt: u64,
    total: u64,
}

/// Reads a segment's good records, each numbered through `number` (the ledger's shifts). A bad
/// length ends the scan (nothing after it can be framed); a bad checksum skips that one record.
fn scan(path: &Path, number: impl Fn(u64) -> u64, mut each: impl FnMut(&ProbeResult)) -> Scan {
    let mut bytes = Vec::new();
    if File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .is_err()
    {
        return Scan::default();
    }
    let total = bytes.len() as u64;
    let mut seqs = Vec::new();
    let mut corrupt = 0;
    let mut trailing_corrupt = 0;
    let mut offset = 0usize;
    let mut good_end = 0u64;
    while offset + 8 <= bytes.len() {
        let len = u32::from_le_bytes([
            bytes[offset],
            bytes[offset + 1],
            bytes[offset + 2],
            bytes[offset + 3],
        ]);
        let crc = u32::from_le_bytes([
            bytes[offset + 4],
            bytes[offset + 5],
            bytes[offset + 6],
            bytes[offset + 7],
        ]);
        if len == 0 || len > MAX_RECORD_BYTES || offset + 8 + len as usize > bytes.len() {
            break;
        }
        let body = &bytes[offset + 8..offset + 8 + len as usize];
        offset += 8 + len as usize;
        match (crc32fast::hash(body) == crc)
            .then(|| rmp_serde::from_slice::<ProbeResult>(body).ok())
            .flatten()
        {
            Some(mut result) => {
                result.seq = number(result.seq);
                seqs.push(result.seq);
                each(&result);
                good_end = offset as u64;
                trailing_corrupt = 0;
            }
            None => {
                corrupt += 1;
                trailing_corrupt += 1;
                good_end = offset as u64;
            }
        }
    }
    Scan {
        seqs,
        good_bytes: good_end,
        corrupt,
        trailing_corrupt,
        total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egresswatch_wire::{Family, Outcome};

    fn result(port: u16) -> ProbeResult {
        ProbeResult {
            target: "mx".into(),
            port,
            family: Family::Ipv4,
            outcome: Outcome::Ok,
            at_unix_ms: 1,
            ..Default::default()
        }
    }

    #[test]
    fn append_ack_and_continue_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
            for i in 0..10 {
                assert_eq!(s.append(result(25 + i)).unwrap(), u64::from(i) + 1);
            }
            let (batch, dropped) = s.unacked(1, 4);
            assert_eq!(
                batch.iter().map(|r| r.seq).collect::<Vec<_>>(),
                vec![1, 2, 3, 4]
            );
            assert_eq!(dropped, 0);
            s.ack(4).unwrap();
        }
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            s.ledger(),
            Ledger {
                next_seq: 11,
                acked_seq: 4
            }
        );
        let (batch, _) = s.unacked(0, 100);
        assert_eq!(batch.first().map(|r| r.seq), Some(5));
        assert_eq!(batch.len(), 6);
        assert_eq!(s.append(result(587)).unwrap(), 11);
    }

    #[test]
    fn reading_from_memory_gives_what_the_disk_gives() {
        let dir = tempfile::tempdir().unwrap();
        // A small cap, so the oldest segments are evicted and drop notes appear.
        let mut s = Spool::open(dir.path(), 64 * 1024).unwrap();
        for i in 0..3000u32 {
            s.append(result(25 + (i % 7) as u16)).unwrap();
        }
        s.ack(2990).unwrap();
        s.append(result(25)).unwrap();
        let first_kept = s.segments.first().unwrap().first_seq;
        assert!(first_kept > 1, "something was evicted");
        let from_disk = Spool::open(dir.path(), 64 * 1024).unwrap();
        assert!(from_disk.recent.is_empty());
        for from in [0, 1, first_kept, 2985, 2991, 2995, 3001, 3002] {
            for max in [1, 3, 500] {
                assert_eq!(
                    s.unacked(from, max),
                    from_disk.unacked(from, max),
                    "from {from}, max {max}"
                );
            }
        }
        assert_eq!(s.unacked(2991, 500).0.len(), 11);
        assert!(s.unacked(3002, 500).0.is_empty());
    }

    #[test]
    fn torn_tail_and_corrupt_records_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let seg;
        {
            let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
            for _ in 0..5 {
                s.append(result(25)).unwrap();
            }
            seg = s.segments[0].path.clone();
        }
        // Flip a byte inside the second record's body, and leave half a record at the end.
        let mut bytes = fs::read(&seg).unwrap();
        let first_len = u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
        bytes[8 + first_len + 8 + 2] ^= 0xff;
        bytes.extend_from_slice(&[40, 0, 0, 0, 1, 2]);
        fs::write(&seg, &bytes).unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.recovery.corrupt, 1);
        assert_eq!(s.recovery.torn_bytes, 6);
        assert_eq!(s.recovery.records, 4);
        // Appends go on after the cut tail, and are read back.
        assert_eq!(s.append(result(465)).unwrap(), 6);
        let (batch, _) = s.unacked(3, 100);
        assert_eq!(
            batch.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![3, 4, 5, 6]
        );
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_says_how_many() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 64 * 1024).unwrap();
        // Big details make segments fill fast.
        let mut big = result(25);
        big.detail = "x".repeat(400);
        for _ in 0..8000 {
            s.append(big.clone()).unwrap();
        }
        assert!(s.bytes() <= 64 * 1024 + s.segment_bytes);
        let (batch, dropped) = s.unacked(1, 10);
        assert!(dropped > 0);
        assert_eq!(
            batch[0].seq,
            dropped + 1,
            "the batch starts right after what was dropped"
        );
    }

    #[test]
    fn results_refused_for_space_are_told_with_the_next_written_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for _ in 0..3 {
            s.append(result(25)).unwrap();
        }
        // As after three appends refused for want of space.
        s.refused_since_last_append = 3;
        s.appends_failing = true;
        assert_eq!(
            s.append(result(587)).unwrap(),
            4,
            "refused results take no seq"
        );
        s.append(result(587)).unwrap();
        let (batch, dropped) = s.unacked(1, 100);
        assert_eq!(
            (batch.iter().map(|r| r.seq).collect::<Vec<_>>(), dropped),
            (vec![1, 2, 3], 0),
            "a batch ends before the result that carries a count"
        );
        let (batch, dropped) = s.unacked(4, 100);
        assert_eq!(
            (batch.iter().map(|r| r.seq).collect::<Vec<_>>(), dropped),
            (vec![4, 5], 3)
        );
        s.ack(5).unwrap();
        assert!(s.drop_notes.is_empty(), "an acked count is forgotten");
    }

    #[test]
    fn a_write_that_failed_half_way_leaves_no_torn_record_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.append(result(25)).unwrap();
        s.append(result(465)).unwrap();
        // As if the disk filled in the middle of the next record.
        s.active
            .as_mut()
            .unwrap()
            .write_all(&[60, 0, 0, 0, 9, 9, 9, 9, 1, 2, 3])
            .unwrap();
        s.cut_failed_write();
        assert_eq!(s.append(result(587)).unwrap(), 3);
        let (batch, _) = s.unacked(1, 100);
        assert_eq!(
            batch.iter().map(|r| r.port).collect::<Vec<_>>(),
            vec![25, 465, 587],
            "the record after the failed write is read back"
        );
        drop(s);
        let s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            (
                s.recovery.records,
                s.recovery.corrupt,
                s.recovery.torn_bytes
            ),
            (3, 0, 0)
        );
    }

    #[test]
    fn while_appends_fail_an_ack_frees_the_active_segment_too() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for _ in 0..5 {
            s.append(result(25)).unwrap();
        }
        s.ack(5).unwrap();
        assert_eq!(s.segments.len(), 1, "normally the active segment stays");
        s.append(result(25)).unwrap();
        s.appends_failing = true;
        s.ack(6).unwrap();
        assert!(s.segments.is_empty(), "the acked active segment went");
        let files = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("seg-"))
            })
            .count();
        assert_eq!(files, 0);
        assert_eq!(s.append(result(25)).unwrap(), 7, "numbering goes on");
        drop(s);
        let s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.ledger().next_seq, 8, "and survives a restart");
    }

    #[test]
    fn acked_segments_are_deleted_after_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 64 << 20).unwrap();
        let mut big = result(25);
        big.detail = "y".repeat(400);
        for _ in 0..6000 {
            s.append(big.clone()).unwrap();
        }
        let segments_before = s.segments.len();
        assert!(segments_before >= 2);
        s.ack(5999).unwrap();
        assert_eq!(s.segments.len(), 1, "only the active segment stays");
        assert_eq!(read_ledger(dir.path()).map(|l| l.acked_seq), Some(5999));
    }

    fn seqs(batch: &[ProbeResult]) -> Vec<u64> {
        batch.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn a_new_spool_behind_the_collectors_mark_continues_above_it_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.numbering(), (1, true), "a spool created empty is new");
        for port in 1..=5 {
            s.append(result(port)).unwrap();
        }
        // As the hello said it; two more are written before the welcome comes.
        let said = s.numbering();
        s.append(result(6)).unwrap();
        s.append(result(7)).unwrap();
        let moved = s.continue_above(said, 2524).unwrap();
        assert_eq!(
            moved,
            Some(Renumbered {
                results: 7,
                first_seq: 2525,
                by: 2524
            })
        );
        assert_eq!(
            s.ledger(),
            Ledger {
                next_seq: 2532,
                acked_seq: 2524
            }
        );
        // The welcome's mark as an ack now deletes nothing.
        s.ack(2524).unwrap();
        let (batch, dropped) = s.unacked(2525, 100);
        assert_eq!(seqs(&batch), (2525..=2531).collect::<Vec<_>>());
        assert_eq!(
            batch.iter().map(|r| r.port).collect::<Vec<_>>(),
            (1..=7).collect::<Vec<_>>()
        );
        assert_eq!(dropped, 0);
        assert_eq!(s.append(result(8)).unwrap(), 2532);
        assert_eq!(s.numbering(), (2533, false), "welcomed");
        // Once welcomed, the same mark changes nothing.
        assert_eq!(s.continue_above(s.numbering(), 2524).unwrap(), None);
        // From disk, after a restart, the same numbers.
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.numbering(), (2533, false));
        let (batch, _) = s.unacked(0, 100);
        assert_eq!(seqs(&batch), (2525..=2532).collect::<Vec<_>>());
        assert_eq!(batch[0].port, 1);
        // Once the segments written before it are gone, the shift goes too.
        s.append(result(9)).unwrap();
        s.appends_failing = true;
        s.ack(2533).unwrap();
        assert!(s.segments.is_empty());
        s.append(result(10)).unwrap();
        s.ack(2534).unwrap();
        assert!(s.shifts.is_empty(), "{:?}", s.shifts);
        assert_eq!(read_ledger(dir.path()).map(|l| l.shifts), Some(vec![]));
    }

    #[test]
    fn a_new_spool_that_numbered_past_the_mark_offline_still_moves_above_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for port in 1..=30 {
            s.append(result(port)).unwrap();
        }
        // The collector holds 1..=20 from this certificate's earlier life: none of these.
        let moved = s.continue_above(s.numbering(), 20).unwrap().unwrap();
        assert_eq!((moved.results, moved.first_seq), (30, 21));
        s.ack(20).unwrap();
        let (batch, _) = s.unacked(21, 100);
        assert_eq!(seqs(&batch), (21..=50).collect::<Vec<_>>());
        assert_eq!(batch[0].port, 1, "the first result measured goes first");
    }

    #[test]
    fn an_old_spool_behind_the_mark_moves_above_it_and_a_brand_new_agent_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.append(result(25)).unwrap();
        assert_eq!(s.continue_above(s.numbering(), 0).unwrap(), None);
        assert_eq!(s.numbering(), (2, false), "welcomed by an empty store");
        s.append(result(26)).unwrap();
        s.ack(1).unwrap();
        // A stale spool put back: the store holds more than it ever numbered.
        let moved = s.continue_above(s.numbering(), 100).unwrap().unwrap();
        assert_eq!((moved.results, moved.first_seq, moved.by), (1, 101, 99));
        let (batch, _) = s.unacked(0, 10);
        assert_eq!(seqs(&batch), vec![101]);
        assert_eq!(batch[0].port, 26);
        // Notes move with their results.
        s.note_not_kept(2);
        s.append(result(27)).unwrap();
        assert_eq!(s.unacked(102, 10).1, 2);
    }

    #[test]
    fn a_spool_renumbered_twice_reads_each_record_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for port in 1..=3 {
            s.append(result(port)).unwrap();
        }
        s.continue_above(s.numbering(), 10).unwrap().unwrap();
        for port in 4..=5 {
            s.append(result(port)).unwrap();
        }
        s.continue_above(s.numbering(), 100).unwrap().unwrap();
        s.append(result(6)).unwrap();
        drop(s);
        let s = Spool::open(dir.path(), 1 << 20).unwrap();
        let (batch, dropped) = s.unacked(0, 100);
        assert_eq!(seqs(&batch), (101..=106).collect::<Vec<_>>());
        assert_eq!(
            batch.iter().map(|r| r.port).collect::<Vec<_>>(),
            (1..=6).collect::<Vec<_>>()
        );
        assert_eq!((dropped, s.recovery.missing), (0, 0));
    }

    #[test]
    fn a_corrupt_record_is_a_gap_told_with_the_result_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let seg;
        {
            let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
            for _ in 0..5 {
                s.append(result(25)).unwrap();
            }
            s.ack(1).unwrap();
            seg = s.segments[0].path.clone();
        }
        // The third record (seq 3) fails its checksum.
        let mut bytes = fs::read(&seg).unwrap();
        let mut offset = 0;
        for _ in 0..2 {
            offset +=
                8 + u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        }
        bytes[offset + 8 + 1] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();
        let s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!((s.recovery.corrupt, s.recovery.missing), (1, 1));
        let (batch, dropped) = s.unacked(2, 100);
        assert_eq!(
            (seqs(&batch), dropped),
            (vec![2], 0),
            "a batch ends before a gap"
        );
        let (batch, dropped) = s.unacked(3, 100);
        assert_eq!((seqs(&batch), dropped), (vec![4, 5], 1));
    }

    #[test]
    fn unreadable_and_vanished_records_at_the_end_are_told_with_the_next_result() {
        let dir = tempfile::tempdir().unwrap();
        let seg;
        {
            let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
            for _ in 0..4 {
                s.append(result(25)).unwrap();
            }
            seg = s.segments[0].path.clone();
        }
        // The last record fails its checksum: its number is not given out again.
        let mut bytes = fs::read(&seg).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.recovery.missing, 1);
        assert_eq!(s.append(result(587)).unwrap(), 5);
        let (batch, dropped) = s.unacked(4, 100);
        assert_eq!((seqs(&batch), dropped), (vec![5], 1));
        s.ack(2).unwrap();
        drop(s);

        // Every segment gone (deleted, a disk swapped under the directory): the ledger still
        // says how far the numbering went.
        for entry in fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.to_string_lossy().ends_with(".log") {
                fs::remove_file(path).unwrap();
            }
        }
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.recovery.missing, 3, "seqs 3, 4 (unreadable before) and 5");
        assert_eq!(s.append(result(25)).unwrap(), 6);
        assert_eq!(s.unacked(0, 100).1, 3);
    }

    #[test]
    fn a_vanished_directory_refuses_appends_instead_of_writing_into_the_void() {
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool");
        let mut s = Spool::open(&spool_dir, 1 << 20).unwrap();
        s.append(result(25)).unwrap();
        fs::remove_dir_all(&spool_dir).unwrap();
        assert!(s.append(result(25)).is_err());
        assert_eq!(s.refused_pending(), 1);
    }

    #[test]
    fn a_newest_segment_with_nothing_readable_is_still_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let newest;
        let written;
        {
            let mut s = Spool::open(dir.path(), 64 * 1024).unwrap();
            while s.segments.len() < 2 {
                s.append(result(25)).unwrap();
            }
            for _ in 0..4 {
                s.append(result(25)).unwrap();
            }
            written = s.ledger().next_seq - 1;
            newest = s.segments[1].path.clone();
        }
        // Every record of the newest segment fails its checksum; the ledger (written at open)
        // does not know how far the numbering went.
        let mut bytes = fs::read(&newest).unwrap();
        let mut offset = 0;
        let mut rotten = 0;
        while offset + 8 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
            bytes[offset + 8] ^= 0xff;
            offset += 8 + len;
            rotten += 1;
        }
        fs::write(&newest, &bytes).unwrap();
        let mut s = Spool::open(dir.path(), 64 * 1024).unwrap();
        assert_eq!(s.recovery.missing, rotten);
        assert_eq!(
            s.append(result(587)).unwrap(),
            written + 1,
            "no number reused"
        );
        assert_eq!(s.unacked(written + 1, 10).1, rotten);
    }
}
