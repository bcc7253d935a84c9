//! Which versions a restore brings back (pure, tested below), and the name a restored file
//! gets when it cannot go back under its own.
//!
//! Per path under the request's scope: `id` picks one version; `at: T` the content the path
//! had at T (the oldest version displaced after T, if it was written before T); `deleted_from..deleted_to` the newest
//! deletion in that window; otherwise a file gets its newest version and a folder gets back
//! the files whose newest version is a deletion (the whole tree needs `at` or a window).

use std::collections::BTreeMap;

use time::OffsetDateTime;

use super::store::Record;
use crate::protocol::RelPath;
use crate::protocol::path::MAX_COMPONENT;
use crate::protocol::versions::{Cause, RestoreRequest};

/// `""` (or `/`) is the whole tree.
pub fn scope(path: &str) -> Result<Option<RelPath>, String> {
    let p = path.trim_matches('/');
    if p.is_empty() {
        return Ok(None);
    }
    RelPath::parse(p).map(Some).map_err(|e| format!("path {path:?}: {e}"))
}

pub fn in_scope(scope: Option<&RelPath>, path: &str) -> bool {
    match scope {
        None => true,
        Some(s) => path == s.as_str() || (path.starts_with(s.as_str()) && path.as_bytes().get(s.as_str().len()) == Some(&b'/')),
    }
}

/// One version chosen for a restore, with the newest version of its path (which tells
/// whether the current content is the one that displaced it).
pub struct Pick<'a> {
    pub id: u64,
    pub rec: &'a Record,
    pub newest: &'a Record,
}

const NS: i64 = 1_000_000_000;

pub fn select<'a>(all: &'a [(u64, Record)], req: &RestoreRequest) -> Result<Vec<Pick<'a>>, String> {
    let scope = scope(&req.path)?;
    let mut by_path: BTreeMap<&str, Vec<(u64, &Record)>> = BTreeMap::new();
    for (id, r) in all.iter().filter(|(_, r)| in_scope(scope.as_ref(), &r.path)) {
        by_path.entry(r.path.as_str()).or_default().push((*id, r));
    }
    let newest = |path: &str| by_path.get(path).and_then(|v| v.last()).map(|(_, r)| *r);
    if let Some(id) = req.id {
        let (_, r) = all.iter().find(|(i, _)| *i == id).ok_or_else(|| format!("no version {id} on this node (list them with `filesync ctl versions`)"))?;
        if !in_scope(scope.as_ref(), &r.path) {
            return Err(format!("version {id} is of {}, not under {:?}", r.path, req.path));
        }
        return Ok(vec![Pick { id, rec: r, newest: newest(&r.path).unwrap_or(r) }]);
    }
    if req.deleted_from.is_some() != req.deleted_to.is_some() {
        return Err("give both ends of the deletion window (deleted_from and deleted_to)".into());
    }
    if let (Some(f), Some(t)) = (req.deleted_from, req.deleted_to)
        && f > t
    {
        return Err(format!("the deletion window ends ({t}) before it starts ({f})"));
    }
    if scope.is_none() && req.at.is_none() && req.deleted_from.is_none() {
        return Err(
            "say what to restore: a file or folder, a time (--at), or a deletion window (--deleted-since); every deletion kept here would bring back everything deleted within the retention time"
                .into(),
        );
    }
    // A file scope: the path itself has versions and nothing below it does.
    let single = scope.as_ref().is_some_and(|s| by_path.len() == 1 && by_path.contains_key(s.as_str()));
    let mut out = Vec::new();
    for (path, versions) in &by_path {
        let last = versions.last().expect("BUG: a path is listed for its versions").1;
        let chosen = if let Some(at) = req.at {
            // The first content displaced after T was there at T, unless it was written after
            // T (then what was there at T is not known here).
            versions.iter().find(|(_, r)| r.kept_at_ns > at.saturating_mul(NS)).filter(|(_, r)| r.mtime_ns <= at.saturating_mul(NS))
        } else if let (Some(f), Some(t)) = (req.deleted_from, req.deleted_to) {
            versions.iter().rev().find(|(_, r)| r.cause == Cause::Deleted && (f..=t).contains(&r.kept_at_ns.div_euclid(NS)))
        } else if single || last.cause == Cause::Deleted {
            versions.last()
        } else {
            None
        };
        if let Some((id, r)) = chosen {
            out.push(Pick { id: *id, rec: r, newest: newest(path).unwrap_or(r) });
        }
    }
    Ok(out)
}

