//! A node holding a peer's mass delete for an operator (`agent::hold`), in the words of
//! its state: from whom, how many files, since when, and what to do.

use time::OffsetDateTime;

use super::clock;
use crate::control::agent_api::AgentStatus;

/// A node holding peers' mass deletes for an operator, in words (None when it holds none).
pub(super) fn held_mass_deletes(s: &AgentStatus, now: OffsetDateTime) -> Option<String> {
    let runs: Vec<String> = s
        .mass_delete_holds
        .iter()
        .filter(|h| h.state == "held")
        .map(|h| {
            let since = OffsetDateTime::from_unix_timestamp(h.since).map(|t| format!(" since {}", clock(t, now))).unwrap_or_default();
            format!("{} file(s) from {}{since}", h.files, h.from)
        })
        .collect();
    (!runs.is_empty()).then(|| format!("holding a mass delete ({}): confirm or reject it", runs.join(", ")))
}
