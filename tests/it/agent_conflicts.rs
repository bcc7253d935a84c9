//! Concurrent edits of one path on two nodes: a deterministic winner keeps the name on every
//! node, the other version survives as a conflict copy, the log says so. Plus a random
//! churn run in the spirit of lsyncd's churn tests.

use std::time::Duration;

use crate::support::cluster::{Cluster, Options, write};

const T: Duration = Duration::from_secs(60);

#[test]
fn concurrent_edits_keep_both_versions() {
    let mut c = Cluster::new(3, Options::default());
    c.start_all();
    write(&c.nodes[0].path("photo.jpg"), b"original");
    c.converge("original", T, |t| if t.contains_key("photo.jpg") { Ok(()) } else { Err("missing".into()) });

    // Partition: stop node2, edit on node1 and node2 "at the same time", reconnect.
    c.stop(1);
    write(&c.nodes[0].path("photo.jpg"), b"edited on node1");
    std::thread::sleep(Duration::from_millis(20)); // distinct mtimes make the winner obvious
    write(&c.nodes[1].path("photo.jpg"), b"edited on node2, later");
    c.start(1);
    let t = c.converge("conflict resolved", T, |t| {
        let copies: Vec<_> = t.keys().filter(|k| k.contains("sync-conflict")).collect();
        if copies.len() == 1 { Ok(()) } else { Err(format!("conflict copies: {copies:?}")) }
    });
    let copy = t.keys().find(|k| k.contains("sync-conflict")).unwrap().clone();
    // Named for the losing node, with the start of the losing content's hash, extension kept.
    let tag = format!("-node1-{}.jpg", &blake3::hash(b"edited on node1").to_hex()[..8]);
    assert!(copy.starts_with("photo.sync-conflict-") && copy.ends_with(&tag), "{copy} should end with {tag}");
    assert_eq!(std::fs::read(c.nodes[2].path("photo.jpg")).unwrap(), b"edited on node2, later");
    assert_eq!(std::fs::read(c.nodes[2].path(&copy)).unwrap(), b"edited on node1");
    assert!(c.nodes.iter().any(|n| n.log().contains("Conflict: photo.jpg")));
}

#[test]
fn same_content_on_two_nodes_is_not_a_conflict() {
    let mut c = Cluster::new(2, Options::default());
    c.start(0);
    write(&c.nodes[0].path("same.txt"), b"identical");
    write(&c.nodes[1].path("same.txt"), b"identical");
    c.start(1);
    let t = c.converge("merge", T, |t| if t.contains_key("same.txt") { Ok(()) } else { Err("missing".into()) });
    assert_eq!(t.len(), 1, "no conflict copy for identical content: {:?}", t.keys());
}

/// Tiny deterministic PRNG so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Random mkdir/create/append/rename/move-dir/delete on one node, then on two nodes at once.
/// After quiescence all trees are identical, and every upload (a file created and closed,
/// which no later operation touches) exists on every node with the content it was written
/// with: nothing a writer finished is lost.
#[test]
fn random_churn_converges_and_loses_nothing() {
    let mut c = Cluster::new(3, Options::default());
    c.start_all();
    let mut rng = Rng(0x5eed_f11e_5eed_0001);
    let mut uploads: Vec<(String, Vec<u8>)> = Vec::new();
    for phase in 0..2 {
        let writers: Vec<usize> = if phase == 0 { vec![0] } else { vec![0, 1] };
        for step in 0..600 {
            let w = writers[step % writers.len()];
            let step = step + phase * 1000;
            if step % 10 == 0 {
                let name = format!("uploads/n{w}/u{step}.bin");
                let data = vec![(step % 251) as u8; rng.pick(50_000)];
                write(&c.nodes[w].path(&name), &data);
                uploads.push((name, data));
            } else {
                churn_step(&c, w, &mut rng, step);
            }
        }
        c.converge(&format!("churn phase {phase}"), T, |_| Ok(()));
    }
    let t = c.snapshot(2);
    for (name, data) in &uploads {
        let item = t.get(name).unwrap_or_else(|| panic!("upload {name} was lost"));
        assert_eq!(item.hash, blake3::hash(data).to_hex().to_string(), "{name} has wrong content");
    }
    assert!(t.len() > 50, "churn left almost nothing: {}", t.len());
}

fn churn_step(c: &Cluster, w: usize, rng: &mut Rng, step: usize) {
    let root = c.root(w).to_owned();
    let dirs: Vec<std::path::PathBuf> = walkdir::WalkDir::new(&root)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_dir() && !e.path().to_string_lossy().contains("lsyncd") && !e.path().to_string_lossy().contains("uploads"))
        .map(|e| e.path().to_owned())
        .collect();
    let files: Vec<std::path::PathBuf> = walkdir::WalkDir::new(&root)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file() && !e.file_name().to_string_lossy().starts_with(".filesync.") && !e.path().to_string_lossy().contains("uploads"))
        .map(|e| e.path().to_owned())
        .collect();
    let dir = dirs[rng.pick(dirs.len())].clone();
    match rng.pick(10) {
        0 => {
            let _ = std::fs::create_dir(dir.join(format!("d{step}")));
        }
        1..=3 => {
            let _ = std::fs::write(dir.join(format!("f{step}-n{w}.txt")), format!("content {step} from {w}"));
        }
        4 | 5 if !files.is_empty() => {
            use std::io::Write;
            let f = &files[rng.pick(files.len())];
            if let Ok(mut h) = std::fs::OpenOptions::new().append(true).open(f) {
                let _ = write!(h, " +{step}");
            }
        }
        6 if !files.is_empty() => {
            let f = &files[rng.pick(files.len())];
            let _ = std::fs::rename(f, dir.join(format!("r{step}.txt")));
        }
        7 if dirs.len() > 1 => {
            let d = &dirs[1 + rng.pick(dirs.len() - 1)];
            if !dir.starts_with(d) {
                let _ = std::fs::rename(d, dir.join(format!("m{step}")));
            }
        }
        8 if !files.is_empty() => {
            let _ = std::fs::remove_file(&files[rng.pick(files.len())]);
        }
        9 if dirs.len() > 4 => {
            let d = &dirs[1 + rng.pick(dirs.len() - 1)];
            let _ = std::fs::remove_dir_all(d);
        }
        _ => {
            let _ = std::fs::write(dir.join(format!("g{step}-n{w}.txt")), vec![b'x'; rng.pick(200_000)]);
        }
    }
}
