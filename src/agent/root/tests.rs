//! Unit tests of the rooted operations against a temp dir.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

fn setup() -> (tempfile::TempDir, SyncRoot) {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("root")).unwrap();
    let r = SyncRoot::new(d.path().join("root")).with_graveyard(&d.path().join("displaced")).unwrap();
    (d, r)
}

fn p(s: &str) -> RelPath {
    RelPath::parse(s).unwrap()
}

fn temps(dir: &Path) -> Vec<String> {
    walkdir::WalkDir::new(dir).into_iter().flatten().filter_map(|e| e.file_name().to_str().map(str::to_owned)).filter(|n| is_temp_name(n)).collect()
}

#[test]
fn special_bits_never_reach_the_disk_and_owner_follows_the_directory() {
    let (d, r) = setup();
    let sub = d.path().join("root/up");
    std::fs::create_dir(&sub).unwrap();
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(&sub, Some(65534), Some(65534)).unwrap();
    }
    r.write_file(&p("up/x"), b"hi", 0o4755, 1_000_000_000, &Expect::Absent).unwrap();
    let m = std::fs::metadata(sub.join("x")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o755);
    if rustix::process::geteuid().is_root() {
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
    }
    r.mkdir(&p("up/d"), 0o2777).unwrap();
    assert_eq!(std::fs::metadata(sub.join("d")).unwrap().permissions().mode() & 0o7777, 0o777);
    r.set_meta(&p("up/x"), EntryKind::File, 0o6755, 2_000_000_000, &Expect::Anything).unwrap();
    assert_eq!(std::fs::metadata(sub.join("x")).unwrap().permissions().mode() & 0o7777, 0o755);
}

#[test]
fn a_local_write_after_the_decision_is_never_overwritten() {
    let (d, r) = setup();
    let f = d.path().join("root/doc.txt");
    std::fs::write(&f, b"v1").unwrap();
    let seen = r.stat(&p("doc.txt")).unwrap().unwrap();
    // The user appends after the decision was taken.
    std::fs::OpenOptions::new().append(true).open(&f).unwrap().write_all(b" + local line").unwrap();
    let e = r.write_file(&p("doc.txt"), b"remote", 0o644, 5, &Expect::Is(seen.clone())).unwrap_err();
    assert!(matches!(e, RootError::Changed { .. }), "{e}");
    assert_eq!(std::fs::read(&f).unwrap(), b"v1 + local line");
    // A write that keeps size and mtime is still seen (ctime moves).
    let seen = r.stat(&p("doc.txt")).unwrap().unwrap();
    let mt = std::fs::metadata(&f).unwrap().modified().unwrap();
    std::fs::write(&f, b"v2 + local line").unwrap();
    filetime::set_file_mtime(&f, filetime::FileTime::from_system_time(mt)).unwrap();
    assert!(matches!(r.write_file(&p("doc.txt"), b"remote", 0o644, 5, &Expect::Is(seen)), Err(RootError::Changed { .. })));
    assert_eq!(std::fs::read(&f).unwrap(), b"v2 + local line");
    // Unchanged: replaced.
    let seen = r.stat(&p("doc.txt")).unwrap().unwrap();
    r.write_file(&p("doc.txt"), b"remote", 0o644, 5, &Expect::Is(seen)).unwrap();
    assert_eq!(std::fs::read(&f).unwrap(), b"remote");
    // Something appeared where nothing was expected: kept.
    std::fs::write(d.path().join("root/new.txt"), b"mine").unwrap();
    assert!(matches!(r.write_file(&p("new.txt"), b"theirs", 0o644, 5, &Expect::Absent), Err(RootError::Changed { .. })));
    assert_eq!(std::fs::read(d.path().join("root/new.txt")).unwrap(), b"mine");
    assert!(r.reap(true, "n1").is_empty());
    assert!(temps(d.path()).is_empty(), "{:?}", temps(d.path()));
}

