//! kill -9 in the middle of a large transfer, on the receiving side and on the sending side:
//! no partial file is ever visible under the real name, and after a restart everything
//! converges.

use std::time::Duration;

use crate::support::cluster::{Cluster, Options, write};
use crate::support::poll::until;

const SIZE: usize = 200 * 1024 * 1024;

fn big_content() -> Vec<u8> {
    // Incompressible-ish and position-dependent, so a partial or shifted copy is detectable.
    let mut v = vec![0u8; SIZE];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    v
}

/// These tests are about deletes staying deleted, not about the mass-delete hold (which
/// would hold their mass deletes for an operator; `agent_versions` tests it): it is off.
fn no_hold() -> Options {
    Options { delay: 0, extra: "[mass_delete]\nmax_files = 0\nmax_percent = 0\n".into() }
}

fn kill_mid_transfer(kill_receiver: bool) {
    let mut c = Cluster::new(2, Options::default());
    c.start_all();
    let data = big_content();
    let expected = blake3::hash(&data).to_hex().to_string();
    write(&c.nodes[0].path("big.bin"), &data);
    drop(data);
    // Wait until the receiver has a temp file growing, i.e. the transfer is under way.
    let recv_root = c.root(1).to_owned();
    until("a transfer in progress on node2", Duration::from_secs(60), || {
        for e in std::fs::read_dir(&recv_root).map_err(|e| e.to_string())? {
            let e = e.map_err(|e| e.to_string())?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".filesync.big.bin") {
                return Ok(());
            }
        }
        Err("no temp file yet".into())
    });
    let victim = if kill_receiver { 1 } else { 0 };
    c.kill9(victim);
    // Under its real name the receiver has nothing or the whole file, never a part.
    if let Ok(m) = std::fs::metadata(c.nodes[1].path("big.bin")) {
        assert_eq!(m.len() as usize, SIZE, "partial file visible after kill -9");
    }
    c.start(victim);
    let t = c.converge("big file after restart", Duration::from_secs(120), |t| match t.get("big.bin") {
        Some(i) if i.size as usize == SIZE => Ok(()),
        other => Err(format!("{other:?}")),
    });
    assert_eq!(t["big.bin"].hash, expected);
}

#[test]
fn kill9_receiver_mid_transfer_leaves_no_partial_file() {
    kill_mid_transfer(true);
}

#[test]
fn kill9_sender_mid_transfer_leaves_no_partial_file() {
    kill_mid_transfer(false);
}

