//! Cumulating windows and post-window (`over`) steps, against direct computations.

use std::collections::BTreeMap;

use deltalake::arrow::array::{Array, AsArray, RecordBatch};
use deltalake::arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};

use super::tests::{Ev, MIN, SEC, cfg, events, run, schema};
use super::*;
use crate::config::{EmitMode, LatePolicy, Over, OverFn, Span, Window};

/// (window_start, window_end, key) → (count, sum of v)
type Counts = BTreeMap<(i64, i64, Option<String>), (i64, Option<i64>)>;

fn cumulate_reference(size: i64, step: i64, evs: &[Ev]) -> Counts {
    let mut out = Counts::new();
    for e in evs {
        let s = e.t - e.t.rem_euclid(size);
        let mut end = e.t - e.t.rem_euclid(step) + step;
        while end <= s + size {
            let c = out.entry((s, end, e.k.map(str::to_string))).or_insert((0, None));
            c.0 += 1;
            if let Some(v) = e.v {
                c.1 = Some(c.1.unwrap_or(0) + v);
            }
            end += step;
        }
    }
    out
}

/// Rows of (window_start, window_end, k, n, …, sv, …): appended rows must be new,
/// keyed rows upsert.
fn counts(out: &[RecordBatch], keyed: bool) -> Counts {
    let mut got = Counts::new();
    for b in out {
        let ws = b.column(0).as_primitive::<TimestampMicrosecondType>();
        let we = b.column(1).as_primitive::<TimestampMicrosecondType>();
        let k = b.column(2).as_string::<i32>();
        let n = b.column(3).as_primitive::<Int64Type>();
        let sv = b.column(6).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let key = (
                ws.value(i),
                we.value(i),
                k.is_valid(i).then(|| k.value(i).to_string()),
            );
            let old = got.insert(key.clone(), (n.value(i), sv.is_valid(i).then(|| sv.value(i))));
            assert!(keyed || old.is_none(), "{key:?} emitted twice");
        }
    }
    got
}

#[test]
fn cumulating_windows_match_a_direct_computation_in_every_emit_mode() {
    let evs = events(3000);
    let (size, step) = (5 * MIN, MIN);
    let window = Window::Cumulate {
        size: Span::from_secs(300),
        step: Span::from_secs(60),
    };
    for (emit, late) in [
        (EmitMode::Final, LatePolicy::Drop),
        (EmitMode::Update, LatePolicy::Drop),
        (EmitMode::Final, LatePolicy::Update),
    ] {
        let mut c = cfg(window, 30);
        c.emit = emit;
        c.late = late;
        if late == LatePolicy::Update {
            c.lateness = Span::from_secs(60);
        }
        let mut op = build(&c, &schema()).unwrap();
        let mut out = run(op.as_mut(), &evs, 41);
        // Windows close as the watermark passes their ends, not all at the end.
        assert!(out.len() > 10, "{emit:?}: {} batches", out.len());
        out.extend(op.on_close().unwrap());
        assert_eq!(
            counts(&out, c.keyed()),
            cumulate_reference(size, step, &evs),
            "{emit:?} {late:?}"
        );
        assert_eq!(op.stats(), OperatorStats::default());
    }
}

#[test]
fn a_late_event_of_a_cumulating_window_is_late_only_when_its_block_is_final() {
    let window = Window::Cumulate {
        size: Span::from_secs(300),
        step: Span::from_secs(60),
    };
    let mut op = build(&cfg(window, 0), &schema()).unwrap();
    let at = |t: i64| Ev {
        k: Some("a"),
        t,
        v: Some(1),
        u: None,
    };
    let mut out = run(op.as_mut(), &[at(10 * SEC), at(150 * SEC)], 1);
    // The watermark (150 s) closed [0, 60s) and [0, 120s); an event at 20 s still
    // belongs to [0, 180s) … [0, 300s).
    out.extend(run(op.as_mut(), &[at(20 * SEC), at(400 * SEC)], 1));
    assert_eq!(op.stats().late_dropped, 0);
    // Past the block's end (300 s), an event of it is late.
    out.extend(run(op.as_mut(), &[at(30 * SEC)], 1));
    assert_eq!(op.stats().late_dropped, 1);
    let got = counts(&out, false);
    let n = |e: i64| got[&(0, e * SEC, Some("a".into()))].0;
    assert_eq!([n(60), n(120), n(180), n(240), n(300)], [1, 1, 3, 3, 3]);
}