/// A writer that opened the file before a peer's version replaced it, and writes after:
/// its write lands in the displaced inode, which is kept as a copy instead of vanishing.
#[test]
fn a_write_into_a_replaced_file_is_kept_as_a_copy() {
    let (d, r) = setup();
    let f = d.path().join("root/log.txt");
    std::fs::write(&f, b"line 1\n").unwrap();
    let mut writer = std::fs::OpenOptions::new().append(true).open(&f).unwrap();
    let seen = r.stat(&p("log.txt")).unwrap().unwrap();
    r.write_file(&p("log.txt"), b"remote", 0o644, 5, &Expect::Is(seen)).unwrap();
    writer.write_all(b"line 2\n").unwrap();
    drop(writer);
    assert_eq!(std::fs::read(&f).unwrap(), b"remote");
    assert!(r.next_reap().is_some());
    let kept = r.reap(true, "node1");
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].as_str().starts_with("log.sync-conflict-") && kept[0].as_str().contains("-node1-") && kept[0].as_str().ends_with(".txt"), "{}", kept[0]);
    assert_eq!(std::fs::read(d.path().join("root").join(kept[0].as_str())).unwrap(), b"line 1\nline 2\n");
    // An untouched displaced file is simply removed.
    let seen = r.stat(&p("log.txt")).unwrap().unwrap();
    r.write_file(&p("log.txt"), b"remote 2", 0o644, 6, &Expect::Is(seen)).unwrap();
    assert!(r.reap(true, "node1").is_empty());
    assert!(temps(d.path()).is_empty(), "{:?}", temps(d.path()));
}

#[test]
fn deletes_keep_what_changed_and_directories_with_content() {
    let (d, r) = setup();
    let f = d.path().join("root/a.txt");
    std::fs::write(&f, b"a").unwrap();
    let seen = r.stat(&p("a.txt")).unwrap().unwrap();
    std::fs::write(&f, b"changed").unwrap();
    assert!(matches!(r.remove(&p("a.txt"), &Expect::Is(seen)), Err(RootError::Changed { .. })));
    assert_eq!(std::fs::read(&f).unwrap(), b"changed");
    let seen = r.stat(&p("a.txt")).unwrap().unwrap();
    assert_eq!(r.remove(&p("a.txt"), &Expect::Is(seen)).unwrap(), Removed::Gone);
    assert!(!f.exists());
    assert!(r.reap(true, "n1").is_empty());
    std::fs::create_dir_all(d.path().join("root/dir")).unwrap();
    std::fs::write(d.path().join("root/dir/keep"), b"k").unwrap();
    assert_eq!(r.remove(&p("dir"), &Expect::Anything).unwrap(), Removed::NotEmpty);
    std::fs::remove_file(d.path().join("root/dir/keep")).unwrap();
    std::fs::write(d.path().join("root/dir").join(temp_name("x")), b"t").unwrap();
    assert_eq!(r.remove(&p("dir"), &Expect::Anything).unwrap(), Removed::Gone, "our temp files do not keep a directory");
    assert!(temps(d.path()).is_empty());
}

#[test]
fn symlinks_are_never_followed_anywhere() {
    let (d, r) = setup();
    let outside = d.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"s").unwrap();
    std::fs::set_permissions(outside.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&outside, d.path().join("root/link")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), d.path().join("root/file-link")).unwrap();
    let e = r.write_file(&p("link/x"), b"evil", 0o644, 0, &Expect::Absent).unwrap_err();
    assert!(e.is_refusal(), "{e}");
    assert!(!outside.join("x").exists());
    assert!(r.open_read(&p("link/secret")).is_err());
    assert!(r.open_read(&p("file-link")).is_err(), "final symlink not followed");
    assert!(r.set_meta(&p("file-link"), EntryKind::File, 0o777, 0, &Expect::Anything).is_err());
    assert_eq!(std::fs::metadata(outside.join("secret")).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(r.remove(&p("link/secret"), &Expect::Anything).is_err());
    assert!(outside.join("secret").exists());
    assert_eq!(r.stat(&p("link/secret")).unwrap(), None);
    let w = r.walk(None, &|_| false).unwrap();
    assert!(w.items.iter().all(|(p, _)| !p.as_str().starts_with("link/")), "{:?}", w.items);
    // The root itself swapped for a symlink: refused, not followed.
    std::fs::rename(d.path().join("root"), d.path().join("root.old")).unwrap();
    std::os::unix::fs::symlink(&outside, d.path().join("root")).unwrap();
    assert!(matches!(r.write_file(&p("y"), b"evil", 0o644, 0, &Expect::Absent), Err(RootError::RootUnsafe(..))));
    let refused = r.walk(None, &|_| false).unwrap_err();
    assert!(matches!(refused, RootError::RootUnsafe(..)) && refused.to_string().contains("a symlink"), "{refused}");
    assert!(!outside.join("y").exists());
}

