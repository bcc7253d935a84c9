//! The status rules as a table of situations an operator meets, each with what the
//! dashboard must say.

use super::*;
use crate::control::agent_api::PeerStatus;

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_795_342_502).unwrap()
}

fn status(digest: &str, last_seq: u64) -> AgentStatus {
    AgentStatus { tree_digest: digest.into(), last_seq, ..AgentStatus::default() }
}

fn node<'a>(name: &'a str, s: Option<&'a AgentStatus>) -> NodeFacts<'a> {
    NodeFacts {
        name,
        lifecycle: AgentState::Running,
        health: if s.is_some() { Health::Up } else { Health::Down },
        health_error: None,
        last_heartbeat: Some(now() - time::Duration::seconds(2)),
        status: s,
        report: None,
        last_job: Some(LastJob { kind: JobKind::Install, state: JobState::Succeeded, error: None }),
        configured: true,
        held: false,
        rate: None,
    }
}

fn env() -> EnvFacts<'static> {
    EnvFacts { installation: Some(InstallState::Installed), paused_at: None, paused_by: None, paused: false, out_of_sync_since: None, heartbeat: Duration::from_secs(10), now: now() }
}

#[test]
fn idle_nodes_with_one_digest_are_up_to_date() {
    let s = status("aa", 5);
    let (e, n) = assess(&env(), &[node("node1", Some(&s)), node("node2", Some(&s)), node("node3", Some(&s))]);
    assert_eq!(e.state, SyncState::UpToDate, "{e:?}");
    assert_eq!(e.headline, "Up to date: all 3 node(s) hold the same files");
    assert!(n.iter().all(|n| n.state == SyncState::UpToDate && n.label == "up to date"));
}

#[test]
fn a_different_digest_is_out_of_sync_and_names_the_node() {
    let (a, b) = (status("aa", 5), status("bb", 5));
    let mut e = env();
    e.out_of_sync_since = Some(now() - time::Duration::minutes(3));
    let (e, n) = assess(&e, &[node("node1", Some(&a)), node("node2", Some(&a)), node("node3", Some(&b))]);
    assert_eq!(e.state, SyncState::OutOfSync);
    assert_eq!(e.headline, "Out of sync since 10:12 UTC: node3 differs from node1 and node2");
    assert_eq!(e.differing, ["node3"]);
    assert_eq!((n[2].state, n[2].label.as_str()), (SyncState::OutOfSync, "out of sync: differs from node1 and node2"));
    assert_eq!(n[0].state, SyncState::UpToDate);
}

#[test]
fn paused_nodes_holding_changes_are_out_of_sync_not_in_agreement() {
    // Sync paused; every node has a different hello.txt that its index does not know yet,
    // so every digest is still the same.
    let mut s = status("aa", 5);
    s.paused = true;
    s.pending_local = 1;
    let mut e = env();
    e.paused = true;
    e.paused_at = Some(now() - time::Duration::minutes(5));
    e.paused_by = Some("admin");
    let (e, n) = assess(&e, &[node("node1", Some(&s)), node("node2", Some(&s)), node("node3", Some(&s))]);
    assert_eq!(e.state, SyncState::OutOfSync, "{e:?}");
    assert_eq!(e.headline, "Out of sync (sync paused since 10:10 UTC by admin): node1, node2 and node3 hold changes the other nodes do not have");
    assert_eq!(n[0].label, "paused since 10:10 UTC by admin; 1 local change(s) not sent; out of sync: differs from node2 and node3");
    // Paused and nothing pending: paused, with who and since when.
    let mut idle = status("aa", 5);
    idle.paused = true;
    let mut e2 = env();
    e2.paused = true;
    e2.paused_at = Some(now() - time::Duration::minutes(5));
    e2.paused_by = Some("admin");
    let (e2, _) = assess(&e2, &[node("node1", Some(&idle)), node("node2", Some(&idle))]);
    assert_eq!((e2.state, e2.headline.as_str()), (SyncState::Paused, "Paused since 10:10 UTC by admin: no changes are sent or applied until sync is resumed"));
}

#[test]
fn an_unanswered_or_stale_heartbeat_is_unreachable_and_the_environment_degraded() {
    let s = status("aa", 5);
    let mut stale = node("node2", Some(&s));
    stale.last_heartbeat = Some(now() - time::Duration::seconds(45));
    let mut down = node("node3", None);
    down.health_error = Some("connection refused");
    down.last_heartbeat = Some(now() - time::Duration::seconds(20));
    let (e, n) = assess(&env(), &[node("node1", Some(&s)), stale, down]);
    assert_eq!(e.state, SyncState::Degraded, "{e:?}");
    assert_eq!(n[1].label, "unreachable: no answer for 45 s");
    assert_eq!(n[2].label, "unreachable: no answer for 20 s (connection refused)");
    assert_eq!(e.unreachable, ["node2", "node3"]);
    assert!(e.headline.starts_with("Degraded: node2 unreachable"), "{}", e.headline);
}

#[test]
fn a_failed_job_is_reported_beside_a_healthy_agent_not_instead_of_it() {
    let s = status("aa", 5);
    let mut failed = node("node2", Some(&s));
    failed.lifecycle = AgentState::Failed;
    failed.last_job = Some(LastJob { kind: JobKind::Reconfigure, state: JobState::Failed, error: Some("reachable: connection refused") });
    let (e, n) = assess(&env(), &[node("node1", Some(&s)), failed]);
    assert_eq!(e.state, SyncState::UpToDate);
    assert_eq!((n[1].state, n[1].job_note.as_str()), (SyncState::UpToDate, "last reconfigure failed: reachable: connection refused"));
}

