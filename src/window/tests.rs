use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use deltalake::arrow::array::{
    Array, AsArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType};
use deltalake::arrow::util::display::array_value_to_string;

use super::*;
use crate::config::{AggregateConfig, EmitMode, LatePolicy, Measure, MeasureFn, Span, Window};

pub(super) const SEC: i64 = 1_000_000;
pub(super) const MIN: i64 = 60 * SEC;

pub(super) fn cfg(window: Window, watermark_secs: u64) -> AggregateConfig {
    let m = |name: &str, func: MeasureFn| Measure {
        name: name.into(),
        func,
    };
    AggregateConfig {
        name: "agg".into(),
        key: "aggregates[0]".into(),
        from: "s".into(),
        event_time: "t".into(),
        window,
        watermark: Span::from_secs(watermark_secs),
        idle_timeout: None,
        group_by: vec!["k".into()],
        measures: vec![
            m("n", MeasureFn::CountAll),
            m("nv", MeasureFn::Count("v".into())),
            m("du", MeasureFn::CountDistinct("u".into())),
            m("sv", MeasureFn::Sum("v".into())),
            m("af", MeasureFn::Avg("f".into())),
            m("minv", MeasureFn::Min("v".into())),
            m("maxu", MeasureFn::Max("u".into())),
        ],
        filter: None,
        emit: EmitMode::Final,
        late: LatePolicy::Drop,
        lateness: Span::from_secs(0),
        late_table: None,
        per_partition: false,
        over: Vec::new(),
        watermark_from: crate::config::WatermarkFrom::Aggregate,
        sql: None,
    }
}

fn tumbling() -> Window {
    Window::Tumbling {
        size: Span::from_secs(60),
    }
}

pub(super) fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("t", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        Field::new("v", DataType::Int64, true),
        Field::new("f", DataType::Float64, false),
        Field::new("u", DataType::Utf8, true),
    ]))
}

#[derive(Clone, Copy)]
pub(super) struct Ev {
    pub k: Option<&'static str>,
    pub t: i64,
    pub v: Option<i64>,
    pub u: Option<&'static str>,
}

fn ev(k: Option<&'static str>, t: i64) -> Ev {
    Ev {
        k,
        t,
        v: Some(1),
        u: Some("x"),
    }
}

pub(super) fn batch(evs: &[Ev]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(evs.iter().map(|e| e.k).collect::<Vec<_>>())),
            Arc::new(TimestampMicrosecondArray::from(
                evs.iter().map(|e| e.t).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(evs.iter().map(|e| e.v).collect::<Vec<_>>())),
            #[allow(clippy::cast_precision_loss)]
            Arc::new(Float64Array::from(
                evs.iter().map(|e| (e.t / SEC % 7) as f64).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(evs.iter().map(|e| e.u).collect::<Vec<_>>())),
        ],
    )
    .unwrap()
}

pub(super) fn positions(n: usize) -> Int64Array {
    Int64Array::from_iter_values(0..n as i64)
}

/// Pseudo-random out-of-order events: times advance ~1s each, jittered by up to 20s,
/// with bursts and pauses so sessions form and merge.
pub(super) fn events(n: usize) -> Vec<Ev> {
    let keys = [Some("a"), Some("b"), None, Some("c")];
    let us = [Some("p"), Some("q"), None, Some("r"), Some("s")];
    (0..n)
        .map(|i| {
            let jitter = ((i * 7919) % 21) as i64 * SEC;
            let pause = (i / 97) as i64 * 150 * SEC;
            Ev {
                k: keys[(i * 31) % 4],
                t: i as i64 * SEC - jitter + pause,
                v: (i % 5 != 0).then_some((i as i64 * 13) % 101 - 50),
                u: us[(i * 17) % 5],
            }
        })
        .collect()
}

type Table = BTreeMap<(Option<i64>, Option<String>), Vec<String>>;
/// A window's end and its events.
type Window_ = (i64, Vec<Ev>);