#[test]
fn any_valid_name_has_a_temp_name_and_temps_vanish_when_dropped() {
    let (d, r) = setup();
    let long = "資料".repeat(40) + ".pdf"; // 244 bytes
    let emoji = "😀".repeat(63) + "abc"; // 255 bytes
    for n in [long, emoji] {
        assert!(temp_name(&n).len() <= 255);
        r.write_file(&p(&n), b"x", 0o644, 0, &Expect::Absent).unwrap();
        assert_eq!(std::fs::read(d.path().join("root").join(&n)).unwrap(), b"x");
    }
    // A temp file whose directory the user moved away is still removed at once.
    let tmp = r.create_temp(&p("moving/f")).unwrap();
    std::fs::rename(d.path().join("root/moving"), d.path().join("root/moved")).unwrap();
    assert!(matches!(r.install(tmp, &Expect::Absent), Err(RootError::Changed { .. })));
    assert!(temps(d.path()).is_empty(), "{:?}", temps(d.path()));
    let tmp = r.create_temp(&p("moved/g")).unwrap();
    std::fs::rename(d.path().join("root/moved"), d.path().join("root/moved2")).unwrap();
    drop(tmp);
    assert!(temps(d.path()).is_empty());
    // Sweep finds leftovers anywhere.
    std::fs::write(d.path().join("root/moved2").join(temp_name("z")), b"").unwrap();
    assert_eq!(r.sweep_temps(), 1);
}

#[test]
fn walk_reports_names_that_cannot_be_synced() {
    let (d, r) = setup();
    let bad = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    std::fs::write(d.path().join("root").join(bad), b"x").unwrap();
    std::fs::create_dir(d.path().join("root/ok")).unwrap();
    let w = r.walk(None, &|_| false).unwrap();
    assert_eq!(w.unsyncable, vec!["caf\u{fffd}.txt".to_owned()]);
    assert_eq!(w.items.len(), 1);
}

use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;

/// A directory moved away after the walk listed it and before its turn to be read is
/// reported as raced (its subtree unseen, not known deleted); one moved after it was read
/// is reported with what it held.
#[test]
fn a_directory_moved_away_before_its_turn_is_raced_not_empty() {
    let (d, r) = setup();
    let root = d.path().join("root");
    for dir in ["a", "b"] {
        std::fs::create_dir_all(root.join(format!("{dir}/sub"))).unwrap();
        std::fs::write(root.join(format!("{dir}/sub/f.txt")), b"x").unwrap();
    }
    let mut seen = Vec::new();
    // Every top-level directory is listed before any is read: move both away on sight.
    let w = r
        .walk_each(None, &|_| false, &mut |q, _| {
            if !q.as_str().contains('/') {
                std::fs::rename(root.join(q.as_str()), d.path().join(format!("moved-{q}"))).unwrap();
            }
            seen.push(q.as_str().to_owned());
        })
        .unwrap();
    let mut raced: Vec<_> = w.raced.iter().map(|q| q.as_str().to_owned()).collect();
    raced.sort();
    assert_eq!(raced, ["a", "b"]);
    assert!(seen.iter().all(|q| !q.contains('/')), "nothing under a moved directory is reported: {seen:?}");
    assert!(w.incomplete.is_empty() && w.errors.is_empty(), "a move is not an error: {:?}", w.errors);
}
