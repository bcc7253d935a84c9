//! Batching with lsyncd's `delay` meaning: changes are collected for `delay` seconds from
//! the first one, then sent together; `0` sends at once; once `max_batch` changes are
//! queued the batch flushes early instead of growing without bound. A file still being
//! written (write events, no close yet) is held until it is closed or has been quiet for
//! `write_quiet`, so an upload in progress is never shipped half-written. The first half
//! of a rename holds the whole batch for up to [`RENAME_HOLD`] until its second half
//! arrives, so a move is shipped as one batch (and applied by peers as a rename).
//!
//! Time is passed in, so the rules are tested without sleeping.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::scan::Target;
use super::watch::HintKind;
use crate::protocol::RelPath;

/// How long the first half of a rename waits for the second (inotify delivers both at once;
/// a move out of the root never gets a second half).
pub const RENAME_HOLD: Duration = Duration::from_millis(50);

#[derive(Debug)]
struct Pending {
    first: Instant,
    last: Instant,
    writing: bool,
    /// The last content event was a close after writing (no write since).
    closed: bool,
    /// Data was written (a write or truncate event) since the path was last taken.
    wrote: bool,
    recursive: bool,
}

pub struct Batcher {
    delay: Duration,
    write_quiet: Duration,
    max_batch: usize,
    pending: HashMap<RelPath, Pending>,
    root_since: Option<Instant>,
    /// Set by the first half of a rename, cleared by the second half.
    rename_hold: Option<Instant>,
    /// Paths of the last batch taken whose last content event was a close (see `closed`).
    closed_taken: HashSet<RelPath>,
    /// Paths taken for the next scan that were written to (see `wrote`).
    written_taken: HashSet<RelPath>,
}

impl Batcher {
    pub fn new(delay: Duration, write_quiet: Duration, max_batch: usize) -> Batcher {
        Batcher { delay, write_quiet, max_batch, pending: HashMap::new(), root_since: None, rename_hold: None, closed_taken: HashSet::new(), written_taken: HashSet::new() }
    }

    pub fn set_delay(&mut self, delay: Duration) {
        self.delay = delay;
    }

    pub fn add(&mut self, path: RelPath, kind: HintKind, now: Instant) {
        let p = self.pending.entry(path).or_insert(Pending { first: now, last: now, writing: false, closed: false, wrote: false, recursive: false });
        p.last = now;
        match kind {
            HintKind::Writing => {
                p.writing = true;
                p.closed = false;
                p.wrote = true;
            }
            HintKind::Closed => {
                p.writing = false;
                p.closed = true;
            }
            HintKind::Changed => {}
            HintKind::Tree => {
                p.recursive = true;
                p.writing = false;
                p.closed = false;
            }
            HintKind::MovedFrom => self.rename_hold = Some(now + RENAME_HOLD),
            HintKind::MovedTo => {
                p.recursive = true;
                p.writing = false;
                p.closed = false;
                self.rename_hold = None;
            }
        }
    }

    /// Requests a scan of the whole root with the next batch.
    pub fn add_root(&mut self, now: Instant) {
        self.root_since.get_or_insert(now);
    }

