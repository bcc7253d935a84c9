//! The inbound path: everything a peer's version goes through before it is on disk and in
//! the index, in one home.
//!
//! ```text
//!  page ──▶ page::process_page ── pre-scan (local changes first) ── decide ── journal ─┐
//!                                                                                     ▼
//!  need (fetched / retried) ──▶ needs::apply_need ── pre-scan ── decide ──▶ entry::apply_entry
//!                                                                                     │
//!         Done::Record / Write (durable batch) / Queue (need) ◀───────────────────────┘
//!                         │
//!                         ▼ one index transaction: entries + needs + progress + journal cleared
//! ```
//!
//! - `decide` (pure): newer, older, conflict, ancestry.
//! - `entry`: carries out one decision through `SyncRoot`, for pages, retried needs and
//!   fetched content alike; every replacement names the disk state the decision saw, so a
//!   local write that lands meanwhile is compared again, never overwritten.
//! - `page`: a peer's page: local changes of its paths are scanned first, decisions are
//!   journalled durably before the first file reaches its name, inline content is written
//!   as one durable batch, and the page is recorded with its needs and the peer's progress
//!   in one transaction.
//! - `needs`: content to fetch and items to retry, with backoff.
//! - `journal`: after a crash (or a failed page), what reached the disk is recognised as the
//!   peer's version before the start-up scan could mistake it for a local edit.

pub mod decide;
mod entry;
pub(in crate::agent) use entry::{Content, Done};
mod journal;
mod needs;
mod page;

use std::time::{Duration, Instant};

use super::Agent;
use super::index::Need;

impl Agent {
    /// Before versions taken from a peer (`via`) are committed: the recent-changes ring
    /// (`page`: a peer's page, named in `lsyncd.log`) and the watcher's echo filter.
    pub(super) fn record_received(&mut self, via: &str, commits: &[(crate::protocol::Entry, u64)], page: bool) {
        if page {
            self.report.record_page(&self.index, via, commits);
        } else {
            self.report.record(&self.index, Some(via), commits);
        }
        self.echoes.note(commits, Instant::now());
    }

    /// When a need is looked at again: soon after a local change or a first failure, then
    /// backing off to a minute.
    pub(super) fn schedule(&mut self, need: &Need) {
        if self.holds.holds(&need.entry) {
            // A deletion waiting in its node's run (`hold`): applied with the run.
            self.retry_at.remove(&need.entry.path);
            return;
        }
        let wait = match need.attempts {
            0 => Duration::ZERO,
            n => Duration::from_millis(500 * 2u64.pow(n.min(7))).min(Duration::from_secs(60)),
        };
        self.retry_at.insert(need.entry.path.clone(), Instant::now() + wait);
    }
}
