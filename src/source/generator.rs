//! Deterministic synthetic clickstream.
//!
//! Event `i` is a pure function of `(seed, i)` (a counter-based generator), so a run can
//! resume at any position and replay exactly the events an uninterrupted run would
//! have produced. That makes the generator a faithful stand-in for a replayable log.

use std::fmt::Write as _;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use deltalake::arrow::array::{Int64Array, RecordBatch, StringBuilder, TimestampMicrosecondBuilder};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use tokio::time::Instant;

use super::{Polled, RunMode, Source, SourceBatch, SourceError};
use crate::config::GeneratorConfig;
use crate::progress::Progress;

const PAGES: &[&str] = &[
    "/",
    "/search",
    "/products",
    "/product/1",
    "/product/2",
    "/product/3",
    "/product/4",
    "/product/5",
    "/cart",
    "/checkout",
    "/account",
    "/login",
    "/help",
    "/blog",
    "/blog/launch",
    "/pricing",
    "/about",
    "/careers",
    "/contact",
    "/deals",
];
const COUNTRIES: &[&str] = &[
    "US", "DE", "FR", "GB", "IN", "BR", "JP", "CA", "AU", "ES", "IT", "NL",
];
const SESSION_MICROS: i64 = 30 * 60 * 1_000_000;

/// Columns of the generated clickstream.
pub fn clickstream_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        let text = |name: &str| Field::new(name, DataType::Utf8, false);
        Arc::new(Schema::new(vec![
            text("event_id"),
            text("user_id"),
            text("page"),
            text("action"),
            text("session_id"),
            text("device"),
            text("country"),
            Field::new(
                "event_timestamp",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
        ]))
    });
    SCHEMA.clone()
}

/// SplitMix64's finaliser: a bijective, well-mixed hash of a counter.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Debug)]
pub(super) struct Generator {
    cfg: GeneratorConfig,
    stream: Arc<str>,
    next: u64,
    end: Option<u64>,
    chunk_rows: usize,
    /// Wall-clock pacing for `rate > 0`: when event `paced_from` was due.
    pace_origin: Instant,
    paced_from: u64,
}

impl Generator {
    pub(super) fn open(cfg: &GeneratorConfig, resume: &Progress, _mode: RunMode, chunk_rows: usize) -> Self {
        let next = resume
            .get(&cfg.stream)
            .map_or(0, |p| u64::try_from(p).unwrap_or(0));
        // The generator is bounded by `events` in both modes: nothing more will come.
        Self {
            stream: Arc::from(cfg.stream.as_str()),
            end: cfg.events,
            chunk_rows: chunk_rows.max(1),
            pace_origin: Instant::now(),
            paced_from: next,
            next,
            cfg: cfg.clone(),
        }
    }

    fn build(&self, from: u64, n: usize) -> RecordBatch {
        let cfg = &self.cfg;
        let mut event_id = StringBuilder::with_capacity(n, n * 36);
        let mut user_id = StringBuilder::with_capacity(n, n * 10);
        let mut page = StringBuilder::with_capacity(n, n * 10);
        let mut action = StringBuilder::with_capacity(n, n * 8);
        let mut session = StringBuilder::with_capacity(n, n * 20);
        let mut device = StringBuilder::with_capacity(n, n * 7);
        let mut country = StringBuilder::with_capacity(n, n * 2);
        let mut ts = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let jitter = u64::try_from(cfg.out_of_order.as_micros()).unwrap_or(0) + 1;
        let step = cfg.interval.as_micros();
        let mut uuid_buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        for i in from..from + n as u64 {
            let r0 = mix(cfg.seed ^ mix(i));
            let r1 = mix(r0);
            let r2 = mix(r1);
            let id =
                uuid::Builder::from_random_bytes(((u128::from(r0) << 64) | u128::from(r1)).to_be_bytes())
                    .into_uuid();
            event_id.append_value(id.hyphenated().encode_lower(&mut uuid_buf));

            let user = (r2 >> 32) % u64::from(cfg.users);
            let t = cfg
                .start_micros
                .saturating_add((i as i64).saturating_mul(step))
                .saturating_sub(((r2 & 0xffff_ffff) % jitter) as i64);
            ts.append_value(t);
            // Writing into the builder then appending "" finishes the row without a
            // temporary String per event.
            let _ = write!(user_id, "user-{user:05}");
            user_id.append_value("");
            let _ = write!(session, "sess-{user:05}-{}", t.div_euclid(SESSION_MICROS));
            session.append_value("");

            // Page popularity is skewed (squared uniform): a few pages get most views.
            let x = r1 % 1024;
            page.append_value(PAGES[(x * x * PAGES.len() as u64 / (1024 * 1024)) as usize]);
            action.append_value(match r0 % 100 {
                0..70 => "view",
                70..90 => "click",
                90..97 => "add_to_cart",
                _ => "purchase",
            });
            device.append_value(match (r0 >> 8) % 10 {
                0..6 => "mobile",
                6..9 => "desktop",
                _ => "tablet",
            });
            country.append_value(COUNTRIES[((r1 >> 16) % COUNTRIES.len() as u64) as usize]);
        }
        RecordBatch::try_new(
            clickstream_schema(),
            vec![
                Arc::new(event_id.finish()),
                Arc::new(user_id.finish()),
                Arc::new(page.finish()),
                Arc::new(action.finish()),
                Arc::new(session.finish()),
                Arc::new(device.finish()),
                Arc::new(country.finish()),
                Arc::new(ts.finish()),
            ],
        )
        .expect("generator columns match the clickstream schema")
    }
}