/// A receiver is killed -9 at a random moment while it applies a page of 900 files; the
/// sender then deletes the directory; the receiver restarts. Over 20 seeds, nothing comes
/// back: what the page had already put on disk is recognised as the sender's version, not
/// announced as the receiver's own edits.
#[test]
fn kill9_while_applying_a_page_then_delete_resurrects_nothing() {
    let iterations: u64 = std::env::var("FILESYNC_KILL9_ITERATIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let mut c = Cluster::new(2, no_hold());
    c.start_all();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut resurrected = Vec::new();
    for k in 0..iterations {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let dir = format!("batch{k}");
        for i in 0..900 {
            write(&c.nodes[0].path(&format!("{dir}/sub{}/f{i:03}.txt", i % 7)), format!("iteration {k} file {i} {}", "y".repeat(i % 500)).as_bytes());
        }
        let recv = c.nodes[1].path(&dir);
        until("the page to start arriving", Duration::from_secs(60), || if recv.exists() { Ok(()) } else { Err("not yet".into()) });
        std::thread::sleep(Duration::from_micros(rng % 250_000));
        c.kill9(1);
        std::fs::remove_dir_all(c.nodes[0].path(&dir)).unwrap();
        until("node1 to record the delete", Duration::from_secs(30), || {
            let v: serde_json::Value = serde_json::from_str(&c.ctl(0, "status")).map_err(|e| e.to_string())?;
            if v["pending_local"].as_u64() == Some(0) { Ok(()) } else { Err(v["pending_local"].to_string()) }
        });
        c.start(1);
        c.converge(&format!("iteration {k}"), Duration::from_secs(60), |t| {
            let back: Vec<&String> = t.keys().filter(|p| p.starts_with(&dir)).collect();
            if back.is_empty() { Ok(()) } else { Err(format!("{} path(s) of {dir} on node1", back.len())) }
        });
        let back: Vec<String> = c.snapshot(1).into_keys().filter(|p| p.starts_with(&dir)).collect();
        resurrected.extend(back);
    }
    assert!(resurrected.is_empty(), "resurrected: {resurrected:?}");
    eprintln!("kill -9 during a page, {iterations} iterations: 0 paths came back");
}

/// A node is down while 5,000 files in 100 directories are deleted on another; when it
/// restarts, nothing comes back, not even empty directories.
#[test]
fn a_mass_delete_while_a_node_is_down_stays_deleted_with_its_directories() {
    let mut c = Cluster::new(3, no_hold());
    c.start_all();
    for i in 0..5000 {
        write(&c.nodes[0].path(&format!("wp-content/uploads/d{:02}/img{i:04}.jpg", i % 100)), &[(i % 251) as u8; 64]);
    }
    c.converge("5,000 files everywhere", Duration::from_secs(120), |t| {
        let n = t.keys().filter(|k| k.ends_with(".jpg")).count();
        if n == 5000 { Ok(()) } else { Err(format!("{n} files")) }
    });
    c.stop(2);
    std::fs::remove_dir_all(c.nodes[0].path("wp-content/uploads")).unwrap();
    c.converge("deleted on the running nodes", Duration::from_secs(60), |t| if t.contains_key("wp-content/uploads") { Err("still there".into()) } else { Ok(()) });
    c.start(2);
    let t = c.converge("the restarted node catches up", Duration::from_secs(120), |t| if t.contains_key("wp-content/uploads") { Err("uploads came back".into()) } else { Ok(()) });
    let t3 = c.snapshot(2);
    assert!(!t3.contains_key("wp-content/uploads"), "{:?}", t3.keys().take(5).collect::<Vec<_>>());
    assert_eq!(t.keys().filter(|k| k.starts_with("wp-content/uploads")).count(), 0);
}

/// A peer's deletion waits here as a need (held: a mass delete above the limit, as it would
/// while its batch settles); the user edits the file here meanwhile (a newer, concurrent
/// version, announced), the agent is killed, and the user moves the file away before it
/// restarts. The disk now "holds" the deletion, but recording it would replace this node's
/// announced edit with a version that does not include it (the peer would wait forever
/// for content no node has). The edit absorbs the waiting deletion's version, so nothing is
/// left to record; `reconcile` also records only versions newer than the index's.
#[test]
fn a_waiting_deletion_is_not_recorded_over_a_newer_local_edit_after_kill9() {
    let mut c = Cluster::new(2, Options { delay: 0, extra: "[mass_delete]\nmax_files = 1\nmax_percent = 0\n".into() });
    c.start_all();
    let ctl = |c: &Cluster, i: usize, args: &[&str]| -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_filesync")).args(["ctl", "--config"]).arg(&c.nodes[i].config).args(args).output().unwrap();
        assert!(out.status.success(), "ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let status = |c: &Cluster, i: usize| -> serde_json::Value { serde_json::from_str(&ctl(c, i, &["status"])).unwrap() };
    write(&c.nodes[0].path("a.txt"), b"one");
    write(&c.nodes[0].path("c.txt"), b"other");
    c.converge("a.txt and c.txt everywhere", Duration::from_secs(30), |t| if t.contains_key("a.txt") && t.contains_key("c.txt") { Ok(()) } else { Err("not yet".into()) });

    // node2 deletes both: held on node1 (more than one file at once).
    std::fs::remove_file(c.nodes[1].path("a.txt")).unwrap();
    std::fs::remove_file(c.nodes[1].path("c.txt")).unwrap();
    until("node1 to hold node2's deletions", Duration::from_secs(30), || {
        let out = ctl(&c, 0, &["hold"]);
        if out.contains("held deletions from node2") { Ok(()) } else { Err(out) }
    });
    let seq0 = status(&c, 0)["last_seq"].as_u64().unwrap();
    {
        use std::io::Write;
        std::fs::OpenOptions::new().append(true).open(c.nodes[0].path("a.txt")).unwrap().write_all(b" two").unwrap();
    }
    until("node1 to record and announce its edit", Duration::from_secs(10), || {
        let v = status(&c, 0);
        if v["last_seq"].as_u64().unwrap_or(0) > seq0 { Ok(()) } else { Err("not yet".into()) }
    });
    c.kill9(0);
    std::fs::rename(c.nodes[0].path("a.txt"), c.nodes[0].path("b.txt")).unwrap();
    c.start(0);
    ctl(&c, 0, &["hold", "confirm"]);

    c.converge("a.txt and c.txt gone, b.txt everywhere", Duration::from_secs(30), |t| {
        if t.contains_key("a.txt") || t.contains_key("c.txt") || !t.contains_key("b.txt") { Err(format!("{:?}", t.keys().collect::<Vec<_>>())) } else { Ok(()) }
    });
    for i in 0..2 {
        until(&format!("node{} idle", i + 1), Duration::from_secs(30), || {
            let v = status(&c, i);
            if v["pending_remote"].as_u64() == Some(0) && v["pending_local"].as_u64() == Some(0) {
                Ok(())
            } else {
                Err(format!("pending_remote {} errors {}", v["pending_remote"], v["pending_errors"]))
            }
        });
    }
    assert_eq!(std::fs::read(c.nodes[1].path("b.txt")).unwrap(), b"one two");
}

/// The state a kill -9 leaves when a peer's version had just displaced a file (moved into the
/// versions area, or the displaced-files directory when versions are off) and a process that
/// had the file open wrote to it after the swap, before the agent recorded the displaced file:
/// at the next start the written content is put back beside its path as a conflict copy
/// (it exists nowhere else); a displaced file nobody wrote to makes no copy.
#[test]
fn a_write_into_a_just_displaced_file_survives_a_kill9_before_it_was_recorded() {
    for keep in [true, false] {
        let extra = if keep { String::new() } else { "[versions]\nkeep = false\n".into() };
        let mut c = Cluster::new(1, Options { delay: 0, extra });
        c.start_all();
        write(&c.nodes[0].path("doc.txt"), b"original");
        write(&c.nodes[0].path("other.txt"), b"untouched");
        until("both files recorded", Duration::from_secs(30), || {
            let v: serde_json::Value = serde_json::from_str(&c.ctl(0, "status")).map_err(|e| e.to_string())?;
            if v["last_seq"].as_u64() >= Some(2) && v["pending_local"].as_u64() == Some(0) { Ok(()) } else { Err(v.to_string()) }
        });
        c.stop(0);
        let state = c.nodes[0].home.join("webroot/lsyncd/var/state");
        let graveyard = if keep { state.join("versions/data") } else { state.join("displaced") };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        for (k, name) in ["doc.txt", "other.txt"].into_iter().enumerate() {
            let grave = graveyard.join(format!("{:016x}", now + k as u64));
            std::fs::rename(c.nodes[0].path(name), &grave).unwrap();
            write(&c.nodes[0].path(name), format!("the peer's version of {name}").as_bytes());
            if name == "doc.txt" {
                use std::io::Write;
                std::fs::OpenOptions::new().append(true).open(&grave).unwrap().write_all(b" + a line written after the swap").unwrap();
            }
        }
        c.start(0);
        let want = b"original + a line written after the swap".to_vec();
        let tree = until(&format!("the late write back as a conflict copy (versions kept: {keep})"), Duration::from_secs(30), || {
            let t = c.snapshot(0);
            if t.values().any(|i| i.hash == blake3::hash(&want).to_hex().to_string()) { Ok(t) } else { Err(format!("{:?}", t.keys().collect::<Vec<_>>())) }
        });
        let copies: Vec<&String> = tree.keys().filter(|k| k.contains(".sync-conflict-")).collect();
        assert_eq!(copies.len(), 1, "one conflict copy, of doc.txt only (versions kept: {keep}): {copies:?}");
        assert!(copies[0].starts_with("doc.sync-conflict-"), "{copies:?}");
        assert!(c.nodes[0].log().contains("a write reached a replaced file before the agent stopped"), "{}", c.nodes[0].log());
        if keep {
            let out = c.ctl(0, "versions");
            assert!(out.contains("other.txt"), "the untouched displaced file is kept as a version: {out}");
        }
    }
}
