//! Cursor values and states of incremental snapshots: what a table commits of its
//! copy (see the parent module), and what a start or `tributary snapshot` makes of
//! the cursors of the tables a stream feeds.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The chunk number of a table whose copy is complete.
pub const DONE: i64 = 0xFFFF_FFFF;

/// The cursor shard of a slot: where tables keep their snapshot progress.
pub fn snapshot_shard(slot: &str) -> String {
    format!("{slot}#snapshot")
}

/// A cursor value: generation and chunk number.
pub fn value(generation: i64, chunk: i64) -> i64 {
    (generation << 32) | chunk
}

pub fn generation(value: i64) -> i64 {
    value >> 32
}

pub fn chunk(value: i64) -> i64 {
    value & DONE
}

/// What a table keeps of its snapshot: the state of its cursor.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    /// The last key copied (the key columns' text), `None` before the first chunk.
    pub key: Option<Vec<Option<String>>>,
    /// Rows copied so far.
    pub rows: u64,
    /// The table's estimated size when the last chunk was read.
    pub estimate: u64,
    /// A snapshot taken again on demand: the slot position the table held when it
    /// was asked for. Once copied, a mirror drops the rows it holds from before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
}

impl Progress {
    pub fn decode(bytes: &[u8]) -> Result<Progress, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("snapshot progress: {e}"))
    }
}

/// Where one table's snapshot starts: its cursor, and the further cursors of other
/// tables fed by the same stream (read up to exactly, see the module docs).
#[derive(Debug, Clone)]
pub struct Start {
    pub value: i64,
    pub progress: Progress,
    /// Further cursors, ascending by value, none of them [`DONE`].
    pub further: Vec<(i64, Progress)>,
}

/// How far a table's snapshot got, for `tributary status`: its cursor `value` and
/// the cursor's `state`.
pub fn describe(value: i64, state: Option<&[u8]>) -> String {
    let p = state.and_then(|s| Progress::decode(s).ok()).unwrap_or_default();
    match chunk(value) {
        DONE => "copied".to_string(),
        0 if p.since.is_some() => "to be copied again".to_string(),
        0 => "to be copied".to_string(),
        n => format!(
            "copying: {} of ~{} rows ({n} chunks)",
            p.rows,
            p.estimate.max(p.rows)
        ),
    }
}

/// Where one table stands in its stream's snapshot, as its progress says.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// Nothing committed: it needs every row.
    New,
    /// Progress on the slot but no cursor: snapshotted in one piece (or started
    /// without a snapshot). It takes no chunks.
    Whole,
    /// Copied (its cursor is [`DONE`]).
    Done(i64),
    /// Copied up to a cursor.
    At(i64, Progress),
}

impl Part {
    /// The part of a table holding `held`, whose cursor state (if any) is `state`.
    pub fn of(held: &crate::progress::Progress, shard: &str, state: Option<&Bytes>) -> Result<Part, String> {
        let cursor = snapshot_shard(shard);
        Ok(match (held.get(shard), held.get(&cursor)) {
            (None, None) => Part::New,
            // A copy in one piece that was interrupted (an earlier version's): its rows
            // are dropped before streaming starts, so it needs every row.
            (Some(p), None) if p < super::super::SNAPSHOT_SPACE => Part::New,
            (Some(_), None) => Part::Whole,
            (_, Some(v)) if chunk(v) == DONE => Part::Done(v),
            (_, Some(v)) if chunk(v) == 0 => Part::At(
                v,
                state
                    .map(|b| Progress::decode(b))
                    .transpose()?
                    .unwrap_or_default(),
            ),
            (_, Some(v)) => match state {
                Some(bytes) => Part::At(v, Progress::decode(bytes)?),
                None => {
                    return Err(format!(
                        "its snapshot cursor (chunk {}) has no state file beside the table",
                        chunk(v)
                    ));
                }
            },
        })
    }
}

/// Where a stream's snapshot starts, given the parts of the tables it feeds; `None`
/// when none of them needs rows.
pub fn start(parts: &[Part]) -> Option<Start> {
    let mut at: Vec<(i64, Progress)> = Vec::new();
    let mut generation_of_done = None;
    for p in parts {
        match p {
            Part::New => at.push((-1, Progress::default())),
            Part::At(v, progress) => at.push((*v, progress.clone())),
            Part::Done(v) => generation_of_done = Some(generation(*v)),
            Part::Whole => {}
        }
    }
    at.sort_by_key(|(v, _)| *v);
    let (first, progress) = at.first().cloned()?;
    // A new table starts at the generation of the others (their chunks come again
    // under it, and they skip them); the first ever is generation 1.
    let generation = match first {
        -1 => at
            .iter()
            .map(|(v, _)| generation(*v))
            .filter(|g| *g > 0)
            .chain(generation_of_done)
            .max()
            .unwrap_or(1),
        v => generation(v),
    };
    let value = if first == -1 { value(generation, 0) } else { first };
    let mut further: Vec<(i64, Progress)> = Vec::new();
    for (v, p) in at {
        if v > value && further.last().is_none_or(|(l, _)| *l != v) {
            further.push((v, p));
        }
    }
    Some(Start {
        value,
        progress,
        further,
    })
}

/// A cursor value to commit, with the state to store first (if any).
pub type Mark = (i64, Option<Progress>);

/// A snapshot of a stream taken again on demand: per table of the stream (its
/// progress), the cursor value to commit, and for the tables asked for, the state to
/// store with it (the slot position they hold: see [`Progress::since`]). Tables that
/// have nothing yet are left out (they are copied anyway); a copy in progress is
/// refused (it must finish first).
pub fn take_again(
    shard: &str,
    tables: &[(&crate::progress::Progress, bool)],
) -> Result<Vec<Option<Mark>>, String> {
    let cursor = snapshot_shard(shard);
    let mut generation_now = 1;
    for (held, _) in tables {
        match held.get(&cursor) {
            Some(v) if chunk(v) != DONE => {
                return Err(format!(
                    "its snapshot is still being copied (chunk {}): let it finish first",
                    chunk(v)
                ));
            }
            Some(v) => generation_now = generation_now.max(generation(v)),
            None => {}
        }
    }
    let next = generation_now + 1;
    Ok(tables
        .iter()
        .map(|(held, asked)| {
            let at = held.get(shard)?;
            Some(if *asked {
                let since = Progress {
                    since: Some(at),
                    ..Progress::default()
                };
                (value(next, 0), Some(since))
            } else {
                // The others skip every chunk of the new generation.
                (value(next, DONE), None)
            })
        })
        .collect())
}
