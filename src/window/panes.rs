//! Tumbling, hopping and cumulating windows over panes.
//!
//! A pane is a slice of `gcd(size, slide)`: every event updates exactly one pane, and a
//! hopping window is the merge of its `size / pane` panes when it is emitted. So an
//! event costs the same in a hopping window as in a tumbling one; only emitting costs
//! more, in proportion to the rows emitted. A tumbling window is its one pane.
//!
//! Cumulating windows (Flink's CUMULATE) are panes of `step`: within each block
//! `[s, s + size)` (s a multiple of size), the windows `[s, s + k·step)` for k = 1 …
//! size/step are the merges of the block's first k panes. A window is identified by
//! its start and end, since a block's windows share their start.

use std::collections::{BTreeMap, BTreeSet};

use hashbrown::{HashMap, HashSet};

use super::measure::{Input, Store};
use super::{Ctx, Emission, Outcome, Row};

/// Row-encoded group keys.
type Keys = BTreeSet<Box<[u8]>>;

/// Groups of one pane: row-encoded group key → slot.
pub(super) type Groups = HashMap<Box<[u8]>, u32>;

pub(super) struct Panes {
    pub size: i64,
    pub slide: i64,
    pub pane: i64,
    pub panes: BTreeMap<i64, Groups>,
    /// Per pane, slots whose windows need their rows written again this micro-batch.
    dirty: BTreeMap<i64, HashSet<u32>>,
    /// Cumulating windows: `slide` is the step, windows grow from each block's start.
    cumulate: bool,
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The smallest multiple of `m` at or above `x` (in i128: no overflow near the ends).
fn align_up(x: i128, m: i64) -> i128 {
    let m = i128::from(m);
    x + (m - x.rem_euclid(m)) % m
}

fn clamp(x: i128) -> i64 {
    i64::try_from(x).unwrap_or(if x < 0 { i64::MIN } else { i64::MAX })
}

impl Panes {
    pub fn new(size: i64, slide: i64) -> Self {
        Self {
            size,
            slide,
            pane: gcd(size, slide),
            panes: BTreeMap::new(),
            dirty: BTreeMap::new(),
            cumulate: false,
        }
    }

    /// Cumulating windows of at most `size`, growing by `step` (size is a multiple of step).
    pub fn cumulate(size: i64, step: i64) -> Self {
        Self {
            cumulate: true,
            ..Self::new(size, step)
        }
    }

    fn tumbling(&self) -> bool {
        self.pane == self.size
    }

    /// End of the last window that contains time `t` (its start is the latest multiple
    /// of `slide` at or before `t`).
    fn last_end(&self, t: i64) -> i64 {
        if self.cumulate {
            return (t - t.rem_euclid(self.size)).saturating_add(self.size);
        }
        (t - t.rem_euclid(self.slide)).saturating_add(self.size)
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
        let end = self.last_end(t);
        let late = end <= ctx.watermark;
        if late && !ctx.correctable(end) {
            return Outcome::Late { window_end: end };
        }
        let p = t - t.rem_euclid(self.pane);
        let groups = self.panes.entry(p).or_default();
        let slot = match groups.get(key) {
            Some(&s) => s,
            None => {
                let s = store.alloc();
                groups.insert(key.into(), s);
                s
            }
        };
        store.update(slot, inputs, i);
        // Which of its windows get rows written is decided when emitting.
        if ctx.emit_update || ctx.late_update {
            self.dirty.entry(p).or_default().insert(slot);
        }
        if late { Outcome::Corrected } else { Outcome::Folded }
    }

    /// The windows (start, end) holding pane `p`, ascending.
    fn windows_of(&self, p: i64) -> Vec<(i64, i64)> {
        if self.cumulate {
            let s = p - p.rem_euclid(self.size);
            let last = s.saturating_add(self.size);
            return (1..)
                .map(|k: i64| p.saturating_add(k.saturating_mul(self.pane)))
                .take_while(|&e| e <= last)
                .map(|e| (s, e))
                .collect();
        }
        let first = clamp(align_up(i128::from(p) - i128::from(self.size) + 1, self.slide));
        let last = p - p.rem_euclid(self.slide);
        (0..)
            .map(|k: i64| first.saturating_add(k.saturating_mul(self.slide)))
            .take_while(|&s| s <= last)
            .map(|s| (s, s.saturating_add(self.size)))
            .collect()
    }