/// Applies emitted batches to a table keyed by (window_start, key): appends must be new
/// rows; keyed outputs upsert (`u`) and delete (`d`).
fn apply(table: &mut Table, out: &[RecordBatch]) {
    for b in out {
        let ws = b.column(0).as_primitive::<TimestampMicrosecondType>();
        let we = b.column(1).as_primitive::<TimestampMicrosecondType>();
        let k = b.column(2).as_string::<i32>();
        let op = b.schema().index_of("_op").ok();
        let last = op.unwrap_or(b.num_columns());
        for i in 0..b.num_rows() {
            let key = (
                ws.is_valid(i).then(|| ws.value(i)),
                k.is_valid(i).then(|| k.value(i).to_string()),
            );
            if op.is_some_and(|o| b.column(o).as_string::<i32>().value(i) == "d") {
                assert!(table.remove(&key).is_some(), "delete of a missing row {key:?}");
                continue;
            }
            let mut vals = vec![if we.is_valid(i) {
                we.value(i).to_string()
            } else {
                "-".into()
            }];
            vals.extend((3..last).map(|c| array_value_to_string(b.column(c), i).unwrap()));
            let old = table.insert(key.clone(), vals);
            assert!(op.is_some() || old.is_none(), "{key:?} emitted twice");
        }
    }
}

/// What the aggregate must hold, computed directly from all events.
fn reference(w: Window, evs: &[Ev]) -> Table {
    let mut groups: BTreeMap<(Option<i64>, Option<String>), Window_> = BTreeMap::new();
    let mut by_key: BTreeMap<Option<&str>, Vec<Ev>> = BTreeMap::new();
    for e in evs {
        match w {
            Window::Tumbling { size } | Window::Hopping { size, .. } => {
                let (size, slide) = match w {
                    Window::Hopping { slide, .. } => (size.as_micros(), slide.as_micros()),
                    _ => (size.as_micros(), size.as_micros()),
                };
                let mut s = e.t - e.t.rem_euclid(slide);
                while s > e.t - size {
                    let g = groups
                        .entry((Some(s), e.k.map(str::to_string)))
                        .or_insert((s + size, vec![]));
                    g.1.push(*e);
                    s -= slide;
                }
            }
            Window::Session { .. } => by_key.entry(e.k).or_default().push(*e),
            Window::Cumulate { .. } => unreachable!("cumulating windows have tests of their own"),
            Window::Global => groups
                .entry((None, e.k.map(str::to_string)))
                .or_insert((i64::MIN, vec![]))
                .1
                .push(*e),
        }
    }
    if let Window::Session { gap } = w {
        for (k, mut list) in by_key {
            list.sort_by_key(|e| e.t);
            let mut cur: Vec<Ev> = vec![];
            for e in list {
                if cur.last().is_some_and(|l| e.t - l.t >= gap.as_micros()) {
                    let start = cur[0].t;
                    let end = cur.last().unwrap().t + gap.as_micros();
                    groups.insert(
                        (Some(start), k.map(str::to_string)),
                        (end, std::mem::take(&mut cur)),
                    );
                }
                cur.push(e);
            }
            let start = cur[0].t;
            let end = cur.last().unwrap().t + gap.as_micros();
            groups.insert((Some(start), k.map(str::to_string)), (end, cur));
        }
    }
    groups
        .into_iter()
        .map(|(key, (end, list))| {
            let vs: Vec<i64> = list.iter().filter_map(|e| e.v).collect();
            let mut us: Vec<&str> = list.iter().filter_map(|e| e.u).collect();
            us.sort_unstable();
            let max_u = us.last().map_or(String::new(), |u| (*u).to_string());
            us.dedup();
            #[allow(clippy::cast_precision_loss)]
            let fs: f64 = list.iter().map(|e| (e.t / SEC % 7) as f64).sum::<f64>() / list.len() as f64;
            let end = if end == i64::MIN {
                "-".to_string()
            } else {
                end.to_string()
            };
            let opt = |x: Option<i64>| x.map_or(String::new(), |x| x.to_string());
            let vals = vec![
                end,
                list.len().to_string(),
                vs.len().to_string(),
                us.len().to_string(),
                opt((!vs.is_empty()).then(|| vs.iter().sum())),
                array_value_to_string(&Float64Array::from(vec![fs]), 0).unwrap(),
                opt(vs.iter().min().copied()),
                max_u,
            ];
            (key, vals)
        })
        .collect()
}

