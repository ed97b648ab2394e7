//! Key positions carried through compaction. A compaction round of a running mirror
//! rewrites files into one file and says how their rows moved; the mirror's key index
//! then *redirects* the old positions into the new file instead of reading the new
//! file's keys back.
//!
//! Why: the index learns a file's keys by reading its key columns and writing every
//! key into the B-tree. After each round that cost the next mirror commit (the one
//! that waited for the round) 0.5–1.3 s at 50M rows for 10k–40k keys, and 1.9 s
//! after a round of 1.6M snapshot rows: the tail of the mirror's commit latency. A
//! redirect costs one small entry per rewritten file, whatever its rows.
//!
//! How rows move: a round writes each input's live rows (those not in the deletion
//! vector it read) in order, after the previous input's. So row `r` of input `i`
//! becomes row `base_i + r - rank(d_i, r)` of the new file, where `d_i` is what the
//! round read as deleted and `base_i` counts the earlier inputs' live rows (the same
//! mapping the round's carry-over of later deletions uses: see
//! [`super::purge::Prepared::commit`]). A row in `d_i` has no new position: its key was
//! deleted or written again elsewhere.
//!
//! Crash story: nothing here is a source of truth. A round hands its [`Moved`] over in
//! memory (through its table's compaction gate) once its commit is durable; a restart
//! loses the ones not yet synced, and the index then reads the new files like any
//! other. [`super::key_index::KeyIndex::sync`] applies a move only when every input is
//! a file the index knows, and records the new file as known in the same redb
//! transaction as its redirects; a redirect counts only while the chain from it ends in
//! a live known file, and a position it gives is still checked against that file's
//! deletion vector like any other candidate. A round that committed several output
//! files (or whose row count does not add up) hands over nothing.
//!
//! Bounds: redirects into a live file last until that file is indexed directly: once
//! there are more than [`MAX_REDIRECTS`], the sync indexes the live files with the
//! fewest rows per redirect leading into them (their live rows then have direct
//! entries) and drops those redirects, until it is back under the cap. A steady load
//! reaches the cap after about `MAX_REDIRECTS / inputs per round` rounds; from then on
//! each round's inputs cost one such file read, as before redirects.
//! Pending moves are capped at [`MAX_PENDING`] (the oldest are dropped: their files
//! are read instead), so a mirror that stops syncing holds no more.

use std::collections::VecDeque;
use std::sync::Mutex;

use deltalake::DeltaTableError;
use roaring::RoaringTreemap;

/// Redirects kept before files they lead into are indexed directly. Each holds two
/// numbers and the (usually tiny) bitmap of its file's deleted rows.
pub const MAX_REDIRECTS: usize = 16_384;
/// Moves waiting for the index.
pub const MAX_PENDING: usize = 64;

/// One round's rewrite: the live rows of `from`, in order, are the rows of `into`.
#[derive(Debug, Clone)]
pub struct Moved {
    pub into: String,
    /// Rows of the new file.
    pub rows: u64,
    pub from: Vec<MovedFile>,
}

/// An input of a round as it was read.
#[derive(Debug, Clone)]
pub struct MovedFile {
    pub path: String,
    /// Its physical rows.
    pub rows: u64,
    /// The rows its deletion vector marked.
    pub dropped: RoaringTreemap,
}

/// Moves handed from a table's compaction rounds to its key index.
#[derive(Debug, Default)]
pub struct Moves(Mutex<VecDeque<Moved>>);

impl Moves {
    pub fn push(&self, moved: Moved) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= MAX_PENDING {
            q.pop_front();
        }
        q.push_back(moved);
    }

    /// The pending moves, oldest first.
    pub fn take(&self) -> Vec<Moved> {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        q.drain(..).collect()
    }
}

/// The rows of a rewritten file, in the file they moved into.
#[derive(Debug, Clone, PartialEq)]
pub struct Redirect {
    /// The index's id of the new file (always above the old file's).
    pub to: u32,
    /// Where the old file's first live row landed.
    pub base: u64,
    /// The old file's rows that were deleted when it was rewritten.
    pub dropped: RoaringTreemap,
}

impl Redirect {
    /// The new row of old row `row`, or `None` when it was not carried over.
    pub fn row(&self, row: u64) -> Option<u64> {
        // `row` is not in `dropped`, so rank counts the dropped rows before it.
        (!self.dropped.contains(row)).then(|| self.base + row - self.dropped.rank(row))
    }

    /// `to` and `base` little-endian, then the portable roaring serialization.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.dropped.serialized_size());
        out.extend_from_slice(&self.to.to_le_bytes());
        out.extend_from_slice(&self.base.to_le_bytes());
        // Writing into a Vec cannot fail.
        let _ = self.dropped.serialize_into(&mut out);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DeltaTableError> {
        let bad = || DeltaTableError::Generic("key index: malformed redirect".into());
        let to = u32::from_le_bytes(bytes.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
        let base = u64::from_le_bytes(bytes.get(4..12).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
        let dropped = RoaringTreemap::deserialize_from(&bytes[12..]).map_err(|_| bad())?;
        Ok(Self { to, base, dropped })
    }
}

/// The redirects of one move into file id `to`, given the ids the index knows its
/// inputs by, or `None` when its rows do not add up (the new file is then read).
pub fn redirects(moved: &Moved, to: u32, ids: &[u32]) -> Option<Vec<(u32, Redirect)>> {
    if ids.len() != moved.from.len() {
        return None;
    }
    let mut base = 0u64;
    let mut out = Vec::with_capacity(ids.len());
    for (file, &id) in moved.from.iter().zip(ids) {
        let live = file.rows.checked_sub(file.dropped.len())?;
        out.push((
            id,
            Redirect {
                to,
                base,
                dropped: file.dropped.clone(),
            },
        ));
        base += live;
    }
    (base == moved.rows).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_move_past_the_dropped_ones_and_after_earlier_inputs() {
        let moved = Moved {
            into: "n".into(),
            rows: 3 + 2,
            from: vec![
                MovedFile {
                    path: "a".into(),
                    rows: 5,
                    dropped: [1u64, 3].into_iter().collect(),
                },
                MovedFile {
                    path: "b".into(),
                    rows: 2,
                    dropped: RoaringTreemap::new(),
                },
            ],
        };
        let r = redirects(&moved, 9, &[1, 2]).unwrap();
        let (a, b) = (&r[0].1, &r[1].1);
        assert_eq!((r[0].0, r[1].0, a.to), (1, 2, 9));
        let rows: Vec<Option<u64>> = (0..5).map(|x| a.row(x)).collect();
        assert_eq!(rows, vec![Some(0), None, Some(1), None, Some(2)]);
        assert_eq!((b.row(0), b.row(1)), (Some(3), Some(4)));
        assert_eq!(Redirect::decode(&a.encode()).unwrap(), *a);
        assert!(Redirect::decode(&[1, 2, 3]).is_err());
        // A move whose rows do not add up is not used.
        assert!(
            redirects(
                &Moved {
                    rows: 6,
                    ..moved.clone()
                },
                9,
                &[1, 2]
            )
            .is_none()
        );
        assert!(redirects(&moved, 9, &[1]).is_none());
    }

    #[test]
    fn pending_moves_are_capped_oldest_out() {
        let moves = Moves::default();
        for i in 0..MAX_PENDING + 3 {
            moves.push(Moved {
                into: i.to_string(),
                rows: 0,
                from: vec![],
            });
        }
        let taken = moves.take();
        assert_eq!(taken.len(), MAX_PENDING);
        assert_eq!(taken[0].into, "3");
        assert!(moves.take().is_empty());
    }
}
