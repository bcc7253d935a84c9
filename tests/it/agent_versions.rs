//! The safety nets, with real agents: versions kept on every node that receives a change,
//! restores through `filesync ctl restore` that replicate everywhere (content and mtime),
//! retention by age and by size, kill -9 while versions are being kept, the mass-delete
//! hold (confirmed, rejected), and restores that never overwrite a path recreated since.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::cluster::{Cluster, Options, write};
use crate::support::poll::until;
use crate::support::tree::Tree;

/// `filesync ctl --config <node i> args...`; panics on failure.
fn ctl(c: &Cluster, i: usize, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_filesync")).args(["ctl", "--config"]).arg(&c.nodes[i].config).args(args).output().unwrap();
    assert!(out.status.success(), "ctl {args:?} on node{} failed: {}", i + 1, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(c: &Cluster, i: usize) -> Value {
    serde_json::from_str(&ctl(c, i, &["status"])).unwrap()
}

/// Node i's versions (of `path`, or all), newest first.
fn versions(c: &Cluster, i: usize, path: &str) -> Vec<Value> {
    let mut args = vec!["versions", "--json", "--limit", "5000"];
    if !path.is_empty() {
        args.insert(1, path);
    }
    let v: Value = serde_json::from_str(&ctl(c, i, &args)).unwrap();
    v["versions"].as_array().cloned().unwrap_or_default()
}

fn data_dir(c: &Cluster, i: usize) -> PathBuf {
    c.nodes[i].home.join("webroot/lsyncd/var/state/versions/data")
}

fn hash(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

fn set_mtime(p: &std::path::Path, secs: i64) {
    filetime::set_file_mtime(p, filetime::FileTime::from_unix_time(secs, 123_000_000)).unwrap();
}

fn files_under(t: &Tree, prefix: &str) -> usize {
    t.iter().filter(|(k, v)| k.starts_with(prefix) && v.kind == 'f').count()
}

/// Deleted on node 1; restored from node 2's versions (a file, a folder, everything deleted
/// in a window): back on every node with the same content and mtime.
#[test]
fn files_deleted_on_one_node_are_restored_from_another_everywhere_with_their_mtime() {
    let mut c = Cluster::new(3, Options::default());
    c.start_all();
    write(&c.nodes[0].path("docs/report.pdf"), &vec![7u8; 300_000]);
    set_mtime(&c.nodes[0].path("docs/report.pdf"), 1_600_000_000);
    for n in ["a", "b", "c"] {
        write(&c.nodes[0].path(&format!("site/{n}.html")), format!("<p>{n}</p>").as_bytes());
        set_mtime(&c.nodes[0].path(&format!("site/{n}.html")), 1_500_000_000);
    }
    write(&c.nodes[0].path("old.txt"), b"old notes");
    let before = c.converge("initial files", Duration::from_secs(60), |t| if files_under(t, "") == 5 { Ok(()) } else { Err(format!("{t:?}")) });
    let t0 = time::OffsetDateTime::now_utc().unix_timestamp() - 1;
    std::fs::remove_file(c.nodes[0].path("docs/report.pdf")).unwrap();
    std::fs::remove_dir_all(c.nodes[0].path("site")).unwrap();
    std::fs::remove_file(c.nodes[0].path("old.txt")).unwrap();
    c.converge("deleted everywhere", Duration::from_secs(60), |t| if files_under(t, "") == 0 { Ok(()) } else { Err(format!("{t:?}")) });
    let v = versions(&c, 1, "docs/report.pdf");
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!((v[0]["cause"].as_str(), v[0]["by"].as_str()), (Some("deleted"), Some("node1")));
    assert_eq!(v[0]["hash"].as_str(), Some(before["docs/report.pdf"].hash.as_str()));

    // One file.
    let out = ctl(&c, 1, &["restore", "docs/report.pdf"]);
    assert!(out.contains("restored docs/report.pdf"), "{out}");
    // A folder.
    let out = ctl(&c, 1, &["restore", "site"]);
    assert!(out.contains("3 file(s) restored"), "{out}");
    // Everything deleted since t0 that is still missing (old.txt).
    let out = ctl(&c, 1, &["restore", "--deleted-since", &t0.to_string()]);
    assert!(out.contains("restored old.txt"), "{out}");
    let after = c.converge("restored everywhere", Duration::from_secs(60), |t| if files_under(t, "") == 5 { Ok(()) } else { Err(format!("{:?}", t.keys().collect::<Vec<_>>())) });
    for (p, item) in before.iter().filter(|(_, i)| i.kind == 'f') {
        let got = &after[p];
        assert_eq!((&got.hash, got.mtime_ns, got.mode), (&item.hash, item.mtime_ns, item.mode), "{p} on every node (mtime {} vs {})", got.mtime_ns, item.mtime_ns);
    }
    assert!(c.nodes[1].log().contains("restore of"), "the restore is logged");
}

/// A peer's overwrite replaced a file: its older content comes back (in place: the current
/// content is what replaced it, so this node keeps that as a version too).
#[test]
fn a_file_overwritten_by_a_peer_is_restored_to_its_older_content() {
    let mut c = Cluster::new(2, Options::default());
    c.start_all();
    let f = c.nodes[0].path("wp-config-sample.php");
    write(&f, b"version one");
    set_mtime(&f, 1_700_000_000);
    let v1 = c.converge("v1", Duration::from_secs(30), |t| t.get("wp-config-sample.php").map(|_| ()).ok_or_else(|| "not yet".into()));
    write(&f, b"version two, written by a plugin that truncated it");
    c.converge("v2", Duration::from_secs(30), |t| if t["wp-config-sample.php"].size > 11 { Ok(()) } else { Err("v1".into()) });
    let v = versions(&c, 1, "wp-config-sample.php");
    assert_eq!((v.len(), v[0]["cause"].as_str(), v[0]["hash"].as_str()), (1, Some("replaced"), Some(hash(b"version one").as_str())), "{v:?}");
    let out = ctl(&c, 1, &["restore", "wp-config-sample.php"]);
    assert!(out.contains("restored wp-config-sample.php") && out.contains("kept as a version"), "{out}");
    let t = c.converge("v1 back everywhere", Duration::from_secs(30), |t| if t["wp-config-sample.php"].size == 11 { Ok(()) } else { Err("v2".into()) });
    assert_eq!(t["wp-config-sample.php"], v1["wp-config-sample.php"]);
    // The content the restore replaced is a version of node 2 now (the restore can be undone).
    let v = versions(&c, 1, "wp-config-sample.php");
    assert!(v.iter().any(|x| x["cause"] == "restored" && x["hash"] == hash(b"version two, written by a plugin that truncated it").as_str()), "{v:?}");
}

/// Versions past `max_age` are removed; under a flood of overwrites the versions never take
/// more than `max_bytes`, and the newest are the ones kept.
#[test]
fn retention_removes_old_versions_and_holds_the_cap_under_a_flood() {
    const CAP: u64 = 400_000;
    let mut c = Cluster::new(3, Options::default());
    c.write_config(1, &Options { delay: 0, extra: "[versions]\nmax_age = \"15s\"\n".into() });
    c.write_config(2, &Options { delay: 0, extra: format!("[versions]\nmax_bytes = {CAP}\n") });
    c.start_all();
    for i in 0..40 {
        write(&c.nodes[0].path(&format!("f{i:02}.bin")), &vec![0u8; 20_000]);
    }
    c.converge("40 files", Duration::from_secs(60), |t| if files_under(t, "") == 40 { Ok(()) } else { Err(format!("{}", t.len())) });
    let peak = std::cell::Cell::new(0);
    for round in 1..=8u8 {
        for i in 0..40 {
            write(&c.nodes[0].path(&format!("f{i:02}.bin")), &vec![round; 20_000 + round as usize]);
        }
        // Each round reaches every node, so each replaces the previous one there.
        c.converge(&format!("round {round}"), Duration::from_secs(60), |t| {
            let behind = t.values().filter(|x| x.size != 20_000 + round as u64).count();
            peak.set(peak.get().max(status(&c, 2)["versions"]["bytes"].as_u64().unwrap()));
            if behind == 0 { Ok(()) } else { Err(format!("{behind} files behind")) }
        });
        assert!(peak.get() <= CAP, "round {round}: versions use {} bytes, cap {CAP}", peak.get());
    }
    // Node 3: settles under the cap, with the newest versions. Settled means every file in
    // the versions area is a counted version: round 8's trees match on disk as soon as its
    // files are renamed into place, before the content they displaced is recorded (it is
    // then in the area without a record, for up to the grace period without being counted).
    let kept = until("node3's versions settle", Duration::from_secs(30), || {
        let v = status(&c, 2)["versions"].clone();
        let (n, b) = (v["count"].as_u64().unwrap(), v["bytes"].as_u64().unwrap());
        peak.set(peak.get().max(b));
        let files = std::fs::read_dir(data_dir(&c, 2)).unwrap().count() as u64;
        let sizes: BTreeSet<u64> = versions(&c, 2, "").iter().map(|v| v["size"].as_u64().unwrap()).collect();
        let listed = versions(&c, 2, "").len() as u64;
        // Round 7's contents (20,007 bytes), which round 8 displaced, are the newest.
        if n > 0 && listed == n && files == n && sizes == BTreeSet::from([20_007]) { Ok((n, b)) } else { Err(format!("{v}, {listed} listed of sizes {sizes:?}, {files} files")) }
    });
    let peak = peak.get();
    assert!(kept.1 <= CAP && peak <= CAP, "kept {kept:?}, peak {peak}, cap {CAP}");
    let du: u64 = std::fs::read_dir(data_dir(&c, 2)).unwrap().map(|e| std::os::unix::fs::MetadataExt::blocks(&e.unwrap().metadata().unwrap()) * 512).sum();
    assert!(du <= CAP, "the versions directory holds {du} bytes, cap {CAP}");
    let sizes: BTreeSet<u64> = versions(&c, 2, "").iter().map(|v| v["size"].as_u64().unwrap()).collect();
    assert_eq!(sizes, BTreeSet::from([20_007]), "only the newest are kept: round 7's contents, which round 8 replaced");
    eprintln!("cap {CAP}: {} versions, {} bytes kept after 320 overwrites (peak {peak}), du {du}", kept.0, kept.1);
    // Node 2: everything it kept goes once older than 15 s, at its expiry, not on a timer.
    // Its last versions were displaced before round 8 converged, so at least the 5 s node 3
    // took to settle have passed: they are due within 11 s.
    until("node2 keeps versions", Duration::from_secs(30), || {
        let n = status(&c, 1)["versions"]["count"].as_u64().unwrap();
        if n > 0 { Ok(()) } else { Err("none yet".into()) }
    });
    until("node2's versions expire", Duration::from_secs(25), || {
        let n = status(&c, 1)["versions"]["count"].as_u64().unwrap();
        let files = std::fs::read_dir(data_dir(&c, 1)).unwrap().count();
        if n == 0 && files == 0 { Ok(()) } else { Err(format!("{n} versions, {files} files")) }
    });
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Below `min_free_percent` free space no new version is kept, and the status says so;
/// with space again, versions are kept again. (Node 2's webroot is a 40 MiB tmpfs.)
#[test]
fn versions_stop_when_free_space_is_low_and_say_so() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: mounting a small file system needs root");
        return;
    }
    let mut c = Cluster::new(2, Options::default());
    let web = c.nodes[1].home.join("webroot");
    assert!(Command::new("mount").args(["-t", "tmpfs", "-o", "size=40m", "tmpfs"]).arg(&web).status().unwrap().success());
    let _mount = Tmpfs(web.clone());
    std::fs::create_dir_all(c.nodes[1].path("")).unwrap();
    c.write_config(1, &Options { delay: 0, extra: "[versions]\nmin_free_percent = 20\n".into() });
    // 34 MiB of 40 taken: 15% free.
    std::fs::write(web.join("filler"), vec![1u8; 34 << 20]).unwrap();
    c.start_all();
    let f = c.nodes[0].path("a.txt");
    write(&f, b"one");
    c.converge("v1", Duration::from_secs(30), |t| t.get("a.txt").map(|_| ()).ok_or_else(|| "not yet".into()));
    write(&f, b"two");
    c.converge("v2", Duration::from_secs(30), |t| if t["a.txt"].hash == hash(b"two") { Ok(()) } else { Err("v1".into()) });
    let v = until("node2 to say it keeps no versions", Duration::from_secs(30), || {
        let v = status(&c, 1)["versions"].clone();
        if v["keeping"] == false && v["stopped"].as_str().is_some_and(|s| s.contains("versions.min_free_percent = 20")) && std::fs::read_dir(data_dir(&c, 1)).unwrap().count() == 0 {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    });
    assert_eq!(v["count"], 0, "{v}");
    until("lsyncd.status to say so", Duration::from_secs(10), || if c.nodes[1].status_file().contains("NOT KEEPING NEW ONES") { Ok(()) } else { Err(c.nodes[1].status_file()) });
    std::fs::remove_file(web.join("filler")).unwrap();
    until("node2 to keep versions again", Duration::from_secs(30), || if status(&c, 1)["versions"]["keeping"] == true { Ok(()) } else { Err("not yet".into()) });
    write(&f, b"three");
    until("the replaced content kept", Duration::from_secs(30), || {
        let v = versions(&c, 1, "a.txt");
        if v.iter().any(|x| x["hash"] == hash(b"two").as_str()) { Ok(()) } else { Err(format!("{v:?}")) }
    });
    c.stop(0);
    c.stop(1);
}

/// kill -9 of a receiver at random moments while it applies a page of 800 overwrites and
/// keeps versions:
/// after a restart every version's file holds exactly its recorded content, there is no
/// file without a record, and every replaced content is among the versions.
#[test]
fn kill9_while_keeping_versions_leaves_no_partial_version_and_loses_nothing() {
    let iterations: u64 = std::env::var("FILESYNC_VERSIONS_KILL9_ITERATIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    let mut c = Cluster::new(2, Options::default());
    c.start_all();
    let content = |round: u64, i: usize| -> Vec<u8> {
        let extra = if i.is_multiple_of(100) { 150_000 } else { i * 37 % 3000 };
        format!("round {round} file {i} {}", "z".repeat(extra)).into_bytes()
    };
    let n = 800;
    for i in 0..n {
        write(&c.nodes[0].path(&format!("d{}/f{i:03}.txt", i % 9)), &content(0, i));
    }
    c.converge("round 0", Duration::from_secs(60), |t| if files_under(t, "") == n { Ok(()) } else { Err(format!("{}", t.len())) });
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut replaced: BTreeSet<String> = BTreeSet::new();
    for round in 1..=iterations {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let kept_before = data_dir(&c, 1).read_dir().map_or(0, |d| d.count());
        for i in 0..n {
            replaced.insert(hash(&content(round - 1, i)));
            write(&c.nodes[0].path(&format!("d{}/f{i:03}.txt", i % 9)), &content(round, i));
        }
        until("node2 to start replacing", Duration::from_secs(60), || {
            let kept = data_dir(&c, 1).read_dir().map_or(0, |d| d.count());
            if kept > kept_before { Ok(()) } else { Err(format!("{kept} files in its versions area")) }
        });
        // Soon after the first replaced file reached the versions area: mid-page, mostly.
        std::thread::sleep(Duration::from_micros(rng % 60_000));
        c.kill9(1);
        c.start(1);
        c.converge(&format!("round {round}"), Duration::from_secs(90), |t| {
            let done = (0..n).filter(|i| t.get(&format!("d{}/f{i:03}.txt", i % 9)).is_some_and(|x| x.hash == hash(&content(round, *i)))).count();
            if done == n { Ok(()) } else { Err(format!("{done} of {n}")) }
        });
    }
    let v = until("every version settled and listed", Duration::from_secs(30), || {
        // By directory: a listing returns at most 5,000.
        let v: Vec<Value> = (0..9).flat_map(|d| versions(&c, 1, &format!("d{d}"))).collect();
        let files: BTreeSet<String> = std::fs::read_dir(data_dir(&c, 1)).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        let listed: BTreeSet<String> = v.iter().map(|x| format!("{:016x}", x["id"].as_u64().unwrap())).collect();
        if files == listed { Ok(v) } else { Err(format!("{} files, {} listed; unlisted: {:?}", files.len(), listed.len(), files.difference(&listed).take(5).collect::<Vec<_>>())) }
    });
    let mut kept: HashMap<String, usize> = HashMap::new();
    for x in &v {
        let data = std::fs::read(data_dir(&c, 1).join(format!("{:016x}", x["id"].as_u64().unwrap()))).unwrap();
        assert_eq!(Some(hash(&data).as_str()), x["hash"].as_str(), "version {x} holds other content than recorded (partial?)");
        assert_eq!(data.len() as u64, x["size"].as_u64().unwrap());
        *kept.entry(hash(&data)).or_default() += 1;
    }
    let lost: Vec<&String> = replaced.iter().filter(|h| !kept.contains_key(*h)).collect();
    assert!(lost.is_empty(), "{} of {} replaced contents are not among node2's {} versions", lost.len(), replaced.len(), v.len());
    eprintln!("kill -9 while keeping versions, {iterations} iterations: {} versions, 0 partial, 0 of {} replaced contents lost", v.len(), replaced.len());
}

/// `rm -rf` of 5,000 files on node 1: held on nodes 2 and 3 (nothing deleted, the status
/// says what and from whom); rejected on node 2, the files come back on node 1 and the hold
/// on node 3 dissolves; deleted again and confirmed on both, it is applied everywhere.
#[test]
fn an_rm_rf_of_5000_files_is_held_then_rejected_or_confirmed() {
    let mut c = Cluster::new(3, Options::default());
    c.start_all();
    let make = |c: &Cluster| {
        for i in 0..5000 {
            write(&c.nodes[0].path(&format!("wp-content/uploads/d{:02}/img{i:04}.jpg", i % 100)), &[(i % 251) as u8; 64]);
        }
    };
    make(&c);
    let count = |t: &Tree| files_under(t, "wp-content/uploads/");
    c.converge("5,000 files everywhere", Duration::from_secs(180), |t| if count(t) == 5000 { Ok(()) } else { Err(format!("{} files", count(t))) });
    let held = |c: &Cluster, i: usize| -> Result<Value, String> {
        let h = status(c, i)["mass_delete_holds"].clone();
        match h.as_array().and_then(|a| a.first()) {
            Some(x) if x["state"] == "held" && x["files"] == 5000 && x["from"] == "node1" => Ok(x.clone()),
            _ => Err(h.to_string()),
        }
    };
    std::fs::remove_dir_all(c.nodes[0].path("wp-content/uploads")).unwrap();
    for i in [1, 2] {
        let h = until(&format!("node{} holds the deletes", i + 1), Duration::from_secs(60), || held(&c, i));
        assert_eq!(h["entries"].as_u64(), Some(5101), "5,000 files and 101 directories: {h}");
        assert_eq!(count(&c.snapshot(i)), 5000, "nothing deleted on node{}", i + 1);
        until("lsyncd.status to say so", Duration::from_secs(10), || if c.nodes[i].status_file().contains("HOLDING 5000 deletes from node1") { Ok(()) } else { Err(c.nodes[i].status_file()) });
    }
    assert!(ctl(&c, 1, &["hold"]).contains("held deletions from node1 (5000 files"));
    // The hold blocks node 1's deletions only: its new files still arrive.
    write(&c.nodes[0].path("wp-content/new-upload.jpg"), b"uploaded during the hold");
    until("node1's new file on nodes 2 and 3 during the hold", Duration::from_secs(30), || {
        if [1, 2].iter().all(|i| c.nodes[*i].path("wp-content/new-upload.jpg").exists()) { Ok(()) } else { Err("not yet".into()) }
    });
    for i in [1, 2] {
        held(&c, i).unwrap();
    }

    // Rejected on node 2: back on node 1, and node 3's hold dissolves.
    let out = ctl(&c, 1, &["hold", "reject"]);
    assert!(out.contains("rejected the mass delete from node1"), "{out}");
    c.converge("the files back on node 1", Duration::from_secs(120), |t| if count(t) == 5000 { Ok(()) } else { Err(format!("{} files", count(t))) });
    until("no hold left on node3", Duration::from_secs(30), || {
        let h = status(&c, 2)["mass_delete_holds"].clone();
        if h.as_array().is_some_and(|a| a.is_empty()) { Ok(()) } else { Err(h.to_string()) }
    });

    // Deleted again; confirmed on both: applied everywhere (node 3 keeps holding until its
    // own confirm, even when node 2 relays the deletions).
    std::fs::remove_dir_all(c.nodes[0].path("wp-content/uploads")).unwrap();
    for i in [1, 2] {
        until(&format!("node{} holds the deletes again", i + 1), Duration::from_secs(60), || held(&c, i));
    }
    let out = ctl(&c, 1, &["hold", "confirm", "--from", "node1"]);
    assert!(out.contains("applied 5101 deletion(s) from node1"), "{out}");
    until("node2 applied them", Duration::from_secs(30), || if count(&c.snapshot(1)) == 0 { Ok(()) } else { Err("not yet".into()) });
    // Node 3 has processed node 2's relayed deletions and still holds them all.
    let relayed = status(&c, 1)["last_seq"].as_u64().unwrap();
    until("node3 to process node2's relay", Duration::from_secs(30), || {
        let seen = status(&c, 2)["peers"]["node2"]["their_seq_processed"].as_u64().unwrap_or(0);
        if seen >= relayed { Ok(()) } else { Err(format!("{seen} < {relayed}")) }
    });
    held(&c, 2).unwrap();
    assert_eq!(count(&c.snapshot(2)), 5000);
    ctl(&c, 2, &["hold", "confirm"]);
    c.converge("deleted everywhere", Duration::from_secs(60), |t| if t.contains_key("wp-content/uploads") { Err("still there".into()) } else { Ok(()) });
    assert_eq!(versions(&c, 2, "wp-content/uploads").iter().filter(|v| v["cause"] == "deleted").count(), 5000, "node3 kept what it deleted");
}

/// A directory of 2,500 files renamed on node 1 is a move, not a mass delete: its deletions
/// arrive pages after its new names, and are applied, not held.
#[test]
fn a_large_move_is_applied_not_held() {
    let mut c = Cluster::new(3, Options::default());
    c.start_all();
    for i in 0..2500 {
        write(&c.nodes[0].path(&format!("gallery/img{i:04}.jpg")), format!("image {i}").as_bytes());
    }
    c.converge("2,500 files", Duration::from_secs(120), |t| if files_under(t, "gallery/") == 2500 { Ok(()) } else { Err(format!("{}", files_under(t, "gallery/"))) });
    std::fs::create_dir(c.nodes[0].path("archive")).unwrap();
    std::fs::rename(c.nodes[0].path("gallery"), c.nodes[0].path("archive/gallery-2024")).unwrap();
    c.converge("moved everywhere", Duration::from_secs(120), |t| {
        let (old, new) = (t.keys().filter(|k| k.starts_with("gallery")).count(), files_under(t, "archive/gallery-2024/"));
        if old == 0 && new == 2500 { Ok(()) } else { Err(format!("{old} old paths, {new} new")) }
    });
    for i in [1, 2] {
        assert!(!c.nodes[i].log().contains("HOLDING"), "node{} held a move: {}", i + 1, c.nodes[i].log());
    }
}

/// A file deleted, then recreated with other content: restoring the deleted version never
/// overwrites the new file; it is written beside it under a name that says so, everywhere.
#[test]
fn a_restore_of_a_path_recreated_since_never_overwrites_it() {
    let mut c = Cluster::new(2, Options::default());
    c.start_all();
    let f = c.nodes[0].path("notes/todo.txt");
    write(&f, b"the old list");
    c.converge("v1", Duration::from_secs(30), |t| t.get("notes/todo.txt").map(|_| ()).ok_or_else(|| "not yet".into()));
    std::fs::remove_file(&f).unwrap();
    c.converge("deleted", Duration::from_secs(30), |t| if t.contains_key("notes/todo.txt") { Err("there".into()) } else { Ok(()) });
    write(&f, b"a new list, written after the delete");
    c.converge("recreated", Duration::from_secs(30), |t| if t.get("notes/todo.txt").is_some_and(|x| x.size > 12) { Ok(()) } else { Err("not yet".into()) });
    let out = ctl(&c, 1, &["restore", "notes/todo.txt"]);
    assert!(out.contains("beside a newer file, as notes/todo.restored-"), "{out}");
    let t = c.converge("restored beside", Duration::from_secs(30), |t| if files_under(t, "notes/") == 2 { Ok(()) } else { Err(format!("{:?}", t.keys().collect::<Vec<_>>())) });
    assert_eq!(t["notes/todo.txt"].hash, hash(b"a new list, written after the delete"), "the recreated file is untouched");
    let (name, item) = t.iter().find(|(k, _)| k.starts_with("notes/todo.restored-")).unwrap();
    assert!(name.ends_with(".txt"), "{name}");
    assert_eq!(item.hash, hash(b"the old list"));
    // Asked again, it says so instead of writing the same content beside it twice.
    let out = ctl(&c, 1, &["restore", "notes/todo.txt"]);
    assert!(out.contains("skipped notes/todo.txt: already restored as notes/todo.restored-"), "{out}");
}

/// (size, mtime) of every file under `root`: a cheap convergence check for timing runs.
fn quick(root: &std::path::Path) -> std::collections::BTreeMap<String, (u64, i64)> {
    use std::os::unix::fs::MetadataExt;
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file() && !e.path().to_string_lossy().contains("/lsyncd") && !e.file_name().to_string_lossy().starts_with(".filesync."))
        .filter_map(|e| e.metadata().ok().map(|m| (e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned(), (m.len(), m.mtime() * 1_000_000_000 + m.mtime_nsec()))))
        .collect()
}

fn du(dir: &std::path::Path) -> u64 {
    walkdir::WalkDir::new(dir).into_iter().flatten().filter_map(|e| e.metadata().ok()).map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512).sum()
}

/// Not a check: the cost of the safety nets. A burst of 2,000 files of 1-8 KiB in 50
/// directories written on node 1 (3 nodes, delay 0), then all of them overwritten once, then
/// 500 of them deleted: time from the first write (or delete) until every node has the same
/// files (median of `FILESYNC_MEASURE_REPS`, default 5, with the defaults and with versions
/// and the hold off, alternately), and what the versions take on disk.
/// `cargo test --test it -- --ignored measure_versions --nocapture`
#[test]
#[ignore]
fn measure_versions_cost() {
    let reps: usize = std::env::var("FILESYNC_MEASURE_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let mut times: HashMap<(bool, &str), Vec<f64>> = HashMap::new();
    let mut disk = Vec::new();
    for rep in 0..reps * 2 {
        let keep = rep % 2 == 0;
        let extra = if keep { String::new() } else { "[versions]\nkeep = false\n[mass_delete]\nmax_files = 0\nmax_percent = 0\n".into() };
        let mut c = Cluster::new(3, Options { delay: 0, extra });
        c.start_all();
        let mut rng = 0x1234_5678_9abc_def0u64 ^ rep as u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for (phase, tag) in [("burst", 1u8), ("overwrite", 2u8)] {
            let t0 = std::time::Instant::now();
            for i in 0..2000 {
                let len = 1024 + (next() % 7168) as usize;
                let data: Vec<u8> = (0..len).map(|j| (j as u8).wrapping_mul(31).wrapping_add(tag).wrapping_add(i as u8)).collect();
                write(&c.nodes[0].path(&format!("d{:02}/f{i:04}.bin", i % 50)), &data);
            }
            let want = quick(c.root(0));
            until(phase, Duration::from_secs(300), || {
                for i in 1..3 {
                    if quick(c.root(i)) != want {
                        return Err(format!("node{} behind", i + 1));
                    }
                }
                Ok(())
            });
            times.entry((keep, phase)).or_default().push(t0.elapsed().as_secs_f64());
        }
        let t0 = std::time::Instant::now();
        for i in 0..500 {
            std::fs::remove_file(c.nodes[0].path(&format!("d{:02}/f{i:04}.bin", i % 50))).unwrap();
        }
        let want = quick(c.root(0));
        until("deletes", Duration::from_secs(300), || if (1..3).all(|i| quick(c.root(i)) == want) { Ok(()) } else { Err("behind".into()) });
        times.entry((keep, "delete 500")).or_default().push(t0.elapsed().as_secs_f64());
        c.converge("identical", Duration::from_secs(60), |_| Ok(()));
        if keep {
            let v = until("versions settled", Duration::from_secs(30), || {
                let v = status(&c, 1)["versions"].clone();
                if v["count"].as_u64() == Some(2500) { Ok(v) } else { Err(v.to_string()) }
            });
            disk.push((v["bytes"].as_u64().unwrap(), du(&data_dir(&c, 1)), du(&c.nodes[1].home.join("webroot/lsyncd/var/state/versions"))));
        }
    }
    let median = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    for phase in ["burst", "overwrite", "delete 500"] {
        let (on, off) = (&times[&(true, phase)], &times[&(false, phase)]);
        eprintln!("{phase}: safety nets on {:.2} s, off {:.2} s (medians of {reps}; ratio {:.2}); on {on:.2?}, off {off:.2?}", median(on), median(off), median(on) / median(off));
    }
    eprintln!("versions after 2,000 files overwritten once and 500 deleted (status bytes, du of data/, du of versions/ with records): {disk:?}");
}