pub(super) fn run(op: &mut dyn Operator, evs: &[Ev], chunk: usize) -> Vec<RecordBatch> {
    let mut out = vec![];
    for c in evs.chunks(chunk) {
        op.process_batch("s", &batch(c), &positions(c.len())).unwrap();
        out.extend(op.on_watermark().unwrap());
    }
    out
}

fn every_window() -> [Window; 4] {
    [
        tumbling(),
        Window::Hopping {
            size: Span::from_secs(60),
            slide: Span::from_secs(15),
        },
        Window::Session {
            gap: Span::from_secs(20),
        },
        Window::Global,
    ]
}

#[test]
fn every_window_kind_matches_a_direct_computation_for_out_of_order_input() {
    let evs = events(2000);
    for w in every_window() {
        for emit in [EmitMode::Final, EmitMode::Update] {
            let mut c = cfg(w, 30);
            c.emit = emit;
            let mut op = build(&c, &schema()).unwrap();
            let mut out = run(op.as_mut(), &evs, 37);
            out.extend(op.on_close().unwrap());
            let mut got = Table::new();
            apply(&mut got, &out);
            assert_eq!(got, reference(w, &evs), "{w:?} {emit:?}");
            assert_eq!(op.stats(), OperatorStats::default(), "{w:?}");
        }
    }
}

#[test]
fn a_restored_snapshot_continues_exactly_like_an_uninterrupted_run() {
    let evs = events(1500);
    for w in every_window() {
        for emit in [EmitMode::Final, EmitMode::Update] {
            let mut c = cfg(w, 30);
            c.emit = emit;
            let mut straight = build(&c, &schema()).unwrap();
            let mut expected = run(straight.as_mut(), &evs, 50);
            expected.extend(straight.on_close().unwrap());

            let mut first = build(&c, &schema()).unwrap();
            let mut got = run(first.as_mut(), &evs[..700], 50);
            let snapshot = first.on_checkpoint().unwrap();
            // Snapshots are deterministic: equal state, equal bytes.
            assert_eq!(snapshot, first.on_checkpoint().unwrap());
            drop(first);
            let mut second = build(&c, &schema()).unwrap();
            second.on_start(Some(snapshot)).unwrap();
            got.extend(run(second.as_mut(), &evs[700..], 50));
            got.extend(second.on_close().unwrap());
            let (mut a, mut b) = (Table::new(), Table::new());
            apply(&mut a, &got);
            apply(&mut b, &expected);
            assert_eq!(a, b, "{w:?} {emit:?}");
        }
    }
}

#[test]
fn windows_close_only_when_the_watermark_passes_their_end() {
    let mut op = build(&cfg(tumbling(), 30), &schema()).unwrap();
    op.process_batch(
        "s",
        &batch(&[ev(Some("a"), 10 * SEC), ev(Some("a"), 80 * SEC)]),
        &positions(2),
    )
    .unwrap();
    // Watermark 80s - 30s = 50s: the [0, 60s) window is still open.
    assert!(op.on_watermark().unwrap().is_none());
    op.process_batch("s", &batch(&[ev(Some("a"), 95 * SEC)]), &positions(1))
        .unwrap();
    // Watermark 65s: [0, 60s) closes, [60s, 120s) stays open.
    let out = op.on_watermark().unwrap().unwrap();
    assert_eq!(out.num_rows(), 1);
    assert_eq!(
        out.column(0).as_primitive::<TimestampMicrosecondType>().value(0),
        0
    );
    assert_eq!(op.watermark(), 65 * SEC);
}

