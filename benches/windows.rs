//! Window operator throughput on one core, no I/O: events folded per second for a
//! tumbling window with count + exact distinct count, for a hopping window of 10 ×
//! its slide with the same measures (panes: the ratio to tumbling is the point), and
//! for sessions and a global window. Batches of 32,768 events, out of order by up to
//! 20 s, 50 pages × 20,000 users; every window closes by the end. Run with
//! `bench/windows.sh`; results go to BENCHMARKS.md.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use deltalake::arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use tributary::config::{AggregateConfig, EmitMode, LatePolicy, Measure, MeasureFn, Span, Window};

const EVENTS: usize = 4_000_000;
const BATCH: usize = 32_768;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("page", DataType::Utf8, false),
        Field::new("user_id", DataType::Utf8, false),
        Field::new(
            "t",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]))
}

/// One event every 250 µs of event time (4,000/s), jittered by up to 20 s.
fn batches() -> Vec<RecordBatch> {
    let mut out = Vec::new();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for first in (0..EVENTS).step_by(BATCH) {
        let n = BATCH.min(EVENTS - first);
        let mut pages = Vec::with_capacity(n);
        let mut users = Vec::with_capacity(n);
        let mut ts = Vec::with_capacity(n);
        for i in first..first + n {
            let r = next();
            pages.push(format!("/page/{}", r % 50));
            users.push(format!("user-{}", (r >> 8) % 20_000));
            ts.push(i as i64 * 250 - ((r >> 32) % 20_000_000) as i64);
        }
        out.push(
            RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(StringArray::from(pages)),
                    Arc::new(StringArray::from(users)),
                    Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
                ],
            )
            .unwrap(),
        );
    }
    out
}

fn cfg(window: Window, group_by: &str, distinct: bool) -> AggregateConfig {
    AggregateConfig {
        name: "bench".into(),
        key: "aggregates[0]".into(),
        from: "s".into(),
        event_time: "t".into(),
        window,
        watermark: Span::from_secs(30),
        idle_timeout: None,
        group_by: vec![group_by.into()],
        measures: [
            Measure {
                name: "n".into(),
                func: MeasureFn::CountAll,
            },
            Measure {
                name: "users".into(),
                func: MeasureFn::CountDistinct("user_id".into()),
            },
        ]
        .into_iter()
        .take(if distinct { 2 } else { 1 })
        .collect(),
        filter: None,
        emit: EmitMode::Final,
        late: LatePolicy::Drop,
        lateness: Span::from_secs(0),
        late_table: None,
        per_partition: false,
        over: Vec::new(),
        watermark_from: tributary::config::WatermarkFrom::Aggregate,
        sql: None,
    }
}

/// Seconds to fold every batch (with a watermark step after each) and close; rows out.
fn run(cfg: &AggregateConfig, input: &[RecordBatch]) -> (f64, usize) {
    let mut op = tributary::window::build(cfg, &schema()).unwrap();
    let positions = Int64Array::from(vec![0; BATCH]);
    let started = Instant::now();
    let mut rows = 0;
    for b in input {
        op.process_batch("p0", b, &positions.slice(0, b.num_rows()))
            .unwrap();
        rows += op.on_watermark().unwrap().map_or(0, |o| o.num_rows());
    }
    rows += op.on_close().unwrap().map_or(0, |o| o.num_rows());
    (started.elapsed().as_secs_f64(), rows)
}

fn main() {
    let input = batches();
    let cases = [
        (
            "tumbling 1m, count + count_distinct by page",
            cfg(
                Window::Tumbling {
                    size: Span::from_secs(60),
                },
                "page",
                true,
            ),
        ),
        (
            "hopping 10m / 1m (10 panes), count + count_distinct by page",
            cfg(
                Window::Hopping {
                    size: Span::from_secs(600),
                    slide: Span::from_secs(60),
                },
                "page",
                true,
            ),
        ),
        (
            "tumbling 10m, count + count_distinct by page",
            cfg(
                Window::Tumbling {
                    size: Span::from_secs(600),
                },
                "page",
                true,
            ),
        ),
        (
            "session gap 30s, count + count_distinct by user",
            cfg(
                Window::Session {
                    gap: Span::from_secs(30),
                },
                "user_id",
                true,
            ),
        ),
        (
            "global, count + count_distinct by page",
            cfg(Window::Global, "page", true),
        ),
    ];
    let minute = Window::Tumbling {
        size: Span::from_secs(60),
    };
    let hop = Window::Hopping {
        size: Span::from_secs(600),
        slide: Span::from_secs(60),
    };
    let cases: Vec<(&str, AggregateConfig)> = cases
        .into_iter()
        .chain([
            ("tumbling 1m, count by page", cfg(minute, "page", false)),
            (
                "hopping 10m / 1m (10 panes), count by page",
                cfg(hop, "page", false),
            ),
            (
                "cumulate 10m / 1m (10 windows per block), count by page",
                cfg(
                    Window::Cumulate {
                        size: Span::from_secs(600),
                        step: Span::from_secs(60),
                    },
                    "page",
                    false,
                ),
            ),
            ("tumbling 1m, count by page + avg over 3 rows per page", {
                let mut c = cfg(minute, "page", false);
                c.over = vec![tributary::config::Over {
                    name: "n_ma3".into(),
                    func: tributary::config::OverFn::Avg,
                    measure: "n".into(),
                    partition_by: vec!["page".into()],
                    preceding: 2,
                }];
                c
            }),
        ])
        .collect();
    println!("| operator | events | seconds | events/s | rows out |");
    println!("|---|---|---|---|---|");
    let mut rates = Vec::new();
    for (name, c) in &cases {
        // Best of three: the machine is shared with nothing, but allocation warms up.
        let (secs, rows) = (0..3)
            .map(|_| run(c, &input))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap();
        let rate = EVENTS as f64 / secs;
        rates.push(rate);
        println!("| {name} | {EVENTS} | {secs:.2} | {rate:.0} | {rows} |");
    }
    println!();
    println!(
        "Hopping (size = 10 × slide) with count + count_distinct costs {:.2}× a tumbling window of \
         its slide and {:.2}× one of its size; with count alone, {:.2}× a tumbling window of its slide.",
        rates[0] / rates[1],
        rates[2] / rates[1],
        rates[5] / rates[6]
    );
}