    /// Cumulating windows ending in `(old, new]` (every one left, with `to_end`), per
    /// block that has panes: those from its first pane's end on.
    fn cumulate_closing(&self, old: i64, new: i64, to_end: bool) -> Vec<(i64, i64)> {
        let mut firsts: BTreeMap<i64, i64> = BTreeMap::new();
        for &p in self.panes.keys() {
            firsts.entry(p - p.rem_euclid(self.size)).or_insert(p);
        }
        let mut out = Vec::new();
        for (s, p0) in firsts {
            let block_end = i128::from(s) + i128::from(self.size);
            let lo = (i128::from(p0) + i128::from(self.pane)).max(align_up(i128::from(old) + 1, self.pane));
            let hi = if to_end {
                block_end
            } else {
                block_end.min(i128::from(new))
            };
            let mut e = lo;
            while e <= hi {
                out.push((s, clamp(e)));
                e += i128::from(self.pane);
            }
        }
        out
    }

    /// Rows for the windows this micro-batch finished (`final`: watermark passed from
    /// `old` to `new`; with `to_end`, every window still open) and for windows whose
    /// rows must be written again.
    pub fn emit(&mut self, ctx: &Ctx, new: i64, to_end: bool) -> Emission {
        let old = ctx.watermark;
        // Window (start, end) → keys to write (None: every key it has).
        let mut targets: BTreeMap<(i64, i64), Option<Keys>> = BTreeMap::new();
        if !ctx.emit_update && self.cumulate {
            for w in self.cumulate_closing(old, new, to_end) {
                targets.insert(w, None);
            }
        } else if !ctx.emit_update {
            let hi = if to_end {
                i128::MAX
            } else {
                i128::from(new) - i128::from(self.size)
            };
            let lo = i128::from(old) - i128::from(self.size);
            let mut s = align_up(lo + 1, self.slide);
            while s <= hi {
                let Some((&p, _)) = self.panes.range(clamp(s)..).next() else {
                    break;
                };
                if i128::from(p) >= s + i128::from(self.size) {
                    s = align_up(i128::from(p) - i128::from(self.size) + 1, self.slide);
                    continue;
                }
                targets.insert((clamp(s), clamp(s + i128::from(self.size))), None);
                s += i128::from(self.slide);
            }
        }
        let dirty = std::mem::take(&mut self.dirty);
        for (p, slots) in &dirty {
            let Some(groups) = self.panes.get(p) else { continue };
            for (s, end) in self.windows_of(*p) {
                let write = if end <= old {
                    ctx.late_update && ctx.correctable(end)
                } else {
                    ctx.emit_update
                };
                if !write {
                    continue;
                }
                if let Some(keys) = targets.entry((s, end)).or_insert_with(|| Some(BTreeSet::new())) {
                    keys.extend(
                        groups
                            .iter()
                            .filter(|(_, v)| slots.contains(*v))
                            .map(|(k, _)| k.clone()),
                    );
                }
            }
        }
        let mut rows = Vec::new();
        if self.tumbling() {
            for ((s, e), keys) in targets {
                let Some(groups) = self.panes.get(&s) else {
                    continue;
                };
                let mut picked: Vec<(&Box<[u8]>, &u32)> = match &keys {
                    None => groups.iter().collect(),
                    Some(keys) => groups.iter().filter(|(k, _)| keys.contains(*k)).collect(),
                };
                picked.sort_unstable_by(|a, b| a.0.cmp(b.0));
                rows.extend(
                    picked
                        .into_iter()
                        .map(|(k, &slot)| Row::upsert(Some(s), Some(e), k.clone(), slot)),
                );
            }
            return Emission { rows, groups: None };
        }
        let mut groups: Vec<Vec<u32>> = Vec::new();
        for ((s, e), keys) in targets {
            let mut merged: BTreeMap<&[u8], Vec<u32>> = BTreeMap::new();
            for (_, pane) in self.panes.range(s..e) {
                for (k, &slot) in pane {
                    if keys.as_ref().is_none_or(|keys| keys.contains(k)) {
                        merged.entry(k.as_ref()).or_default().push(slot);
                    }
                }
            }
            for (k, slots) in merged {
                let g = u32::try_from(groups.len()).unwrap_or(u32::MAX);
                groups.push(slots);
                rows.push(Row::upsert(Some(s), Some(e), k.into(), g));
            }
        }
        Emission {
            rows,
            groups: Some(groups),
        }
    }

    /// Drops panes no window can be written from any more: every window holding them
    /// is closed (and, for `late = "update"`, past its lateness).
    pub fn evict(&mut self, store: &mut Store, ctx: &Ctx, new: i64) {
        let keep = if ctx.late_update { ctx.lateness } else { 0 };
        while let Some((&p, _)) = self.panes.first_key_value() {
            if self.last_end(p).saturating_add(keep) > new {
                break;
            }
            for (_, slot) in self.panes.remove(&p).unwrap_or_default() {
                store.release(slot);
            }
        }
    }

    pub fn clear(&mut self, store: &mut Store) {
        for (_, groups) in std::mem::take(&mut self.panes) {
            for (_, slot) in groups {
                store.release(slot);
            }
        }
        self.dirty.clear();
    }
}
