//! Source positions, the one currency every stage shares.
//!
//! A *shard* is the unit of ordering (a generator stream, a file folder, later a Kafka
//! partition or a replication slot). Within a shard every record has a position, and
//! positions strictly increase. Progress stores, per shard, the position to resume
//! from: every record below it is already in the table that holds that progress.
//! [`Progress::advance`] is the only way progress changes, and it never moves back.

use std::collections::BTreeMap;
use std::fmt;

/// Resume position per shard. The Delta `txn` version of app id `{pipeline}/{shard}`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Progress(BTreeMap<String, i64>);

impl Progress {
    pub fn new() -> Self {
        Self::default()
    }

    /// Where `shard` resumes; `None` when nothing of it was committed.
    pub fn get(&self, shard: &str) -> Option<i64> {
        self.0.get(shard).copied()
    }

    /// Moves `shard` forward to `next`. A `next` at or behind the current position is
    /// ignored and reported as `false`: replays and retries may offer old positions,
    /// and progress must never move backward because of them.
    pub fn advance(&mut self, shard: &str, next: i64) -> bool {
        match self.0.get_mut(shard) {
            Some(cur) if *cur >= next => false,
            Some(cur) => {
                *cur = next;
                true
            }
            None => {
                self.0.insert(shard.to_string(), next);
                true
            }
        }
    }

    /// Forgets `shard`: this process no longer reads it (a Kafka partition handed to
    /// another member of the group), so it no longer speaks for its progress.
    pub fn forget(&mut self, shard: &str) {
        self.0.remove(shard);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, i64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Per shard, the smallest position over `all`; a shard missing from any of them is
    /// missing from the result (that consumer starts the shard from the beginning).
    pub fn min_over<'a>(all: impl IntoIterator<Item = &'a Progress>, shards: &[String]) -> Progress {
        let all: Vec<&Progress> = all.into_iter().collect();
        let mut out = Progress::new();
        for shard in shards {
            let min = all
                .iter()
                .map(|p| p.get(shard))
                .try_fold(i64::MAX, |acc, v| v.map(|v| acc.min(v)));
            if let Some(v) = min
                && !all.is_empty()
            {
                out.advance(shard, v);
            }
        }
        out
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

/// The Delta `txn` app id of a shard of a pipeline.
pub fn app_id(pipeline: &str, shard: &str) -> String {
    format!("{pipeline}/{shard}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_never_moves_backward() {
        let mut p = Progress::new();
        assert!(p.advance("s", 10));
        assert!(!p.advance("s", 5));
        assert!(!p.advance("s", 10));
        assert_eq!(p.get("s"), Some(10));
        assert!(p.advance("s", 11));
        assert_eq!(p.get("s"), Some(11));
    }

    #[test]
    fn min_over_treats_missing_as_beginning() {
        let mut a = Progress::new();
        a.advance("x", 10);
        a.advance("y", 3);
        let mut b = Progress::new();
        b.advance("x", 7);
        let shards = vec!["x".to_string(), "y".to_string()];
        let m = Progress::min_over([&a, &b], &shards);
        assert_eq!(m.get("x"), Some(7));
        assert_eq!(m.get("y"), None);
    }
}
