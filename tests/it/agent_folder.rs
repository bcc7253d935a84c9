//! Folder identity and what a peer's file may become on disk: agents syncing different
//! folders refuse each other; a node whose sync folder changed rebuilds its index instead of
//! announcing the old folder's files as deleted; a setuid file arrives without its special
//! bits and owned like its directory; a sync root swapped for a symlink is never written
//! through; what a scan could not read is not taken for deleted.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use crate::support::cluster::{Cluster, Options, write};
use crate::support::poll::until;

const T: Duration = Duration::from_secs(60);

fn set_folder(c: &Cluster, i: usize, folder: &str, root: Option<&std::path::Path>) {
    c.write_config(i, &Options { delay: 0, extra: format!("folder_id = \"{folder}\"") });
    if let Some(r) = root {
        let text = std::fs::read_to_string(&c.nodes[i].config).unwrap();
        let text = text.replace(&format!("root = \"{}\"", c.nodes[i].root.display()), &format!("root = \"{}\"", r.display()));
        std::fs::write(&c.nodes[i].config, text).unwrap();
    }
}

#[test]
fn peers_of_another_folder_are_refused_and_a_changed_folder_deletes_nothing() {
    let mut c = Cluster::new(2, Options::default());
    for i in 0..2 {
        set_folder(&c, i, "shop:uploads:1", None);
    }
    c.start_all();
    write(&c.nodes[0].path("img/a.jpg"), b"a");
    write(&c.nodes[1].path("img/b.jpg"), b"b");
    c.converge("uploads synced", T, |t| if t.contains_key("img/a.jpg") && t.contains_key("img/b.jpg") { Ok(()) } else { Err("missing".into()) });

    // Node 2 moves to another folder (a new sync path holding other files), node 1 does not yet.
    let new2 = c.nodes[1].home.join("webroot/NEWROOT");
    std::fs::create_dir_all(new2.join("core")).unwrap();
    std::fs::write(new2.join("core/index.php"), b"<?php").unwrap();
    c.stop(1);
    set_folder(&c, 1, "shop:ROOT:2", Some(&new2));
    c.start(1);
    until("node2 refuses node1's folder", T, || {
        let log = c.nodes[1].log();
        if log.contains("syncs another folder") && log.contains("rebuilt by scanning") { Ok(()) } else { Err(log) }
    });
    until("node1 is told too", T, || {
        let s = c.nodes[0].status_file();
        if s.contains("REFUSED peer node2") || c.nodes[0].log().contains("syncs another folder") { Ok(()) } else { Err(s) }
    });
    write(&c.nodes[0].path("img/c.jpg"), b"c");
    std::thread::sleep(Duration::from_secs(2)); // give a wrong exchange every chance to happen
    assert!(!new2.join("img").exists(), "node1's old-folder files were written into node2's new folder");
    assert!(!c.nodes[0].path("core").exists(), "node2's new folder leaked into node1's old one");
    for f in ["img/a.jpg", "img/b.jpg", "img/c.jpg"] {
        assert!(c.nodes[0].path(f).exists(), "{f} deleted on node1");
    }
    assert!(c.nodes[1].path("img/a.jpg").exists() && c.nodes[1].path("img/b.jpg").exists(), "node2's old folder was emptied");

    // Node 1 follows: both sync the new folder; nothing in either old folder is deleted.
    let new1 = c.nodes[0].home.join("webroot/NEWROOT");
    std::fs::create_dir_all(&new1).unwrap();
    c.stop(0);
    set_folder(&c, 0, "shop:ROOT:2", Some(&new1));
    c.start(0);
    until("the new folder syncs", T, || if new1.join("core/index.php").exists() { Ok(()) } else { Err("not yet".into()) });
    for f in ["img/a.jpg", "img/b.jpg", "img/c.jpg"] {
        assert!(c.nodes[0].path(f).exists(), "{f} deleted from node1's old folder");
    }
    assert!(!new1.join("img").exists() && !new2.join("img").exists(), "old-folder files in the new folder");
}

