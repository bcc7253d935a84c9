//! Local writes racing a peer's version: an append while a big page that replaces or
//! deletes the file is applied, an append loop against a delete, two conflicts lost by one
//! node within a second, a slow upload into a directory created just before, a directory
//! moved while a page is written into it. Nothing a local writer finished is lost, no
//! receiver sees half an upload, no temp file stays visible.

use std::io::{Read, Seek, Write};
use std::time::{Duration, Instant};

use crate::agent_churn::temp_files;
use crate::support::cluster::{Cluster, Options, write};
use crate::support::poll::until;

const T: Duration = Duration::from_secs(60);

/// Appends a line through one descriptor and returns the file's whole content as that
/// descriptor sees it (what really landed in that inode).
fn append(path: &std::path::Path, line: &str) -> Option<Vec<u8>> {
    let mut f = std::fs::OpenOptions::new().read(true).append(true).open(path).ok()?;
    f.write_all(line.as_bytes()).ok()?;
    let mut v = Vec::new();
    f.rewind().ok()?;
    f.read_to_end(&mut v).ok()?;
    Some(v)
}

fn all_contents(c: &Cluster) -> Vec<Vec<u8>> {
    walkdir::WalkDir::new(c.root(0)).into_iter().flatten().filter(|e| e.file_type().is_file()).filter_map(|e| std::fs::read(e.path()).ok()).collect()
}

fn conflict_copies(c: &Cluster, i: usize) -> Vec<String> {
    c.snapshot(i).keys().filter(|k| k.contains(".sync-conflict-")).cloned().collect()
}

/// Node 2 overwrites (or deletes) P in the same batch as 900 new files (delay 1 s: one
/// batch, one page); node 1 appends a line to P the moment it starts applying that page (P
/// was quiet before, so nothing holds it back). Node 1's appended content survives on every
/// node (as P, or as a conflict copy next to node 2's version), five times over.
fn append_during_big_page(delete: bool) {
    let mut c = Cluster::new(2, Options { delay: 1, extra: String::new() });
    c.start_all();
    for k in 0..5 {
        let rel = format!("doc/P{k}.txt");
        let p0 = c.nodes[0].path(&rel);
        write(&p0, b"base\n");
        c.converge("P everywhere", T, |t| if t.contains_key(&rel) { Ok(()) } else { Err("missing".into()) });
        std::thread::sleep(Duration::from_millis(2100)); // quiet for longer than write_quiet
        let r1 = c.root(1).to_owned();
        let batch = c.nodes[0].path(&format!("batch{k}"));
        let appended = std::thread::scope(|s| {
            let t = s.spawn(|| {
                let deadline = Instant::now() + T;
                while !batch.exists() {
                    assert!(Instant::now() < deadline, "batch never arrived");
                    std::thread::sleep(Duration::from_micros(200));
                }
                append(&p0, "local line\n").expect("append")
            });
            for i in 0..900 {
                write(&r1.join(format!("batch{k}/f{i:03}.txt")), format!("file {i} {}", "x".repeat(i % 300)).as_bytes());
            }
            // What node 2 replaces is what its user saw: the race is only real if that is
            // not node 1's appended content yet.
            let replaced = std::fs::read(r1.join(&rel)).unwrap();
            if delete {
                std::fs::remove_file(r1.join(&rel)).unwrap();
            } else {
                std::fs::write(r1.join(&rel), format!("node2's version {k}\n")).unwrap();
            }
            assert_eq!(replaced, b"base\n", "round {k}: node 2 already had node 1's append; no race");
            t.join().unwrap()
        });
        c.converge("after the race", T, |_| Ok(()));
        until("node1's append on every node", T, || {
            let all = all_contents(&c);
            if all.contains(&appended) { Ok(()) } else { Err(format!("round {k}: the append ({:?}) exists nowhere; copies {:?}", String::from_utf8_lossy(&appended), conflict_copies(&c, 0))) }
        });
        if !delete {
            let mine = format!("node2's version {k}\n").into_bytes();
            let all = all_contents(&c);
            assert!(all.contains(&mine) || String::from_utf8_lossy(&appended).contains("node2's version"), "round {k}: node2's version lost");
        }
    }
}

#[test]
fn append_while_a_page_overwrites_the_file_keeps_the_line() {
    append_during_big_page(false);
}

