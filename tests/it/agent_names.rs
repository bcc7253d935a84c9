//! Any valid name replicates (244-byte CJK, 255-byte emoji), a conflict on a name with a
//! 250-character "extension" keeps both versions without a crash, names that cannot be
//! synced (not UTF-8) are named in the log and the status, hard links are kept as separate
//! files that follow writes through either name, and `filesync inspect` answers while the
//! agent runs.

use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use crate::support::cluster::{Cluster, Options, write};
use crate::support::poll::until;

const T: Duration = Duration::from_secs(60);

#[test]
fn long_multibyte_names_replicate_and_conflict_without_a_crash() {
    let mut c = Cluster::new(2, Options::default());
    c.start_all();
    let cjk = "資料".repeat(40) + ".pdf";
    let emoji = "😀".repeat(63) + "abc";
    assert_eq!((cjk.len(), emoji.len()), (244, 255));
    write(&c.nodes[0].path(&format!("docs/{cjk}")), b"cjk");
    write(&c.nodes[0].path(&format!("docs/{emoji}")), b"emoji");
    c.converge("long names", T, |t| {
        for n in [&cjk, &emoji] {
            if !t.contains_key(&format!("docs/{n}")) {
                return Err(format!("{n} missing"));
            }
        }
        Ok(())
    });
    // A conflict on `a.` + 250 characters: both versions kept, both agents still running.
    let long_ext = format!("a.{}", "e".repeat(250));
    write(&c.nodes[0].path(&long_ext), b"first");
    c.converge("long ext", T, |t| if t.contains_key(&long_ext) { Ok(()) } else { Err("missing".into()) });
    c.stop(1);
    write(&c.nodes[0].path(&long_ext), b"edit on node1");
    std::thread::sleep(Duration::from_millis(20));
    write(&c.nodes[1].path(&long_ext), b"edit on node2");
    c.start(1);
    let t = c.converge("long ext conflict", T, |t| {
        let copies = t.keys().filter(|k| k.contains("sync-conflict")).count();
        if copies == 1 { Ok(()) } else { Err(format!("{copies} copies")) }
    });
    let copy = t.keys().find(|k| k.contains("sync-conflict")).unwrap();
    assert!(copy.len() <= 255, "{copy}");
    for n in &mut c.nodes {
        assert!(n.child.as_mut().unwrap().try_wait().unwrap().is_none(), "{} died", n.name);
    }
    for i in 0..2 {
        let s = c.nodes[i].status_file();
        assert!(s.contains("There are 0 pending remote changes"), "{s}");
    }
}

#[test]
fn names_that_cannot_be_synced_are_named_in_log_and_status() {
    let mut c = Cluster::new(2, Options::default());
    c.start_all();
    let bad = std::ffi::OsStr::from_bytes(b"r\xe9sum\xe9.doc");
    std::fs::write(c.nodes[0].root.join(bad), b"latin-1 name").unwrap();
    write(&c.nodes[0].path("fine.txt"), b"ok");
    // (The trees differ by design: the bad name stays on node1 only.)
    until("the good file on node2", T, || if c.nodes[1].path("fine.txt").exists() { Ok(()) } else { Err("missing".into()) });
    until("log names it", T, || {
        let log = c.nodes[0].log();
        if log.contains("not synced") && log.contains("r\u{fffd}sum\u{fffd}.doc") { Ok(()) } else { Err(log) }
    });
    until("status names it", T, || {
        let s = c.nodes[0].status_file();
        if s.contains("NOT SYNCED: 1 name") && s.contains("r\u{fffd}sum\u{fffd}.doc") { Ok(()) } else { Err(s) }
    });
    let v: serde_json::Value = serde_json::from_str(&c.ctl(0, "status")).unwrap();
    assert_eq!(v["unsyncable_count"], 1);
}

#[test]
fn hard_links_are_separate_files_that_follow_writes_through_either_name() {
    let mut c = Cluster::new(2, Options::default());
    c.start_all();
    write(&c.nodes[0].path("a.txt"), b"v1");
    std::fs::hard_link(c.nodes[0].path("a.txt"), c.nodes[0].path("b.txt")).unwrap();
    c.converge("both names", T, |t| if t.contains_key("a.txt") && t.contains_key("b.txt") { Ok(()) } else { Err("missing".into()) });
    // Write in place through a.txt: b.txt (same inode) changes too, and so must its replica.
    std::fs::write(c.nodes[0].path("a.txt"), b"v2 through a").unwrap();
    until("b.txt follows on node2", Duration::from_secs(15), || match std::fs::read(c.nodes[1].path("b.txt")) {
        Ok(d) if d == b"v2 through a" => Ok(()),
        other => Err(format!("{other:?}")),
    });
    // a.txt and b.txt are two changes: either may land first.
    until("a.txt follows on node2", T, || match std::fs::read(c.nodes[1].path("a.txt")) {
        Ok(d) if d == b"v2 through a" => Ok(()),
        other => Err(format!("{other:?}")),
    });
    // On the receiver they are two files: changing one there leaves the other alone.
    std::fs::write(c.nodes[1].path("a.txt"), b"v3 on node2").unwrap();
    until("a.txt on node1", T, || if std::fs::read(c.nodes[0].path("a.txt")).unwrap_or_default() == b"v3 on node2" { Ok(()) } else { Err("old".into()) });
}

#[test]
fn inspect_answers_while_the_agent_runs() {
    let mut c = Cluster::new(2, Options::default());
    c.start_all();
    write(&c.nodes[0].path("x/y.txt"), b"inspect me");
    c.converge("y", T, |t| if t.contains_key("x/y.txt") { Ok(()) } else { Err("missing".into()) });
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_filesync")).args(["inspect", "--config"]).arg(&c.nodes[1].config).arg("x/y.txt").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["entry"]["size"], 10);
    assert_eq!(v["entry"]["hash"], blake3::hash(b"inspect me").to_hex().to_string());
    assert_eq!(v["entry"]["modified_by"], "node1");
    // With the agent stopped, the same command reads the index directly.
    c.stop(1);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_filesync")).args(["inspect", "--config"]).arg(&c.nodes[1].config).arg("x/y.txt").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["entry"]["size"], 10);
}