/// Two batches: the first closes [0, 60s) and [60s, 120s); the second has three late
/// events (one beyond `lateness` = 60s) and one on time.
fn late_run(late: LatePolicy) -> (Box<dyn Operator>, Vec<RecordBatch>) {
    let mut c = cfg(tumbling(), 0);
    c.late = late;
    if late == LatePolicy::Update {
        c.lateness = Span::from_secs(60);
    }
    let mut op = build(&c, &schema()).unwrap();
    let mut out = vec![];
    op.process_batch(
        "s",
        &batch(&[ev(Some("a"), 10 * SEC), ev(Some("a"), 130 * SEC)]),
        &positions(2),
    )
    .unwrap();
    out.extend(op.on_watermark().unwrap());
    // Watermark 130s: [0, 60s) is past 60s of lateness (60 + 60 <= 130), [60s, 120s) is not.
    op.process_batch(
        "s",
        &batch(&[
            ev(Some("a"), 5 * SEC),
            ev(Some("b"), 61 * SEC),
            ev(None, 119 * SEC),
            ev(Some("a"), 125 * SEC),
        ]),
        &Int64Array::from(vec![10, 11, 12, 13]),
    )
    .unwrap();
    out.extend(op.on_watermark().unwrap());
    out.extend(op.on_close().unwrap());
    (op, out)
}

#[test]
fn late_events_are_dropped_and_counted_exactly() {
    let (op, out) = late_run(LatePolicy::Drop);
    assert_eq!(op.stats().late_dropped, 3);
    let mut t = Table::new();
    apply(&mut t, &out);
    assert_eq!(t.keys().filter(|k| k.1.as_deref() == Some("a")).count(), 2);
    assert_eq!(t.len(), 2, "{t:?}");
}

#[test]
fn late_events_go_to_the_late_table_with_their_position() {
    let (mut op, _) = late_run(LatePolicy::Dlq);
    assert_eq!(op.stats().late_dead_lettered, 3);
    let late = op.take_late();
    assert_eq!(late.len(), 1);
    let late = &late[0];
    assert_eq!(late.num_rows(), 3);
    let pos = late
        .column_by_name("_late_position")
        .unwrap()
        .as_primitive::<deltalake::arrow::datatypes::Int64Type>();
    assert_eq!(pos.values().to_vec(), vec![10, 11, 12]);
    assert!(op.take_late().is_empty());
}

#[test]
fn late_events_within_lateness_correct_their_window() {
    let (op, out) = late_run(LatePolicy::Update);
    assert_eq!(op.stats().late_corrected, 2);
    assert_eq!(op.stats().late_dropped, 1);
    let mut t = Table::new();
    apply(&mut t, &out);
    // [60s, 120s) gained b and the null key; [0, 60s) kept its one event.
    assert_eq!(t[&(Some(MIN), Some("b".into()))][1], "1");
    assert_eq!(t[&(Some(MIN), None)][1], "1");
    assert_eq!(t[&(Some(0), Some("a".into()))][1], "1");
    assert_eq!(t[&(Some(2 * MIN), Some("a".into()))][1], "2");
}