#[test]
fn append_while_a_page_deletes_the_file_keeps_the_line() {
    append_during_big_page(true);
}

/// A delete on node 2 while node 1 keeps appending: node 1's content wins (edit beats
/// delete) and no node keeps copies of node 1's own older content.
#[test]
fn appends_racing_a_delete_make_no_copies_of_their_own_history() {
    let mut c = Cluster::new(3, Options::default());
    c.start_all();
    let p = c.nodes[0].path("log.txt");
    write(&p, b"start\n");
    c.converge("log everywhere", T, |t| if t.contains_key("log.txt") { Ok(()) } else { Err("missing".into()) });
    std::fs::remove_file(c.nodes[1].path("log.txt")).unwrap();
    let mut last = Vec::new();
    for i in 0..25 {
        last = append(&p, &format!("line {i}\n")).unwrap_or(last);
        std::thread::sleep(Duration::from_millis(40));
    }
    let t = c.converge("appends won", T, |t| match t.get("log.txt") {
        Some(i) if i.hash == blake3::hash(&last).to_hex().to_string() => Ok(()),
        other => Err(format!("{other:?}")),
    });
    let copies: Vec<&String> = t.keys().filter(|k| k.contains("sync-conflict")).collect();
    assert!(copies.is_empty(), "copies of node1's own older content: {copies:?}");
}

/// Two conflicts on one file within one second, lost by the same node: both losing
/// versions are kept, under two names.
#[test]
fn two_losses_in_one_second_keep_two_copies() {
    let mut c = Cluster::new(2, Options::default());
    c.start_all();
    write(&c.nodes[0].path("doc.txt"), b"original");
    c.converge("doc everywhere", T, |t| if t.contains_key("doc.txt") { Ok(()) } else { Err("missing".into()) });
    let base = filetime::FileTime::from_unix_time(2_000_000_000, 0);
    for (round, (mine, theirs)) in [(&b"node1 loses once"[..], &b"node2 wins once"[..]), (&b"node1 loses twice"[..], &b"node2 wins twice"[..])].into_iter().enumerate() {
        c.stop(0);
        let p1 = c.nodes[0].path("doc.txt");
        std::fs::write(&p1, mine).unwrap();
        // Both of node 1's losing versions carry an mtime in the same second.
        filetime::set_file_mtime(&p1, filetime::FileTime::from_unix_time(2_000_000_000, round as u32 * 1000)).unwrap();
        // Node 2 is running: its version appears with its mtime already set (written beside
        // the tree and renamed in), or its scanner may record the write's own mtime first.
        let p2 = c.nodes[1].path("doc.txt");
        let staged = c.dir.path().join(format!("doc-node2-{round}"));
        std::fs::write(&staged, theirs).unwrap();
        filetime::set_file_mtime(&staged, filetime::FileTime::from_unix_time(base.unix_seconds() + 10 + round as i64, 0)).unwrap();
        std::fs::rename(&staged, &p2).unwrap();
        until("node2 to record its edit", T, || {
            let v: serde_json::Value = serde_json::from_str(&c.ctl(1, "status")).map_err(|e| e.to_string())?;
            if v["pending_local"].as_u64() == Some(0) { Ok(()) } else { Err(v["pending_local"].to_string()) }
        });
        c.start(0);
        c.converge("conflict resolved", T, |t| match t.get("doc.txt") {
            Some(i) if i.hash == blake3::hash(theirs).to_hex().to_string() => Ok(()),
            other => Err(format!("{other:?}")),
        });
    }
    let t = c.converge("both copies", T, |t| {
        let n = t.keys().filter(|k| k.contains("sync-conflict")).count();
        if n == 2 { Ok(()) } else { Err(format!("{n} copies: {:?}", t.keys().collect::<Vec<_>>())) }
    });
    let copies: Vec<Vec<u8>> = t.keys().filter(|k| k.contains("sync-conflict")).map(|k| std::fs::read(c.nodes[1].path(k)).unwrap()).collect();
    assert!(copies.contains(&b"node1 loses once".to_vec()) && copies.contains(&b"node1 loses twice".to_vec()), "{copies:?}");
}