#[async_trait]
impl Source for Generator {
    fn shards(&self) -> Vec<String> {
        vec![self.cfg.stream.clone()]
    }

    fn schema(&self) -> Option<SchemaRef> {
        Some(clickstream_schema())
    }

    async fn poll(&mut self) -> Result<Polled, SourceError> {
        let remaining = self.end.map_or(u64::MAX, |e| e.saturating_sub(self.next));
        if remaining == 0 {
            // Position `events` is the end-of-input marker; past it there is nothing.
            if self.end == Some(self.next) {
                self.next += 1;
                return Ok(Polled::Batch(SourceBatch {
                    stream: self.stream.clone(),
                    shard: self.stream.clone(),
                    records: RecordBatch::new_empty(clickstream_schema()),
                    positions: Int64Array::from(Vec::<i64>::new()),
                    next: self.next as i64,
                    end_of_input: true,
                    rejected: None,
                    control: None,
                    spilled: None,
                    cursor: None,
                }));
            }
            return Ok(Polled::End);
        }
        let mut n = remaining.min(self.chunk_rows as u64);
        if self.cfg.rate > 0 {
            // Small chunks keep a paced stream smooth (about 20 per second).
            n = n.min((self.cfg.rate / 20).max(1));
            let due = Duration::from_secs_f64((self.next - self.paced_from) as f64 / self.cfg.rate as f64);
            tokio::time::sleep_until(self.pace_origin + due).await;
        }
        let from = self.next;
        let n_rows = usize::try_from(n).unwrap_or(usize::MAX);
        let records = self.build(from, n_rows);
        self.next += n;
        let positions = Int64Array::from_iter_values((from..self.next).map(|p| p as i64));
        Ok(Polled::Batch(SourceBatch {
            stream: self.stream.clone(),
            shard: self.stream.clone(),
            records,
            positions,
            next: self.next as i64,
            end_of_input: false,
            rejected: None,
            control: None,
            spilled: None,
            cursor: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Span;
    use deltalake::arrow::array::{Array, StringArray};

    fn cfg(events: u64) -> GeneratorConfig {
        GeneratorConfig {
            events: Some(events),
            rate: 0,
            seed: 42,
            out_of_order: Span::from_secs(20),
            start_micros: 1_767_225_600_000_000,
            interval: Span::from_millis(10),
            users: 100,
            stream: "clickstream".into(),
        }
    }

    async fn drain(mut g: Generator) -> Vec<SourceBatch> {
        let mut out = vec![];
        while let Polled::Batch(b) = g.poll().await.unwrap() {
            if !b.end_of_input {
                out.push(b);
            }
        }
        out
    }

    #[tokio::test]
    async fn same_seed_same_events_from_any_resume_point() {
        let all = drain(Generator::open(&cfg(1000), &Progress::new(), RunMode::Once, 300)).await;
        assert_eq!(all.iter().map(|b| b.records.num_rows()).sum::<usize>(), 1000);
        assert_eq!(all.last().unwrap().next, 1000);
        // The end marker sits at position 1000; resuming past it yields nothing more.
        let mut done = Progress::new();
        done.advance("clickstream", 1000);
        let mut g = Generator::open(&cfg(1000), &done, RunMode::Once, 300);
        match g.poll().await.unwrap() {
            Polled::Batch(b) => assert!(b.end_of_input && b.next == 1001 && b.records.num_rows() == 0),
            other => panic!("expected the end marker, got {other:?}"),
        }
        assert!(matches!(g.poll().await.unwrap(), Polled::End));
        done.advance("clickstream", 1001);
        let mut g = Generator::open(&cfg(1000), &done, RunMode::Once, 300);
        assert!(matches!(g.poll().await.unwrap(), Polled::End));

        let mut resume = Progress::new();
        resume.advance("clickstream", 450);
        let tail = drain(Generator::open(&cfg(1000), &resume, RunMode::Once, 300)).await;
        assert_eq!(tail[0].positions.value(0), 450);
        let ids = |b: &SourceBatch| {
            let a = b
                .records
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            (0..a.len()).map(|i| a.value(i).to_string()).collect::<Vec<_>>()
        };
        let full: Vec<String> = all.iter().flat_map(ids).collect();
        let rest: Vec<String> = tail.iter().flat_map(ids).collect();
        assert_eq!(&full[450..], &rest[..]);
        let unique: std::collections::HashSet<_> = full.iter().collect();
        assert_eq!(unique.len(), 1000, "event ids repeat");
    }

    #[tokio::test]
    async fn jitter_stays_within_out_of_order() {
        let c = cfg(2000);
        let batches = drain(Generator::open(&c, &Progress::new(), RunMode::Once, 2000)).await;
        let ts = batches[0]
            .records
            .column(7)
            .as_any()
            .downcast_ref::<deltalake::arrow::array::TimestampMicrosecondArray>()
            .unwrap()
            .clone();
        for i in 0..ts.len() {
            let ideal = c.start_micros + i as i64 * c.interval.as_micros();
            let lag = ideal - ts.value(i);
            assert!(
                (0..=c.out_of_order.as_micros()).contains(&lag),
                "event {i} lags {lag}µs"
            );
        }
    }
}
