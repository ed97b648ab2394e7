//! Session windows: per group key, events less than `gap` apart share a window
//! `[first event, last event + gap)`. An event that bridges two sessions merges them
//! (Spark's and Flink's semantics), so a session's start can move earlier and two rows
//! can become one: in keyed tables the rows that no longer exist are deleted.

use hashbrown::HashMap;

use super::measure::{Input, Store};
use super::{Ctx, Emission, Outcome, Row};

pub(super) struct Session {
    pub start: i64,
    pub end: i64,
    pub slot: u32,
    /// The window start its row is written under in a keyed table, if written.
    pub written: Option<i64>,
    /// Changed since its row was last written.
    pub dirty: bool,
}

pub(super) struct Sessions {
    pub gap: i64,
    /// Per group key, its sessions, ordered by start and never overlapping.
    pub keys: HashMap<Box<[u8]>, Vec<Session>>,
    /// Rows (start, key) of sessions merged away or moved, to delete from keyed tables.
    retract: Vec<(i64, Box<[u8]>)>,
}

impl Sessions {
    pub fn new(gap: i64) -> Self {
        Self {
            gap,
            keys: HashMap::new(),
            retract: Vec::new(),
        }
    }

    pub fn fold(
        &mut self,
        store: &mut Store,
        inputs: &[Input],
        i: usize,
        t: i64,
        key: &[u8],
        ctx: &Ctx,
    ) -> Outcome {
        let own_end = t.saturating_add(self.gap);
        let list = match self.keys.get_mut(key) {
            Some(l) => l,
            None => {
                if own_end <= ctx.watermark && !ctx.correctable(own_end) {
                    return Outcome::Late { window_end: own_end };
                }
                self.keys.entry(key.into()).or_default()
            }
        };
        // Sessions this event touches: those it is less than `gap` from.
        let first = list.partition_point(|s| s.end <= t);
        let last = list[first..].partition_point(|s| s.start < own_end) + first;
        let (start, end) = list[first..last]
            .iter()
            .fold((t, own_end), |(a, b), s| (a.min(s.start), b.max(s.end)));
        let late = end <= ctx.watermark;
        if late && !ctx.correctable(end) {
            return Outcome::Late { window_end: end };
        }
        let slot = if first == last {
            let slot = store.alloc();
            list.insert(
                first,
                Session {
                    start,
                    end,
                    slot,
                    written: None,
                    dirty: true,
                },
            );
            slot
        } else {
            let keep = list[first].slot;
            for s in list.drain(first + 1..last) {
                store.absorb(keep, s.slot);
                if let Some(w) = s.written {
                    self.retract.push((w, key.into()));
                }
            }
            let s = &mut list[first];
            if let Some(w) = s.written.filter(|w| *w != start) {
                self.retract.push((w, key.into()));
                s.written = None;
            }
            s.start = start;
            s.end = end;
            s.dirty = true;
            keep
        };
        store.update(slot, inputs, i);
        if late { Outcome::Corrected } else { Outcome::Folded }
    }

    /// Rows to write after the watermark moved to `new` (`to_end`: the input ended).
    pub fn emit(&mut self, ctx: &Ctx, new: i64, to_end: bool) -> Emission {
        let mut rows = Vec::new();
        for (key, list) in &mut self.keys {
            for s in list.iter_mut() {
                let closes = s.end <= new || to_end;
                if s.dirty && (closes || ctx.emit_update) {
                    rows.push(Row::upsert(Some(s.start), Some(s.end), key.clone(), s.slot));
                    s.dirty = false;
                    s.written = Some(s.start);
                }
            }
        }
        if ctx.keyed() {
            for (start, key) in std::mem::take(&mut self.retract) {
                let live = self
                    .keys
                    .get(&key)
                    .is_some_and(|l| l.iter().any(|s| s.written == Some(start)));
                if !live {
                    rows.push(Row::delete(start, key));
                }
            }
        }
        rows.sort_unstable_by(|a, b| {
            (a.start, &a.key, a.slot.is_none()).cmp(&(b.start, &b.key, b.slot.is_none()))
        });
        rows.dedup_by(|b, a| a.start == b.start && a.key == b.key);
        Emission { rows, groups: None }
    }

    /// Drops sessions that are written and can no longer change.
    pub fn evict(&mut self, store: &mut Store, ctx: &Ctx, new: i64) {
        let keep = if ctx.late_update { ctx.lateness } else { 0 };
        self.keys.retain(|_, list| {
            list.retain(|s| {
                let gone = !s.dirty && s.end.saturating_add(keep) <= new;
                if gone {
                    store.release(s.slot);
                }
                !gone
            });
            !list.is_empty()
        });
    }

    pub fn clear(&mut self, store: &mut Store) {
        for (_, list) in self.keys.drain() {
            for s in list {
                store.release(s.slot);
            }
        }
        self.retract.clear();
    }
}