fn over(name: &str, func: OverFn, measure: &str, partition: bool, preceding: u32) -> Over {
    Over {
        name: name.into(),
        func,
        measure: measure.into(),
        partition_by: if partition { vec!["k".into()] } else { vec![] },
        preceding,
    }
}

/// The moving values SQL gives over the finished rows: per partition, in window_start
/// (then key) order, the frame of the row and the `preceding` rows before it.
fn moving(
    rows: &[(i64, Option<String>, i64, Option<i64>)],
    partition: bool,
    preceding: usize,
) -> Vec<(f64, Option<i64>, i64)> {
    let mut sorted: Vec<usize> = (0..rows.len()).collect();
    sorted.sort_by(|&a, &b| (rows[a].0, &rows[a].1).cmp(&(rows[b].0, &rows[b].1)));
    let mut out = vec![(0.0, None, 0); rows.len()];
    let mut seen: BTreeMap<Option<String>, Vec<usize>> = BTreeMap::new();
    for i in sorted {
        let part = if partition { rows[i].1.clone() } else { None };
        let prior = seen.entry(part).or_default();
        prior.push(i);
        let frame = &prior[prior.len().saturating_sub(preceding + 1)..];
        #[allow(clippy::cast_precision_loss)]
        let avg = frame.iter().map(|&j| rows[j].2 as f64).sum::<f64>() / frame.len() as f64;
        let max = frame.iter().filter_map(|&j| rows[j].3).max();
        let count = frame.iter().filter(|&&j| rows[j].3.is_some()).count() as i64;
        out[i] = (avg, max, count);
    }
    out
}

#[test]
fn over_steps_equal_sql_window_functions_over_the_final_rows_across_a_restart() {
    let evs = events(4000);
    for partition in [true, false] {
        let mut c = cfg(
            Window::Tumbling {
                size: Span::from_secs(60),
            },
            30,
        );
        c.over = vec![
            over("n_avg3", OverFn::Avg, "n", partition, 2),
            over("sv_max5", OverFn::Max, "sv", partition, 4),
            over("sv_count2", OverFn::Count, "sv", partition, 1),
        ];
        // A run interrupted after each third of the input, restored from its snapshot.
        let mut out = vec![];
        let mut snapshot = None;
        for part in evs.chunks(evs.len() / 3 + 1) {
            let mut op = build(&c, &schema()).unwrap();
            op.on_start(snapshot.take()).unwrap();
            out.extend(run(op.as_mut(), part, 53));
            snapshot = Some(op.on_checkpoint().unwrap());
        }
        let mut op = build(&c, &schema()).unwrap();
        op.on_start(snapshot).unwrap();
        out.extend(op.on_close().unwrap());

        let mut rows = vec![];
        let mut got = vec![];
        for b in &out {
            let s = b.schema();
            let col = |n: &str| b.column(s.index_of(n).unwrap());
            let ws = col("window_start").as_primitive::<TimestampMicrosecondType>();
            let k = col("k").as_string::<i32>();
            let n = col("n").as_primitive::<Int64Type>();
            let sv = col("sv").as_primitive::<Int64Type>();
            let avg = col("n_avg3").as_primitive::<Float64Type>();
            let max = col("sv_max5").as_primitive::<Int64Type>();
            let count = col("sv_count2").as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                rows.push((
                    ws.value(i),
                    k.is_valid(i).then(|| k.value(i).to_string()),
                    n.value(i),
                    sv.is_valid(i).then(|| sv.value(i)),
                ));
                got.push((
                    avg.value(i),
                    max.is_valid(i).then(|| max.value(i)),
                    count.value(i),
                ));
            }
        }
        assert!(rows.len() > 100, "{} rows", rows.len());
        let want = moving(&rows, partition, 2);
        let want_max = moving(&rows, partition, 4);
        let want_count = moving(&rows, partition, 1);
        for i in 0..rows.len() {
            assert!(
                (got[i].0 - want[i].0).abs() < 1e-9,
                "row {i} {:?}: avg {} ≠ {}",
                rows[i],
                got[i].0,
                want[i].0
            );
            assert_eq!(got[i].1, want_max[i].1, "row {i} {:?}: max", rows[i]);
            assert_eq!(got[i].2, want_count[i].2, "row {i} {:?}: count", rows[i]);
        }
    }
}