/// `photo.jpg` → `photo.restored-20260102-101112.jpg` (the time the version was kept, UTC;
/// `-N` added for the `n`th try), always a valid name of at most 255 bytes.
pub fn beside(path: &RelPath, kept_at_ns: i64, n: u32) -> RelPath {
    let ts = OffsetDateTime::from_unix_timestamp_nanos(kept_at_ns as i128).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let mut tail = format!(".restored-{:04}{:02}{:02}-{:02}{:02}{:02}", ts.year(), u8::from(ts.month()), ts.day(), ts.hour(), ts.minute(), ts.second());
    if n > 1 {
        tail.push_str(&format!("-{n}"));
    }
    let name = path.file_name();
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 && name.len() - i <= 16 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let room = MAX_COMPONENT.saturating_sub(tail.len() + ext.len());
    let mut cut = stem.len().min(room);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    path.with_file_name(&format!("{}{tail}{ext}", &stem[..cut])).unwrap_or_else(|_| path.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(path: &str, at_s: i64, cause: Cause) -> Record {
        Record {
            path: path.into(),
            kept_at_ns: at_s * NS,
            size: 1,
            mtime_ns: 0,
            mode: 0o644,
            hash: Some([at_s as u8; 32]),
            new_hash: None,
            by: "n1".into(),
            cause,
            ino: 1,
            ctime_ns: 0,
            disk_bytes: 4096,
            settled: true,
        }
    }

    fn ids(p: &[Pick]) -> Vec<u64> {
        p.iter().map(|p| p.id).collect()
    }

    #[test]
    fn restores_pick_what_was_asked() {
        let all = vec![
            (1, rec("a/x.txt", 10, Cause::Replaced)),
            (2, rec("a/x.txt", 20, Cause::Replaced)),
            (3, rec("a/y.txt", 30, Cause::Deleted)),
            (4, rec("a/z.txt", 40, Cause::Deleted)),
            (5, rec("a/z.txt", 50, Cause::Replaced)),
            (6, rec("b.txt", 60, Cause::Deleted)),
        ];
        let r = |f: fn(&mut RestoreRequest)| {
            let mut q = RestoreRequest::default();
            f(&mut q);
            select(&all, &q).map(|p| ids(&p))
        };
        // A file: its newest version.
        assert_eq!(r(|q| q.path = "a/x.txt".into()), Ok(vec![2]));
        // A folder: what was deleted there (z was deleted, then came back and was replaced).
        assert_eq!(r(|q| q.path = "a".into()), Ok(vec![3]));
        assert!(r(|_| {}).is_err(), "the whole tree needs a time or a window");
        assert_eq!(r(|q| (q.deleted_from, q.deleted_to) = (Some(0), Some(100))), Ok(vec![3, 4, 6]));
        // As it was at t=15: x had the content kept at 20; y the one kept at 30.
        assert_eq!(r(|q| q.at = Some(15)), Ok(vec![2, 3, 4, 6]));
        // Deleted between 35 and 60.
        assert_eq!(r(|q| (q.deleted_from, q.deleted_to) = (Some(35), Some(60))), Ok(vec![4, 6]));
        assert_eq!(r(|q| q.id = Some(1)), Ok(vec![1]));
        assert!(r(|q| (q.id, q.path) = (Some(1), "b.txt".into())).is_err());
        assert!(r(|q| q.deleted_from = Some(1)).is_err());
        assert!(r(|q| q.path = "../etc".into()).is_err());
    }

    #[test]
    fn names_beside_fit_and_say_so() {
        let p = RelPath::parse("up/photo.jpg").unwrap();
        assert_eq!(beside(&p, 0, 1).as_str(), "up/photo.restored-19700101-000000.jpg");
        assert_eq!(beside(&p, 0, 2).as_str(), "up/photo.restored-19700101-000000-2.jpg");
        let long = RelPath::parse(&("é".repeat(120) + ".pdf")).unwrap();
        let b = beside(&long, 0, 3);
        assert!(b.as_str().len() <= 255 && b.as_str().ends_with("-3.pdf"), "{b}");
    }
}