#[test]
fn a_bridging_event_merges_sessions_and_deletes_the_merged_row() {
    let mut c = cfg(
        Window::Session {
            gap: Span::from_secs(10),
        },
        60,
    );
    c.emit = EmitMode::Update;
    let mut op = build(&c, &schema()).unwrap();
    let mut t = Table::new();
    op.process_batch(
        "s",
        &batch(&[ev(Some("a"), 0), ev(Some("a"), 15 * SEC)]),
        &positions(2),
    )
    .unwrap();
    apply(
        &mut t,
        &op.on_watermark().unwrap().into_iter().collect::<Vec<_>>(),
    );
    assert_eq!(t.len(), 2);
    // 7s is less than 10s from both: one session [0, 25s).
    op.process_batch("s", &batch(&[ev(Some("a"), 7 * SEC)]), &positions(1))
        .unwrap();
    apply(
        &mut t,
        &op.on_watermark().unwrap().into_iter().collect::<Vec<_>>(),
    );
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!(
        t[&(Some(0), Some("a".into()))][..2],
        [(25 * SEC).to_string(), "3".to_string()]
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_shard_stops_holding_the_watermark_back_after_idle_timeout() {
    let mut c = cfg(tumbling(), 0);
    c.idle_timeout = Some(Span::from_secs(30));
    let mut op = build(&c, &schema()).unwrap();
    op.expect_shards(&["p0".into(), "p1".into(), "p2".into()]);
    op.process_batch("p1", &batch(&[ev(Some("a"), 200 * SEC)]), &positions(1))
        .unwrap();
    // p0 and p2 have sent nothing yet: they hold the watermark back.
    assert!(op.on_watermark().unwrap().is_none());
    assert_eq!(op.watermark(), i64::MIN);
    tokio::time::advance(Duration::from_secs(20)).await;
    op.process_batch("p0", &batch(&[ev(Some("a"), 5 * SEC)]), &positions(1))
        .unwrap();
    tokio::time::advance(Duration::from_secs(11)).await;
    // p2 has been quiet for 31s since the start: idle. p0 holds the watermark at 5s.
    assert!(op.on_watermark().unwrap().is_none());
    assert_eq!(op.watermark(), 5 * SEC);
    tokio::time::advance(Duration::from_secs(18)).await;
    op.process_batch("p1", &batch(&[ev(Some("a"), 201 * SEC)]), &positions(1))
        .unwrap();
    assert!(op.on_watermark().unwrap().is_none());
    tokio::time::advance(Duration::from_secs(13)).await;
    // p0 has been quiet for 31s: the watermark is p1's 201s, and [0, 60s) closes.
    let out = op.on_watermark().unwrap().unwrap();
    assert_eq!(out.num_rows(), 1);
    assert_eq!(op.watermark(), 201 * SEC);
    // When p0 speaks again the watermark does not move back.
    op.process_batch("p0", &batch(&[ev(Some("a"), 6 * SEC)]), &positions(1))
        .unwrap();
    assert_eq!(op.stats().late_dropped, 1);
    assert!(op.on_watermark().unwrap().is_none());
    assert_eq!(op.watermark(), 201 * SEC);
}

#[test]
fn filters_and_approximate_distinct_counts() {
    let mut c = cfg(Window::Global, 0);
    c.filter = Some("v IS NOT NULL AND v > 0".into());
    c.measures = vec![
        Measure {
            name: "n".into(),
            func: MeasureFn::CountAll,
        },
        Measure {
            name: "approx".into(),
            func: MeasureFn::ApproxCountDistinct("t".into()),
        },
    ];
    c.group_by = vec![];
    let mut op = build(&c, &schema()).unwrap();
    let evs: Vec<Ev> = (0..20_000)
        .map(|i| Ev {
            k: None,
            t: i * SEC,
            v: Some(i % 2),
            u: None,
        })
        .collect();
    run(op.as_mut(), &evs, 4096);
    let out = op.on_close().unwrap().unwrap();
    let n = out
        .column(2)
        .as_primitive::<deltalake::arrow::datatypes::Int64Type>()
        .value(0);
    let approx = out
        .column(3)
        .as_primitive::<deltalake::arrow::datatypes::Int64Type>()
        .value(0);
    assert_eq!(n, 10_000);
    assert!((approx - 10_000).abs() < 10_000 * 4 * 16 / 1000, "{approx}");
}

#[test]
fn null_event_times_are_counted_not_fatal() {
    let mut op = build(&cfg(tumbling(), 0), &schema()).unwrap();
    let mut b = batch(&[ev(Some("a"), 1), ev(Some("a"), 2)]);
    let mut cols = b.columns().to_vec();
    cols[1] = Arc::new(TimestampMicrosecondArray::from(vec![None, Some(i64::MIN + 1)]));
    b = RecordBatch::try_new(schema(), cols).unwrap();
    op.process_batch("s", &b, &positions(2)).unwrap();
    assert_eq!(op.stats().no_event_time, 2);
}

#[test]
fn configuration_mistakes_name_the_key() {
    let err = |c: &AggregateConfig| build(c, &schema()).err().unwrap().to_string();
    let mut c = cfg(tumbling(), 0);
    c.group_by = vec!["nope".into()];
    assert!(
        err(&c).starts_with("aggregates[0].group_by[0]: stream \"s\" has no column \"nope\""),
        "{}",
        err(&c)
    );
    let mut c = cfg(tumbling(), 0);
    c.event_time = "f".into();
    assert!(err(&c).starts_with("aggregates[0].event_time"), "{}", err(&c));
    let mut c = cfg(tumbling(), 0);
    c.measures[3].func = MeasureFn::Sum("u".into());
    assert!(
        err(&c).starts_with("aggregates[0].measures.sv: sum needs a numeric column"),
        "{}",
        err(&c)
    );
    let mut c = cfg(tumbling(), 0);
    c.filter = Some("nope > 1".into());
    assert!(err(&c).starts_with("aggregates[0].filter"), "{}", err(&c));
}

#[test]
fn a_snapshot_of_another_aggregate_shape_is_refused() {
    let mut op = build(&cfg(tumbling(), 30), &schema()).unwrap();
    run(op.as_mut(), &events(100), 50);
    let snapshot = op.on_checkpoint().unwrap();
    let mut other = cfg(
        Window::Tumbling {
            size: Span::from_secs(120),
        },
        30,
    );
    let e = build(&other, &schema())
        .unwrap()
        .on_start(Some(snapshot.clone()))
        .unwrap_err();
    assert!(e.to_string().contains("recompute it into a new table"), "{e}");
    other = cfg(tumbling(), 30);
    other.measures.pop();
    assert!(
        build(&other, &schema())
            .unwrap()
            .on_start(Some(snapshot.clone()))
            .is_err()
    );
    build(&cfg(tumbling(), 30), &schema())
        .unwrap()
        .on_start(Some(snapshot))
        .unwrap();
}

#[test]
fn a_changed_stream_schema_is_read_by_column_name() {
    let mut op = build(&cfg(tumbling(), 0), &schema()).unwrap();
    op.process_batch("s", &batch(&[ev(Some("a"), SEC)]), &positions(1))
        .unwrap();
    // Columns reordered, `f` widened to text, `u` dropped, a new column added.
    let evolved = Arc::new(Schema::new(vec![
        Field::new("extra", DataType::Int64, true),
        Field::new("t", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        Field::new("f", DataType::Utf8, true),
        Field::new("v", DataType::Int64, true),
        Field::new("k", DataType::Utf8, true),
    ]));
    let b = RecordBatch::try_new(
        evolved,
        vec![
            Arc::new(Int64Array::from(vec![7, 7])),
            Arc::new(TimestampMicrosecondArray::from(vec![2 * SEC, 3 * SEC])),
            Arc::new(StringArray::from(vec!["2", "x"])),
            Arc::new(Int64Array::from(vec![Some(5), None])),
            Arc::new(StringArray::from(vec!["a", "a"])),
        ],
    )
    .unwrap();
    op.process_batch("s", &b, &positions(2)).unwrap();
    let out = op.on_close().unwrap().unwrap();
    let mut t = Table::new();
    apply(&mut t, &[out]);
    // n, nv, du (u gone: only the first event's "x"), sv, avg of f (1.0 from the first
    // event, 2.0 from "2", and "x" does not cast: NULL), min v, max u.
    assert_eq!(
        t[&(Some(0), Some("a".into()))][1..],
        ["3", "2", "1", "6", "1.5", "1", "x"].map(String::from)
    );
}

/// A bounded input's last micro-batch both changes global groups and ends the input:
/// the rows of that commit (`on_watermark` then `on_close`) name each key once, or the
/// MERGE that writes them refuses two source rows for one target row.
#[test]
fn the_last_batch_of_a_bounded_input_writes_each_global_key_once() {
    for emit in [EmitMode::Update, EmitMode::Final] {
        let mut c = cfg(Window::Global, 0);
        c.emit = emit;
        let mut op = build(&c, &schema()).unwrap();
        let evs = events(500);
        op.process_batch("s", &batch(&evs[..300]), &positions(300))
            .unwrap();
        let _ = op.on_watermark().unwrap();
        op.process_batch("s", &batch(&evs[300..]), &positions(200))
            .unwrap();
        let mut commit: Vec<RecordBatch> = op.on_watermark().unwrap().into_iter().collect();
        commit.extend(op.on_close().unwrap());
        let mut keys: Vec<Option<String>> = vec![];
        for b in &commit {
            let k = b.column(2).as_string::<i32>();
            keys.extend((0..b.num_rows()).map(|i| k.is_valid(i).then(|| k.value(i).to_string())));
        }
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n, "{emit:?}: a key twice in one commit");
        assert_eq!(n, 4, "{emit:?}: every key changed, so every key is written");
    }
}