#[test]
fn pending_work_either_way_is_syncing_with_size_and_eta() {
    let a = status("aa", 40);
    let mut b = status("bb", 3);
    b.peers.insert("node1".into(), PeerStatus { their_seq_processed: 10, ..PeerStatus::default() });
    b.pending_remote = 2;
    let report = NodeReport { pending_bytes: 12 * 1024 * 1024, ..NodeReport::default() };
    let mut n2 = node("node2", Some(&b));
    n2.report = Some(&report);
    n2.rate = Some(1024.0 * 1024.0);
    let (e, n) = assess(&env(), &[node("node1", Some(&a)), n2]);
    // node2 has not processed 30 of node1's changes and has 2 files to fetch; digests of
    // busy nodes are not compared.
    assert_eq!((n[1].state, n[1].label.as_str()), (SyncState::Syncing, "syncing 32 file(s) (12.0 MiB), about 12 s left"));
    assert_eq!((e.state, e.headline.as_str()), (SyncState::Syncing, "Syncing: 32 file(s) (12.0 MiB) to go on node2, about 12 s left"));
}

#[test]
fn a_digest_older_than_what_a_peer_already_processed_is_not_compared() {
    // node1 made a change: node2 processed it (its digest is new), but node1's own report
    // still counts the sequence number and digest of a moment before.
    let mut a = status("old", 4);
    a.peers.insert("node2".into(), PeerStatus { their_seq_processed: 6, ..PeerStatus::default() });
    let mut b = status("new", 6);
    b.peers.insert("node1".into(), PeerStatus { their_seq_processed: 5, ..PeerStatus::default() });
    let (e, n) = assess(&env(), &[node("node1", Some(&a)), node("node2", Some(&b))]);
    assert_eq!(e.state, SyncState::Syncing, "{e:?}");
    assert!(e.differing.is_empty());
    assert_eq!(n[0].label, "syncing: its latest changes are reaching the other nodes");
}

#[test]
fn a_node_held_on_the_old_path_degrades_the_environment_and_its_refusal_is_no_error() {
    let mut a = status("aa", 5);
    a.foreign_folders.insert("node2".into(), "node2 syncs another folder".into());
    let mut b = status("old folder", 5);
    b.paused = true;
    b.pending_local = 3;
    let mut held = node("node2", Some(&b));
    held.held = true;
    held.lifecycle = AgentState::Paused;
    let (e, n) = assess(&env(), &[node("node1", Some(&a)), held]);
    assert_eq!((n[0].state, n[1].label.as_str()), (SyncState::UpToDate, "paused on the old sync path until a reconfigure reaches it; 3 local change(s) not sent"));
    assert_eq!(
        (e.state, e.headline.as_str()),
        (SyncState::Degraded, "Degraded: node2 paused on the old sync path until a reconfigure reaches it; 3 local change(s) not sent; the other 1 node(s) are in sync")
    );
}

#[test]
fn without_an_installation_nothing_claims_agreement() {
    let mut e = env();
    e.installation = None;
    let mut n = node("node1", None);
    n.lifecycle = AgentState::NotInstalled;
    n.last_heartbeat = None;
    let (e, nodes) = assess(&e, &[n]);
    assert_eq!((e.state, e.headline.as_str()), (SyncState::NotInstalled, "Not installed"));
    assert_eq!(nodes[0].label, "not installed");
}

#[test]
fn a_node_whose_first_install_failed_is_an_error_in_words() {
    let s = status("aa", 5);
    let mut f = node("node2", None);
    f.lifecycle = AgentState::Failed;
    f.configured = false;
    f.last_heartbeat = None;
    f.last_job = Some(LastJob { kind: JobKind::Install, state: JobState::Failed, error: Some("webroot missing") });
    let (e, n) = assess(&env(), &[node("node1", Some(&s)), f]);
    assert_eq!((n[1].state, n[1].label.as_str(), n[1].job_note.as_str()), (SyncState::Error, "not running: the install did not finish", "last install failed: webroot missing"));
    assert_eq!(e.state, SyncState::Error);
}

#[test]
fn a_held_mass_delete_is_an_error_that_says_what_and_since_when() {
    let a = status("aa", 5);
    let mut b = status("aa", 5);
    b.pending_remote = 27;
    b.mass_delete_holds =
        vec![crate::control::agent_api::HeldDeletes { from: "node1".into(), state: "held".into(), since: now().unix_timestamp() - 60, files: 25, entries: 27, sample: vec!["up/a.jpg".into()] }];
    let (e, n) = assess(&env(), &[node("node1", Some(&a)), node("node2", Some(&b))]);
    assert_eq!(n[1].state, SyncState::Error, "{n:?}");
    assert_eq!(n[1].label, "error: holding a mass delete (25 file(s) from node1 since 10:14 UTC): confirm or reject it");
    assert_eq!(e.state, SyncState::Error, "{e:?}");
    assert!(e.headline.contains("node2: holding a mass delete"), "{e:?}");
    // A run still settling (a moment before it is applied) is just syncing.
    b.mass_delete_holds[0].state = "settling".into();
    let (_, n) = assess(&env(), &[node("node1", Some(&a)), node("node2", Some(&b))]);
    assert_eq!(n[1].state, SyncState::Syncing, "{n:?}");
}
