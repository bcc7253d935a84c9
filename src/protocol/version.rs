//! Version vectors: one counter per node that changed a path. They decide whether a remote
//! version replaces ours (newer), is ignored (older or equal) or is a conflict (concurrent).

use serde::{Deserialize, Serialize};

use super::NodeId;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(Vec<(NodeId, u64)>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    Equal,
    /// `self` has seen everything `other` has, and more.
    Newer,
    Older,
    Concurrent,
}

impl VersionVector {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    pub fn get(&self, node: NodeId) -> u64 {
        self.0.iter().find(|(n, _)| *n == node).map_or(0, |(_, c)| *c)
    }

    /// This vector with `node`'s counter advanced: the version of a change made on `node`.
    pub fn bumped(&self, node: NodeId) -> Self {
        let mut v = self.0.clone();
        match v.iter_mut().find(|(n, _)| *n == node) {
            Some((_, c)) => *c += 1,
            None => {
                v.push((node, 1));
                v.sort_unstable();
            }
        }
        Self(v)
    }

    /// The element-wise maximum: a version that has seen both.
    pub fn merged(&self, other: &Self) -> Self {
        let mut v = self.0.clone();
        for &(n, c) in &other.0 {
            match v.iter_mut().find(|(m, _)| *m == n) {
                Some((_, mine)) => *mine = (*mine).max(c),
                None => v.push((n, c)),
            }
        }
        v.sort_unstable();
        Self(v)
    }

    /// Whether `other` has seen everything `self` has (`self <= other`).
    pub fn seen_by(&self, other: &Self) -> bool {
        self.0.iter().all(|&(n, c)| other.get(n) >= c)
    }

    pub fn compare(&self, other: &Self) -> Ordering {
        let (mut greater, mut less) = (false, false);
        for &(n, c) in self.0.iter().chain(other.0.iter()) {
            let (a, b) = (self.get(n), other.get(n));
            let _ = c;
            if a > b {
                greater = true;
            } else if a < b {
                less = true;
            }
        }
        match (greater, less) {
            (false, false) => Ordering::Equal,
            (true, false) => Ordering::Newer,
            (false, true) => Ordering::Older,
            (true, true) => Ordering::Concurrent,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn counters(&self) -> &[(NodeId, u64)] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(pairs: &[(NodeId, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for &(n, c) in pairs {
            for _ in 0..c {
                v = v.bumped(n);
            }
        }
        v
    }

    #[track_caller]
    fn check(a: &[(NodeId, u64)], b: &[(NodeId, u64)], expected: Ordering) {
        let (a, b) = (vv(a), vv(b));
        assert_eq!(a.compare(&b), expected, "{a:?} vs {b:?}");
        let mirrored = match expected {
            Ordering::Newer => Ordering::Older,
            Ordering::Older => Ordering::Newer,
            o => o,
        };
        assert_eq!(b.compare(&a), mirrored, "{b:?} vs {a:?}");
    }

    #[test]
    fn compare_table() {
        check(&[], &[], Ordering::Equal);
        check(&[(1, 1)], &[], Ordering::Newer);
        check(&[(1, 2)], &[(1, 1)], Ordering::Newer);
        check(&[(1, 1), (2, 1)], &[(1, 1)], Ordering::Newer);
        check(&[(1, 1)], &[(2, 1)], Ordering::Concurrent);
        check(&[(1, 2), (2, 1)], &[(1, 1), (2, 2)], Ordering::Concurrent);
        check(&[(1, 3), (2, 1)], &[(1, 3), (2, 1)], Ordering::Equal);
    }

    #[test]
    fn merged_dominates_both() {
        let a = vv(&[(1, 2), (2, 1)]);
        let b = vv(&[(1, 1), (3, 4)]);
        let m = a.merged(&b);
        assert!(matches!(m.compare(&a), Ordering::Newer));
        assert!(matches!(m.compare(&b), Ordering::Newer));
        assert_eq!(m, b.merged(&a), "merge is symmetric");
    }
}
