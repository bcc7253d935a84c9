//! Refused connections and requests, logged without flooding `lsyncd.log`: the first
//! refusal from a source is logged at once with its reason; the ones that follow within a
//! minute are counted and logged as one line when the minute is over ("refused 1,500
//! connections from 127.0.0.9 in the last minute: ..."). At most one line per source and
//! kind a minute; past 256 distinct sources in a minute the rest share one line.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
const MAX_SOURCES: usize = 256;
const OTHERS: &str = "other addresses";

/// Where lines go (`lsyncd.log`).
pub type Sink = Arc<dyn Fn(String) + Send + Sync>;
/// Called once per refusal (the status counter).
pub type Counter = Arc<dyn Fn() + Send + Sync>;

pub struct Refusals {
    agg: Mutex<Aggregator>,
    sink: Sink,
    count: Counter,
    /// Wakes the flush task when there is something to count (an idle agent never wakes).
    pending: tokio::sync::Notify,
}

impl Refusals {
    /// Starts the aggregator; a background task flushes the counts while it is alive.
    pub fn new(sink: Sink, count: Counter) -> Arc<Refusals> {
        let r = Arc::new(Refusals { agg: Mutex::new(Aggregator::default()), sink, count, pending: tokio::sync::Notify::new() });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(flush_loop(Arc::downgrade(&r)));
        }
        r
    }

    /// Counts one refusal of a `what` ("connection", "request") from `who`.
    pub fn note(&self, who: &str, what: &str, why: &str) {
        (self.count)();
        let line = self.agg.lock().expect("BUG: poisoned").note(who, what, why, Instant::now());
        self.pending.notify_one();
        if let Some(l) = line {
            (self.sink)(l);
        }
    }

    fn flush(&self) {
        let lines = self.agg.lock().expect("BUG: poisoned").flush(Instant::now());
        for l in lines {
            (self.sink)(l);
        }
    }
}

async fn flush_loop(r: Weak<Refusals>) {
    loop {
        // Asleep until a refusal is noted, then every 5 s until none is left to report.
        let Some(strong) = r.upgrade() else { return };
        let idle = strong.agg.lock().expect("BUG: poisoned").slots.is_empty();
        if idle {
            // (Holds the aggregator while asleep: there is one per agent, for its lifetime.)
            strong.pending.notified().await;
            continue;
        }
        drop(strong);
        tokio::time::sleep(Duration::from_secs(5)).await;
        match r.upgrade() {
            Some(r) => r.flush(),
            None => return,
        }
    }
}

#[derive(Default)]
struct Aggregator {
    slots: HashMap<(String, String), Slot>,
}

struct Slot {
    /// When the last line about this source was written.
    logged_at: Instant,
    /// Refusals since then, and the latest reason.
    count: u64,
    why: String,
}

impl Aggregator {
    /// Records a refusal; returns a line to log now (the first from this source).
    fn note(&mut self, who: &str, what: &str, why: &str, now: Instant) -> Option<String> {
        let mut key = (who.to_owned(), what.to_owned());
        if !self.slots.contains_key(&key) && self.slots.len() >= MAX_SOURCES {
            key.0 = OTHERS.to_owned();
        }
        match self.slots.get_mut(&key) {
            Some(s) => {
                s.count += 1;
                s.why = why.to_owned();
                None
            }
            None => {
                self.slots.insert(key.clone(), Slot { logged_at: now, count: 0, why: why.to_owned() });
                Some(format!("refused a {what} from {}: {why}", key.0))
            }
        }
    }

    /// Lines for the sources whose minute is over and that were refused again meanwhile;
    /// forgets the quiet ones (their next refusal is logged at once again).
    fn flush(&mut self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        self.slots.retain(|(who, what), s| {
            if now.duration_since(s.logged_at) < WINDOW {
                return true;
            }
            if s.count == 0 {
                return false;
            }
            out.push(format!("refused {} {what}s from {who} in the last minute: {}", thousands(s.count), s.why));
            s.logged_at = now;
            s.count = 0;
            true
        });
        out.sort();
        out
    }
}

/// 1500 → "1,500".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_source_a_minute_with_the_count() {
        let mut a = Aggregator::default();
        let t0 = Instant::now();
        assert_eq!(a.note("127.0.0.9", "connection", "too many", t0).as_deref(), Some("refused a connection from 127.0.0.9: too many"));
        for i in 0..1500 {
            assert_eq!(a.note("127.0.0.9", "connection", "too many", t0 + Duration::from_millis(i)), None);
        }
        assert!(a.flush(t0 + Duration::from_secs(30)).is_empty(), "a line within the minute");
        assert_eq!(a.flush(t0 + Duration::from_secs(61)), vec!["refused 1,500 connections from 127.0.0.9 in the last minute: too many".to_owned()]);
        // A quiet minute later the source is forgotten and logged at once again.
        assert!(a.flush(t0 + Duration::from_secs(125)).is_empty());
        assert!(a.note("127.0.0.9", "connection", "again", t0 + Duration::from_secs(126)).is_some());
    }

    #[test]
    fn many_sources_share_one_slot() {
        let mut a = Aggregator::default();
        let t0 = Instant::now();
        let lines = (0..1000).filter_map(|i| a.note(&format!("10.0.{}.{}", i / 250, i % 250), "connection", "x", t0)).count();
        assert_eq!(lines, MAX_SOURCES + 1);
        assert_eq!(a.slots.len(), MAX_SOURCES + 1);
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(1500), "1,500");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