    pub fn len(&self) -> usize {
        self.pending.len() + usize::from(self.root_since.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Paths waiting for a close or quiet period (uploads in progress).
    pub fn writing(&self) -> usize {
        self.pending.values().filter(|p| p.writing).count()
    }

    /// Whether the path is queued (its own events, not an ancestor's).
    pub fn holds(&self, path: &RelPath) -> bool {
        self.pending.contains_key(path)
    }

    pub fn is_writing(&self, path: &RelPath) -> bool {
        self.pending.get(path).is_some_and(|p| p.writing)
    }

    fn ready_at(&self, p: &Pending) -> Instant {
        let by_delay = p.first + self.delay;
        if p.writing { by_delay.max(p.last + self.write_quiet) } else { by_delay }
    }

    /// When the next batch is due, if anything is pending.
    pub fn deadline(&self) -> Option<Instant> {
        let paths = self.pending.values().map(|p| self.ready_at(p));
        let root = self.root_since.map(|t| t + self.delay);
        let due = paths.chain(root).min()?;
        Some(match self.rename_hold {
            Some(h) => due.max(h),
            None => due,
        })
    }

    /// Takes the batch if one is due at `now`: every path that is ready (not being written,
    /// or quiet long enough). Returns an empty list when nothing is due yet.
    pub fn take_due(&mut self, now: Instant) -> Vec<Target> {
        let ready_count = self.pending.values().filter(|p| !p.writing || p.last + self.write_quiet <= now).count();
        let due = self.deadline().is_some_and(|d| d <= now) || ready_count >= self.max_batch;
        if !due {
            return Vec::new();
        }
        self.rename_hold = None;
        let quiet = self.write_quiet;
        let mut out = Vec::new();
        if self.root_since.take().is_some() {
            out.push(Target::Root);
        }
        let taken: Vec<RelPath> = self.pending.iter().filter(|(_, p)| !p.writing || p.last + quiet <= now).map(|(k, _)| k.clone()).collect();
        self.closed_taken.clear();
        self.written_taken.clear();
        for k in taken {
            let p = self.pending.remove(&k).expect("BUG: key just listed");
            if p.closed {
                self.closed_taken.insert(k.clone());
            }
            if p.wrote {
                self.written_taken.insert(k.clone());
            }
            out.push(Target::Path { path: k, recursive: p.recursive });
        }
        out.sort();
        out
    }

    /// Whether `path`, in the batch just taken, was last closed after writing: its writer is
    /// done, so the scan need not look in /proc for one (`local_batch`). Answered for the
    /// batch most recently taken by `take_due` only, until `forget_closed`.
    pub fn was_closed(&self, path: &RelPath) -> bool {
        self.closed_taken.contains(path)
    }

    /// Whether `path`, taken for the scan about to run (by `take_due` or `take_path`), was
    /// written to since it was last scanned: its content is read again even if its size,
    /// mtime and inode are what the index holds (a write within the same clock tick, or
    /// followed by putting the mtime back, as `cp -p` or `tar` do, changes none of them).
    pub fn was_written(&self, path: &RelPath) -> bool {
        self.written_taken.contains(path)
    }

    /// The paths `was_written` answers yes for.
    pub fn written_taken(&self) -> impl Iterator<Item = &RelPath> {
        self.written_taken.iter()
    }

    /// After the scan: forgets what `was_closed` and `was_written` answered.
    pub fn forget_closed(&mut self) {
        self.closed_taken.clear();
        self.written_taken.clear();
    }

    /// Removes and returns a pending path so it can be scanned right now (before a remote
    /// version of it is applied). `None` if it is not pending or is still being written.
    pub fn take_path(&mut self, path: &RelPath) -> Option<Target> {
        match self.pending.get(path) {
            Some(p) if !p.writing => {
                let p = self.pending.remove(path).expect("BUG: present");
                if p.wrote {
                    self.written_taken.insert(path.clone());
                }
                Some(Target::Path { path: path.clone(), recursive: p.recursive })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    #[test]
    fn delay_zero_flushes_at_once() {
        let t0 = Instant::now();
        let mut b = Batcher::new(Duration::ZERO, Duration::from_secs(5), 1000);
        b.add(p("a"), HintKind::Closed, t0);
        assert_eq!(b.take_due(t0).len(), 1);
        assert!(b.is_empty());
    }

    #[test]
    fn a_path_written_to_is_read_again_by_the_next_scan_only() {
        let t0 = Instant::now();
        let mut b = Batcher::new(Duration::ZERO, Duration::from_secs(5), 1000);
        b.add(p("written"), HintKind::Writing, t0);
        b.add(p("written"), HintKind::Closed, t0);
        b.add(p("written"), HintKind::Changed, t0);
        b.add(p("touched"), HintKind::Changed, t0);
        b.add(p("closed"), HintKind::Closed, t0);
        assert_eq!(b.take_due(t0).len(), 3);
        assert!(b.was_written(&p("written")) && !b.was_written(&p("touched")) && !b.was_written(&p("closed")));
        b.forget_closed();
        assert!(!b.was_written(&p("written")));
        // Taken ahead of a peer's version of it (the prescan) counts too.
        b.add(p("x"), HintKind::Writing, t0);
        b.add(p("x"), HintKind::Closed, t0);
        assert!(b.take_path(&p("x")).is_some() && b.was_written(&p("x")));
    }

    #[test]
    fn delay_collects_from_first_change() {
        let t0 = Instant::now();
        let mut b = Batcher::new(Duration::from_secs(10), Duration::from_secs(5), 1000);
        b.add(p("a"), HintKind::Changed, t0);
        b.add(p("b"), HintKind::Changed, t0 + Duration::from_secs(9));
        assert!(b.take_due(t0 + Duration::from_secs(9)).is_empty());
        assert_eq!(b.deadline(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(b.take_due(t0 + Duration::from_secs(10)).len(), 2, "the later change rides along");
    }

    #[test]
    fn rename_halves_travel_in_one_batch() {
        let t0 = Instant::now();
        let mut b = Batcher::new(Duration::ZERO, Duration::from_secs(2), 1000);
        b.add(p("dir"), HintKind::MovedFrom, t0);
        assert!(b.take_due(t0).is_empty(), "the first half waits for the second");
        b.add(p("dir2"), HintKind::MovedTo, t0 + Duration::from_millis(1));
        let got = b.take_due(t0 + Duration::from_millis(1));
        assert_eq!(got.len(), 2, "{got:?}");
        // A move out of the root has no second half: it goes after the hold.
        b.add(p("gone"), HintKind::MovedFrom, t0);
        assert!(b.take_due(t0 + RENAME_HOLD - Duration::from_millis(1)).is_empty());
        assert_eq!(b.deadline(), Some(t0 + RENAME_HOLD));
        assert_eq!(b.take_due(t0 + RENAME_HOLD).len(), 1);
    }

    #[test]
    fn big_burst_flushes_early() {
        let t0 = Instant::now();
        let mut b = Batcher::new(Duration::from_secs(10), Duration::from_secs(5), 3);
        for n in ["a", "b", "c"] {
            b.add(p(n), HintKind::Closed, t0);
        }
        assert_eq!(b.take_due(t0).len(), 3);
    }

    #[test]
    fn file_being_written_waits_for_close_or_quiet() {
        let t0 = Instant::now();
        let mut b = Batcher::new(Duration::ZERO, Duration::from_secs(5), 1000);
        b.add(p("upload.bin"), HintKind::Writing, t0);
        b.add(p("upload.bin"), HintKind::Writing, t0 + Duration::from_secs(3));
        assert!(b.take_due(t0 + Duration::from_secs(4)).is_empty(), "still being written");
        assert_eq!(b.deadline(), Some(t0 + Duration::from_secs(8)));
        assert_eq!(b.take_due(t0 + Duration::from_secs(8)).len(), 1, "quiet long enough");

        b.add(p("u2"), HintKind::Writing, t0);
        b.add(p("u2"), HintKind::Closed, t0 + Duration::from_secs(1));
        assert_eq!(b.take_due(t0 + Duration::from_secs(1)).len(), 1, "closed: ship at once");
    }

    /// A file whose last event was a close is known as closed in the batch that takes it
    /// (its scan skips /proc); one written again after the close, created by a move or found
    /// in a new directory is not.
    #[test]
    fn a_close_is_remembered_for_the_batch_that_takes_it() {
        let t0 = Instant::now();
        let mut b = Batcher::new(Duration::ZERO, Duration::from_secs(5), 1000);
        b.add(p("done"), HintKind::Writing, t0);
        b.add(p("done"), HintKind::Closed, t0);
        b.add(p("again"), HintKind::Closed, t0);
        b.add(p("again"), HintKind::Writing, t0);
        b.add(p("moved"), HintKind::MovedTo, t0);
        b.add(p("dir"), HintKind::Tree, t0);
        b.add(p("attr"), HintKind::Closed, t0);
        b.add(p("attr"), HintKind::Changed, t0);
        let got = b.take_due(t0);
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(b.was_closed(&p("done")) && b.was_closed(&p("attr")));
        assert!(!b.was_closed(&p("moved")) && !b.was_closed(&p("dir")) && !b.was_closed(&p("again")));
        b.forget_closed();
        assert!(!b.was_closed(&p("done")));
        b.add(p("next"), HintKind::Closed, t0);
        b.take_due(t0);
        assert!(b.was_closed(&p("next")) && !b.was_closed(&p("attr")), "only the batch just taken");
    }

    #[test]
    fn writing_file_does_not_hold_back_others() {
        let t0 = Instant::now();
        let mut b = Batcher::new(Duration::ZERO, Duration::from_secs(5), 1000);
        b.add(p("big"), HintKind::Writing, t0);
        b.add(p("small"), HintKind::Closed, t0);
        let got = b.take_due(t0);
        assert_eq!(got, vec![Target::Path { path: p("small"), recursive: false }]);
        assert_eq!(b.writing(), 1);
    }
}