#[test]
fn a_setuid_file_arrives_without_special_bits_owned_like_its_directory() {
    let mut c = Cluster::new(2, Options::default());
    c.start_all();
    std::fs::create_dir_all(c.nodes[1].path("up")).unwrap();
    std::os::unix::fs::chown(c.nodes[1].path("up"), Some(65534), Some(65534)).unwrap();
    std::fs::create_dir_all(c.nodes[0].path("up")).unwrap();
    c.converge("up", T, |t| if t.contains_key("up") { Ok(()) } else { Err("missing".into()) });
    let evil = c.nodes[0].path("up/shell");
    write(&evil, b"#!/bin/sh\nid\n");
    std::os::unix::fs::chown(&evil, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::create_dir(c.nodes[0].path("up/shared")).unwrap();
    std::fs::set_permissions(c.nodes[0].path("up/shared"), std::fs::Permissions::from_mode(0o2777)).unwrap();
    until("shell on node2", T, || if c.nodes[1].path("up/shell").exists() && c.nodes[1].path("up/shared").exists() { Ok(()) } else { Err("missing".into()) });
    let m = std::fs::metadata(c.nodes[1].path("up/shell")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755, "special bits replicated");
    assert_eq!((m.uid(), m.gid()), (65534, 65534), "not owned like its directory");
    let d = std::fs::metadata(c.nodes[1].path("up/shared")).unwrap();
    assert_eq!(d.mode() & 0o7777, 0o777, "setgid directory replicated");
    assert_eq!(d.uid(), 65534);
}

#[test]
fn a_sync_root_swapped_for_a_symlink_is_never_written_through() {
    let mut c = Cluster::new(2, Options::default());
    c.start_all();
    write(&c.nodes[0].path("first.txt"), b"1");
    c.converge("first", T, |t| if t.contains_key("first.txt") { Ok(()) } else { Err("missing".into()) });
    // The web user replaces node2's ROOT with a link to a directory it must not reach.
    let outside = c.dir.path().join("etc-like");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("passwd"), b"root:x:0:0").unwrap();
    let root2 = c.nodes[1].root.clone();
    std::fs::rename(&root2, c.nodes[1].home.join("webroot/ROOT.old")).unwrap();
    std::os::unix::fs::symlink(&outside, &root2).unwrap();
    write(&c.nodes[0].path("passwd"), b"evil");
    write(&c.nodes[0].path("planted.txt"), b"evil");
    until("node2 refuses the swapped root", T, || {
        let log = c.nodes[1].log();
        if log.contains("cannot be opened: a symlink or a file was put in its place") { Ok(()) } else { Err(log) }
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(std::fs::read(outside.join("passwd")).unwrap(), b"root:x:0:0");
    assert!(!outside.join("planted.txt").exists(), "written through the swapped root");
    // Nothing of the outside directory is announced to node1 either.
    assert!(std::fs::read(c.nodes[0].path("passwd")).unwrap() == b"evil");
}

/// Node `i`'s agent's descriptor limit, lowered and put back with `prlimit`.
struct FdLimit {
    pid: String,
    soft: String,
}

impl FdLimit {
    fn of(c: &Cluster, i: usize) -> FdLimit {
        let pid = c.nodes[i].child.as_ref().unwrap().id().to_string();
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let soft = limits.lines().find(|l| l.starts_with("Max open files")).unwrap().split_whitespace().nth(3).unwrap().to_owned();
        FdLimit { pid, soft }
    }

    /// Leaves the agent `spare` descriptors beyond those it has open now.
    /// (The limit caps descriptor numbers, not their count: below it, free numbers between
    /// open ones count as spare too.)
    fn spare(&self, spare: usize) {
        let open: std::collections::BTreeSet<usize> = std::fs::read_dir(format!("/proc/{}/fd", self.pid)).unwrap().map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap()).collect();
        let limit = (0..).find(|&n| n - open.range(..n).count() == spare).unwrap();
        self.set(&limit.to_string());
    }

    fn restore(&self) {
        self.set(&self.soft);
    }

    fn set(&self, n: &str) {
        assert!(std::process::Command::new("prlimit").args(["--pid", &self.pid, &format!("--nofile={n}:")]).status().unwrap().success());
    }
}

/// Waits until node `i`'s log says it ran out of descriptors.
fn ran_out(c: &Cluster, i: usize, what: &str) {
    until(what, T, || if c.nodes[i].log().contains("os error 24") { Ok(()) } else { Err("no EMFILE in the log yet".into()) });
}

/// Level `k` (0 = the top) of a chain of 200 nested folders `n`, each holding `f.txt` and
/// three empty folders beside the next `n`. A walk holds a folder's descriptor while any
/// of its subfolders waits for its turn, so going down the chain it holds one for every
/// level where a sibling of `n` is listed before it (the last listed is read first:
/// three levels in four, in whatever order the folder lists them): this is what runs a
/// scan out of descriptors.
fn deep(k: usize) -> String {
    format!("{}f.txt", "n/".repeat(k + 1))
}

/// Which of the chain's 200 files node `i` has.
fn deep_on(c: &Cluster, i: usize) -> Vec<usize> {
    (0..200).filter(|&k| c.nodes[i].path(&deep(k)).exists()).collect()
}

/// A cluster of two whose node 1 holds the 200-level chain, converged, with the peers'
/// mass-delete hold off (it would hide what node 1 announced).
fn with_a_chain() -> Cluster {
    let mut c = Cluster::new(2, Options { extra: "[mass_delete]\nmax_files = 0\nmax_percent = 0".into(), ..Options::default() });
    for k in 0..200 {
        write(&c.nodes[0].path(&deep(k)), format!("level {k}").as_bytes());
        for j in 0..3 {
            std::fs::create_dir(c.nodes[0].path(&format!("{}l{j}", "n/".repeat(k + 1)))).unwrap();
        }
    }
    c.start_all();
    until("node 2 has the whole chain", T, || if deep_on(&c, 1).len() == 200 { Ok(()) } else { Err(format!("{} files", deep_on(&c, 1).len())) });
    c
}

/// A scan that cannot read part of the tree (here the agent runs out of file descriptors
/// 24 levels down a 200-level chain) must not take what it could not see for deleted:
/// before, every file under a directory it could not open was announced as deleted, and
/// deleted on every peer.
#[test]
fn a_subtree_the_scan_cannot_read_is_not_deleted_anywhere() {
    let c = with_a_chain();
    let limit = FdLimit::of(&c, 0);
    // Room for the command below and a few levels, not for 200.
    limit.spare(24);
    assert_eq!(c.ctl(0, "rescan").trim(), "rescan queued");
    ran_out(&c, 0, "the rescan ran out of descriptors");
    limit.restore();
    // A change after the rescan: once node 2 has it, it has everything node 1 announced before.
    write(&c.nodes[0].path("after.txt"), b"after the rescan");
    until("after.txt on node 2", T, || if c.nodes[1].path("after.txt").exists() { Ok(()) } else { Err("missing".into()) });
    assert_eq!((deep_on(&c, 0).len(), deep_on(&c, 1).len()), (200, 200), "files were deleted:\n{}", c.nodes[1].log());
    // Node 1's own index still counts them (the status is refreshed within a second).
    until("node 1's index counts 201 files", T, || {
        let files = serde_json::from_str::<serde_json::Value>(&c.ctl(0, "status")).unwrap()["files"].as_u64();
        if files == Some(201) { Ok(()) } else { Err(format!("{files:?} files")) }
    });
}

/// Deletions a scan could not see, because it could not read their directories, are sent
/// once the tree can be read again, without another change to set them off: the agent
/// scans the whole tree again a few seconds after an incomplete scan (backing off while
/// it stays incomplete).
#[test]
fn deletions_under_a_subtree_the_scan_could_not_read_are_sent_when_it_can() {
    let c = with_a_chain();
    let limit = FdLimit::of(&c, 0);
    // While paused, the watcher's events for the deletions wait in the batch; the rescan
    // queued with them makes it one scan of the whole tree, which runs out of descriptors.
    assert_eq!(c.ctl(0, "pause").trim(), "paused");
    for k in (0..200).step_by(4) {
        std::fs::remove_file(c.nodes[0].path(&deep(k))).unwrap();
    }
    limit.spare(24);
    assert_eq!(c.ctl(0, "rescan").trim(), "rescan queued");
    assert_eq!(c.ctl(0, "resume").trim(), "resumed");
    ran_out(&c, 0, "the scan ran out of descriptors");
    limit.restore();
    let want: Vec<usize> = (0..200).filter(|k| k % 4 != 0).collect();
    until("node 2 deleted what node 1 deleted, and nothing else", T, || {
        let have = deep_on(&c, 1);
        if have == want { Ok(()) } else { Err(format!("{} files on node 2 (want {}):\n{}", have.len(), want.len(), c.nodes[0].log())) }
    });
    assert!(c.nodes[0].log().contains("folder(s) could not be read"), "{}", c.nodes[0].log());
}

/// A folder with more subfolders than the agent has descriptors to spare is read whole:
/// the walk opens a folder when its turn comes, holding one descriptor per level. Before,
/// it opened every subfolder of a folder before going down, so a folder with more
/// subfolders than the descriptors left (by the hard limit, by connections and files in
/// flight) was never read whole, and deletions in it were never sent. Here the agent has
/// 24 to spare for 300 folders.
#[test]
fn a_folder_wider_than_the_descriptors_to_spare_is_read_whole() {
    let mut c = Cluster::new(2, Options { extra: "[mass_delete]\nmax_files = 0\nmax_percent = 0".into(), ..Options::default() });
    let file = |d: usize| format!("cache/d{d}/f.txt");
    for d in 0..300 {
        write(&c.nodes[0].path(&file(d)), format!("file {d}").as_bytes());
    }
    c.start_all();
    let on = |c: &Cluster, i: usize| (0..300).filter(|&d| c.nodes[i].path(&file(d)).exists()).collect::<Vec<_>>();
    until("node 2 has every file", T, || if on(&c, 1).len() == 300 { Ok(()) } else { Err(format!("{} files", on(&c, 1).len())) });
    let limit = FdLimit::of(&c, 0);
    limit.spare(24);
    // The deletions are seen by a scan of the whole tree (their events wait while paused).
    assert_eq!(c.ctl(0, "pause").trim(), "paused");
    for d in (0..300).step_by(3) {
        std::fs::remove_file(c.nodes[0].path(&file(d))).unwrap();
    }
    assert_eq!(c.ctl(0, "rescan").trim(), "rescan queued");
    assert_eq!(c.ctl(0, "resume").trim(), "resumed");
    let want: Vec<usize> = (0..300).filter(|d| d % 3 != 0).collect();
    until("node 2 deleted what node 1 deleted", T, || {
        let have = on(&c, 1);
        if have == want { Ok(()) } else { Err(format!("{} files on node 2 (want {}):\n{}", have.len(), want.len(), c.nodes[0].log())) }
    });
    assert!(!c.nodes[0].log().contains("os error 24"), "the scan ran out of descriptors:\n{}", c.nodes[0].log());
    limit.restore();
}

/// A change whose scan failed for want of descriptors is sent once the agent has them
/// again, without another event: the scan that failed had already taken it from the batch.
/// So is a same-size rewrite with its mtime put back, which the retry's stat cannot tell.
#[test]
fn a_change_whose_scan_ran_out_of_descriptors_is_sent_when_it_can() {
    let mut c = Cluster::new(2, Options { delay: 2, ..Options::default() });
    write(&c.nodes[0].path("sub/first.txt"), b"first");
    c.start_all();
    until("first.txt on node 2", T, || if c.nodes[1].path("sub/first.txt").exists() { Ok(()) } else { Err("missing".into()) });
    let limit = FdLimit::of(&c, 0);
    // Not one descriptor to spare: the path's scan cannot even open the root. (With one,
    // the scan of a single file may fit: it stats the file through the root's descriptor.)
    limit.spare(0);
    write(&c.nodes[0].path("sub/second.txt"), b"written while the agent had no descriptor to spare");
    ran_out(&c, 0, "the scan ran out of descriptors");
    limit.restore();
    until("second.txt on node 2", T, || if c.nodes[1].path("sub/second.txt").exists() { Ok(()) } else { Err(format!("missing:\n{}", c.nodes[0].log())) });
    // Again with a same-size rewrite whose mtime is put back: the full scan that retries it
    // compares stat only, so the failed scan must have marked it to be read again.
    let first = c.nodes[0].path("sub/first.txt");
    let mtime = filetime::FileTime::from_last_modification_time(&std::fs::metadata(&first).unwrap());
    let errors = c.nodes[0].log().matches("os error 24").count();
    limit.spare(0);
    std::os::unix::fs::FileExt::write_all_at(&std::fs::OpenOptions::new().write(true).open(&first).unwrap(), b"FIRST", 0).unwrap();
    filetime::set_file_mtime(&first, mtime).unwrap();
    until("the rewrite's scan ran out of descriptors", T, || if c.nodes[0].log().matches("os error 24").count() > errors { Ok(()) } else { Err("no new EMFILE in the log".into()) });
    limit.restore();
    until("the rewrite on node 2", T, || {
        let got = std::fs::read(c.nodes[1].path("sub/first.txt")).unwrap_or_default();
        if got == b"FIRST" { Ok(()) } else { Err(format!("node 2 has {:?}:\n{}", String::from_utf8_lossy(&got), c.nodes[0].log())) }
    });
}