/// A 20 MiB upload written slowly into a directory created just before: receivers never
/// show it partly written.
#[test]
fn a_slow_upload_into_a_new_directory_is_never_seen_half_written() {
    let mut c = Cluster::new(2, Options::default());
    c.start_all();
    let dir = c.nodes[0].path("uploads/2026/11");
    let recv = c.nodes[1].path("uploads/2026/11/movie.mp4");
    const MIB: usize = 1024 * 1024;
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            std::fs::create_dir_all(&dir).unwrap();
            let mut f = std::fs::File::create(dir.join("movie.mp4")).unwrap();
            for i in 0..20 {
                f.write_all(&vec![i as u8; MIB]).unwrap();
                std::thread::sleep(Duration::from_millis(150));
            }
            drop(f);
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let deadline = Instant::now() + T;
        loop {
            if let Ok(m) = std::fs::metadata(&recv) {
                assert_eq!(m.len() as usize, 20 * MIB, "a receiver shows the upload half written");
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "upload never arrived");
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    c.converge("upload", T, |_| Ok(()));
}

/// The user moves a directory around while a peer's page is written into it: the files
/// end up somewhere consistent on every node and no temp file stays visible.
#[test]
fn a_directory_moved_while_a_page_is_written_into_it_leaves_no_temp_files() {
    let mut c = Cluster::new(2, Options::default());
    c.start_all();
    std::fs::create_dir_all(c.nodes[0].path("gallery")).unwrap();
    c.converge("gallery everywhere", T, |t| if t.contains_key("gallery") { Ok(()) } else { Err("missing".into()) });
    let r0 = c.root(0).to_owned();
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..900 {
                write(&r0.join(format!("gallery/img{i:03}.jpg")), &vec![(i % 251) as u8; 2000 + i * 10]);
            }
        });
        let r1 = c.root(1).to_owned();
        let (mut a, mut b) = (r1.join("gallery"), r1.join("gallery-moved"));
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            if std::fs::rename(&a, &b).is_ok() {
                std::mem::swap(&mut a, &mut b);
            }
            std::thread::sleep(Duration::from_millis(7));
        }
    });
    c.converge("after the moves", Duration::from_secs(120), |_| Ok(()));
    for i in 0..2 {
        let root = c.root(i).to_owned();
        until("no temp files", Duration::from_secs(20), || {
            let t = temp_files(&root);
            if t.is_empty() { Ok(()) } else { Err(format!("{t:?}")) }
        });
    }
    let t = c.snapshot(0);
    let imgs = t.keys().filter(|k| k.contains("/img")).count();
    assert_eq!(imgs, 900, "every image survives the moves");
}

/// The uploads folder of a new month appears on both nodes at once: node 1's upload creates
/// it, node 2's web application writes its own upload into it the moment node 2's agent
/// has made it (before or after the agent's watch on it exists). The agent's events for
/// the directory it made are its own echo, but the file in it is the user's: it must reach
/// node 1 without waiting for a periodic rescan.
#[test]
fn a_file_written_into_a_directory_the_agent_just_made_is_synced() {
    let mut c = Cluster::new(2, Options::default());
    c.start_all();
    let n = 25;
    let root2 = c.root(1).to_owned();
    let writer = std::thread::spawn(move || {
        for i in 0..n {
            let d = root2.join(format!("uploads/m{i}"));
            let deadline = Instant::now() + T;
            // As fast as a web application can: no sleep between looks.
            while !d.is_dir() {
                assert!(Instant::now() < deadline, "{} never appeared on node 2", d.display());
                std::hint::spin_loop();
            }
            std::fs::write(d.join("from-node2.jpg"), format!("node 2's upload {i}")).unwrap();
        }
    });
    for i in 0..n {
        write(&c.nodes[0].path(&format!("uploads/m{i}/from-node1.jpg")), format!("node 1's upload {i}").as_bytes());
    }
    writer.join().unwrap();
    until("every upload on both nodes", Duration::from_secs(30), || {
        for i in 0..n {
            for node in 0..2 {
                for f in ["from-node1.jpg", "from-node2.jpg"] {
                    if !c.nodes[node].path(&format!("uploads/m{i}/{f}")).exists() {
                        return Err(format!("uploads/m{i}/{f} missing on node{}", node + 1));
                    }
                }
            }
        }
        Ok(())
    });
}
