use std::collections::BTreeMap;

use deltalake::arrow::array::{StringArray, TimestampMicrosecondArray};

use super::*;
use crate::config::{AggregateConfig, EmitMode, LatePolicy, Measure, Span, Window};

const MIN: i64 = 60_000_000;

fn cfg(watermark_secs: u64) -> AggregateConfig {
    AggregateConfig {
        name: "agg".into(),
        key: "aggregates[0]".into(),
        from: "s".into(),
        event_time: "t".into(),
        window: Window::Tumbling {
            size: Span::from_secs(60),
        },
        watermark: Span::from_secs(watermark_secs),
        group_by: vec!["k".into()],
        measures: vec![
            Measure {
                name: "n".into(),
                func: MeasureFn::CountAll,
            },
            Measure {
                name: "nk".into(),
                func: MeasureFn::Count("k".into()),
            },
        ],
        emit: EmitMode::Final,
        late: LatePolicy::Drop,
    }
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("t", DataType::Timestamp(TimeUnit::Microsecond, None), true),
    ]))
}

fn batch(rows: &[(Option<&str>, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
            Arc::new(TimestampMicrosecondArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

/// (window_start, key) → (count, non-null count), summed over emitted batches; panics
/// if a window/key pair is emitted twice.
fn collect(out: &[RecordBatch]) -> BTreeMap<(i64, Option<String>), (i64, i64)> {
    let mut m = BTreeMap::new();
    for b in out {
        let ws = b.column(0).as_primitive::<TimestampMicrosecondType>();
        let we = b.column(1).as_primitive::<TimestampMicrosecondType>();
        let k = b.column(2).as_string::<i32>();
        let n = b
            .column(3)
            .as_primitive::<deltalake::arrow::datatypes::Int64Type>();
        let nk = b
            .column(4)
            .as_primitive::<deltalake::arrow::datatypes::Int64Type>();
        for i in 0..b.num_rows() {
            assert_eq!(we.value(i) - ws.value(i), MIN);
            let key = (ws.value(i), k.is_valid(i).then(|| k.value(i).to_string()));
            assert!(
                m.insert(key.clone(), (n.value(i), nk.value(i))).is_none(),
                "{key:?} emitted twice"
            );
        }
    }
    m
}

/// Pseudo-random out-of-order events: times advance ~1s each, jittered by up to 20s.
fn events(n: usize) -> Vec<(Option<&'static str>, i64)> {
    let keys = [Some("a"), Some("b"), None, Some("c")];
    (0..n)
        .map(|i| {
            let jitter = ((i * 7919) % 21) as i64 * 1_000_000;
            (keys[(i * 31) % 4], i as i64 * 1_000_000 - jitter)
        })
        .collect()
}

fn run(op: &mut TumblingAggregate, evs: &[(Option<&str>, i64)], chunk: usize) -> Vec<RecordBatch> {
    let mut out = vec![];
    for c in evs.chunks(chunk) {
        op.process_batch("s", &batch(c)).unwrap();
        out.extend(op.on_watermark().unwrap());
    }
    out
}

#[test]
fn out_of_order_input_within_the_watermark_counts_every_event_once() {
    let evs = events(1000);
    let mut op = TumblingAggregate::new(&cfg(30), &schema(), MIN).unwrap();
    let mut out = run(&mut op, &evs, 37);
    out.extend(op.on_close().unwrap());
    let got = collect(&out);
    let mut want: BTreeMap<(i64, Option<String>), (i64, i64)> = BTreeMap::new();
    for (k, t) in &evs {
        let e = want
            .entry((t - t.rem_euclid(MIN), k.map(str::to_string)))
            .or_default();
        e.0 += 1;
        e.1 += i64::from(k.is_some());
    }
    assert_eq!(got, want);
    assert_eq!(op.stats(), OperatorStats::default());
}

#[test]
fn windows_close_only_when_the_watermark_passes_their_end() {
    let mut op = TumblingAggregate::new(&cfg(30), &schema(), MIN).unwrap();
    op.process_batch("s", &batch(&[(Some("a"), 10_000_000), (Some("a"), 80_000_000)]))
        .unwrap();
    // Watermark 80s - 30s = 50s: the [0, 60s) window is still open.
    assert!(op.on_watermark().unwrap().is_none());
    op.process_batch("s", &batch(&[(Some("a"), 95_000_000)])).unwrap();
    // Watermark 65s: [0, 60s) closes, [60s, 120s) stays open.
    let out = collect(&op.on_watermark().unwrap().into_iter().collect::<Vec<_>>());
    assert_eq!(out, BTreeMap::from([((0, Some("a".to_string())), (1, 1))]));
}

#[test]
fn late_events_are_dropped_and_counted_exactly() {
    let mut op = TumblingAggregate::new(&cfg(0), &schema(), MIN).unwrap();
    op.process_batch("s", &batch(&[(Some("a"), 10_000_000), (Some("a"), 130_000_000)]))
        .unwrap();
    let first = op.on_watermark().unwrap();
    assert_eq!(collect(&first.into_iter().collect::<Vec<_>>()).len(), 1);
    // Both windows [0,60s) and [60s,120s) are final now: three late events, one on time.
    op.process_batch(
        "s",
        &batch(&[
            (Some("a"), 5_000_000),
            (Some("b"), 61_000_000),
            (None, 119_999_999),
            (Some("a"), 125_000_000),
        ]),
    )
    .unwrap();
    assert_eq!(op.stats().late_dropped, 3);
    let rest = collect(&op.on_close().unwrap().into_iter().collect::<Vec<_>>());
    assert_eq!(rest, BTreeMap::from([((2 * MIN, Some("a".to_string())), (2, 2))]));
}

#[test]
fn null_event_times_are_counted_not_fatal() {
    let mut op = TumblingAggregate::new(&cfg(0), &schema(), MIN).unwrap();
    let b = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(vec![Some("a"), Some("a")])),
            Arc::new(TimestampMicrosecondArray::from(vec![None, Some(1)])),
        ],
    )
    .unwrap();
    op.process_batch("s", &b).unwrap();
    assert_eq!(op.stats().no_event_time, 1);
}

#[test]
fn a_restored_snapshot_continues_exactly_like_an_uninterrupted_run() {
    let evs = events(900);
    let mut straight = TumblingAggregate::new(&cfg(30), &schema(), MIN).unwrap();
    let mut expected = run(&mut straight, &evs, 50);
    expected.extend(straight.on_close().unwrap());

    let mut first = TumblingAggregate::new(&cfg(30), &schema(), MIN).unwrap();
    let mut got = run(&mut first, &evs[..450], 50);
    let snapshot = first.on_checkpoint().unwrap();
    // Snapshots are deterministic: equal state, equal bytes.
    assert_eq!(snapshot, first.on_checkpoint().unwrap());
    drop(first);
    let mut second = TumblingAggregate::new(&cfg(30), &schema(), MIN).unwrap();
    second.on_start(Some(snapshot)).unwrap();
    got.extend(run(&mut second, &evs[450..], 50));
    got.extend(second.on_close().unwrap());
    assert_eq!(collect(&got), collect(&expected));
}

#[test]
fn configuration_mistakes_name_the_key() {
    let mut c = cfg(0);
    c.group_by = vec!["nope".into()];
    let e = TumblingAggregate::new(&c, &schema(), MIN)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("aggregates[0].group_by[0]: stream \"s\" has no column \"nope\""),
        "{e}"
    );
    let mut c = cfg(0);
    c.event_time = "k2".into();
    let e = TumblingAggregate::new(&c, &schema(), MIN)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("aggregates[0].event_time"), "{e}");
}
