//! Metrics and health: every metric's name in one place, the Prometheus exporter, and
//! the `/metrics` + `/health` endpoint (`[runtime] metrics`, `--metrics ADDR`).
//!
//! Stages record through the `metrics` facade; without an installed exporter that
//! costs a branch. Only the process that serves the endpoint installs one.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Records read from the source, per stream (`stream`).
pub const RECORDS_READ: &str = "tributary_records_read_total";
/// Arrow bytes read from the source, per stream.
pub const BYTES_READ: &str = "tributary_bytes_read_total";
/// Rows committed, per table (`table`).
pub const ROWS_WRITTEN: &str = "tributary_rows_written_total";
/// Delta commits, per table.
pub const COMMITS: &str = "tributary_commits_total";
/// The latest committed version, per table.
pub const TABLE_VERSION: &str = "tributary_table_version";
/// Wall time of one table commit, retries included, per table.
pub const COMMIT_SECONDS: &str = "tributary_commit_duration_seconds";
/// Micro-batches committed.
pub const MICRO_BATCHES: &str = "tributary_micro_batches_total";
/// Records per micro-batch.
pub const BATCH_ROWS: &str = "tributary_batch_rows";
/// Arrow bytes per micro-batch.
pub const BATCH_BYTES: &str = "tributary_batch_bytes";
/// Per record, source time (Kafka timestamp, Postgres commit time) to the end of the
/// micro-batch that committed it to every table, per stream.
pub const END_TO_END_SECONDS: &str = "tributary_end_to_end_latency_seconds";
/// Records set aside in the dead-letter table.
pub const DEAD_LETTERS: &str = "tributary_dead_letters_total";
/// Late events per aggregate (`aggregate`) and what happened to them (`outcome`:
/// dropped, dead_lettered, corrected).
pub const LATE_EVENTS: &str = "tributary_late_events_total";
/// An aggregate's watermark, seconds since the epoch.
pub const WATERMARK: &str = "tributary_watermark_seconds";
/// Per Kafka partition (`topic`, `partition`): the high watermark minus the offset
/// every table holds (what is left to commit).
pub const KAFKA_LAG: &str = "tributary_kafka_lag_messages";
/// WAL between the server's current position and the slot's confirmed position (`slot`).
pub const SLOT_LAG: &str = "tributary_postgres_slot_lag_bytes";
/// WAL the slot keeps the server from recycling.
pub const SLOT_RETAINED: &str = "tributary_postgres_slot_retained_bytes";
/// Bytes of records read and not yet committed (held to half of `runtime.memory`).
pub const IN_FLIGHT_BYTES: &str = "tributary_in_flight_bytes";
/// The in-flight limit.
pub const IN_FLIGHT_LIMIT: &str = "tributary_in_flight_limit_bytes";
/// The process's resident memory, read at each scrape.
pub const RESIDENT_BYTES: &str = "tributary_process_resident_memory_bytes";
/// Runs started over after a transient failure.
pub const RESTARTS: &str = "tributary_restarts_total";
pub const HANDOVER_CONFLICTS: &str = "tributary_handover_conflicts_total";
pub const HANDOVER_SECONDS: &str = "tributary_partition_claim_seconds";
/// Files background compaction replaced (label `table`).
pub const COMPACTED_FILES: &str = "tributary_compacted_files_total";
/// 1 for the state the run is in (label `state`: starting, running, retrying,
/// stopping, failed), 0 for the others; what `/health` reports, for alerting.
pub const STATE: &str = "tributary_state";
/// When a micro-batch was last committed to every table, seconds since the epoch.
pub const LAST_COMMIT: &str = "tributary_last_commit_timestamp_seconds";

const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
const ROW_BUCKETS: &[f64] = &[1.0, 10.0, 100.0, 1e3, 1e4, 5e4, 1e5, 5e5, 1e6];
const BYTE_BUCKETS: &[f64] = &[
    1024.0,
    65536.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
];

static EXPORTER: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn install() -> Result<&'static PrometheusHandle, String> {
    EXPORTER
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_ROWS.into()), ROW_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_BYTES.into()), BYTE_BUCKETS))
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())?;
            describe();
            // Counters without labels exist from the start, so `increase()` over them
            // (and alerts on them) work before the first event.
            for name in [RESTARTS, DEAD_LETTERS, MICRO_BATCHES] {
                metrics::counter!(name).increment(0);
            }
            Ok(handle)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Whether an exporter is installed (so per-record metrics are worth computing).
pub fn enabled() -> bool {
    EXPORTER.get().is_some_and(Result::is_ok)
}

/// Records, per record of each `(stream, records)` with a source time in `column`, the
/// time from then to now. Records of one source transaction or one Kafka millisecond share a
/// time, so the latency is computed once per run of equal times and recorded with its
/// count (the exporter keeps one sample per record until its upkeep folds them into
/// buckets, every 5 s).
pub fn record_latencies<'a>(
    pending: impl IntoIterator<Item = (&'a str, &'a deltalake::arrow::array::RecordBatch)>,
    column: &str,
) {
    use deltalake::arrow::array::{Array, TimestampMicrosecondArray};
    use deltalake::arrow::compute::cast;
    use deltalake::arrow::datatypes::{DataType, TimeUnit};

    let now = chrono::Utc::now().timestamp_micros();
    for (stream, records) in pending {
        let Some(times) = records.column_by_name(column) else {
            continue;
        };
        let Ok(times) = cast(times, &DataType::Timestamp(TimeUnit::Microsecond, None)) else {
            continue;
        };
        let Some(times) = times.as_any().downcast_ref::<TimestampMicrosecondArray>() else {
            continue;
        };
        let histogram = metrics::histogram!(END_TO_END_SECONDS, "stream" => stream.to_string());
        let mut run: Option<(i64, usize)> = None;
        for t in times.iter().flatten() {
            match &mut run {
                Some((v, n)) if *v == t => *n += 1,
                _ => {
                    if let Some((v, n)) = run.replace((t, 1)) {
                        histogram.record_many((now - v) as f64 / 1e6, n);
                    }
                }
            }
        }
        if let Some((v, n)) = run {
            histogram.record_many((now - v) as f64 / 1e6, n);
        }
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(RECORDS_READ, "Records read from the source, per stream.");
    describe_counter!(
        BYTES_READ,
        Unit::Bytes,
        "Arrow bytes read from the source, per stream."
    );
    describe_counter!(ROWS_WRITTEN, "Rows committed to Delta, per table.");
    describe_counter!(COMMITS, "Delta commits, per table.");
    describe_gauge!(TABLE_VERSION, "Latest committed Delta version, per table.");
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "Duration of one table commit, retries included."
    );
    describe_counter!(MICRO_BATCHES, "Micro-batches committed.");
    describe_histogram!(BATCH_ROWS, "Records per micro-batch.");
    describe_histogram!(BATCH_BYTES, Unit::Bytes, "Arrow bytes per micro-batch.");
    describe_histogram!(
        END_TO_END_SECONDS,
        Unit::Seconds,
        "Per record, source time to the end of the micro-batch that committed it."
    );
    describe_counter!(DEAD_LETTERS, "Records set aside in the dead-letter table.");
    describe_counter!(LATE_EVENTS, "Late events per aggregate and outcome.");
    describe_gauge!(WATERMARK, Unit::Seconds, "Event-time watermark per aggregate.");
    describe_gauge!(
        KAFKA_LAG,
        "High watermark minus the offset every table holds, per partition."
    );
    describe_gauge!(
        SLOT_LAG,
        Unit::Bytes,
        "Server WAL position minus the slot's confirmed position."
    );
    describe_gauge!(
        SLOT_RETAINED,
        Unit::Bytes,
        "WAL the slot keeps from being recycled."
    );
    describe_gauge!(
        IN_FLIGHT_BYTES,
        Unit::Bytes,
        "Bytes of records read and not yet committed."
    );
    describe_gauge!(
        IN_FLIGHT_LIMIT,
        Unit::Bytes,
        "Limit of in-flight bytes (half of runtime.memory)."
    );
    describe_gauge!(RESIDENT_BYTES, Unit::Bytes, "Resident memory of the process.");
    describe_counter!(RESTARTS, "Runs started over after a transient failure.");
    describe_histogram!(
        HANDOVER_SECONDS,
        "Time a per-partition aggregate took to claim partitions assigned to it at a rebalance."
    );
    describe_counter!(
        HANDOVER_CONFLICTS,
        "Micro-batches committed again because another consumer committed some of their partitions first."
    );
    describe_counter!(
        COMPACTED_FILES,
        "Small files background compaction replaced, per table."
    );
    describe_gauge!(
        STATE,
        "1 for the state the run is in (label state), 0 for the others."
    );
    describe_gauge!(
        LAST_COMMIT,
        Unit::Seconds,
        "When a micro-batch was last committed to every table (seconds since the epoch)."
    );
}

/// What `/health` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Starting = 0,
    Running = 1,
    /// A transient failure: the run starts over after a backoff.
    Retrying = 2,
    Stopping = 3,
    Failed = 4,
}

impl State {
    const ALL: [State; 5] = [
        State::Starting,
        State::Running,
        State::Retrying,
        State::Stopping,
        State::Failed,
    ];

    fn label(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Retrying => "retrying",
            State::Stopping => "stopping",
            State::Failed => "failed",
        }
    }
}

static STATE_NOW: AtomicU8 = AtomicU8::new(State::Starting as u8);
static LAST_COMMIT_MS: AtomicI64 = AtomicI64::new(0);

pub fn set_state(s: State) {
    STATE_NOW.store(s as u8, Ordering::Relaxed);
}

fn state() -> State {
    match STATE_NOW.load(Ordering::Relaxed) {
        1 => State::Running,
        2 => State::Retrying,
        3 => State::Stopping,
        4 => State::Failed,
        _ => State::Starting,
    }
}

/// A micro-batch was committed to every table.
pub fn committed_now() {
    LAST_COMMIT_MS.store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
}

/// Resident memory of this process, from `/proc` (Linux); `None` elsewhere.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Serves `/metrics` and `/health` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: &'static PrometheusHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || async move {
                if let Some(rss) = resident_bytes() {
                    metrics::gauge!(RESIDENT_BYTES).set(rss as f64);
                }
                let now = state();
                for s in State::ALL {
                    let label = s.label();
                    metrics::gauge!(STATE, "state" => label).set(if s == now { 1.0 } else { 0.0 });
                }
                let last = LAST_COMMIT_MS.load(Ordering::Relaxed);
                if last > 0 {
                    metrics::gauge!(LAST_COMMIT).set(last as f64 / 1000.0);
                }
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    handle.render(),
                )
            }),
        )
        .route("/health", axum::routing::get(health));
    // Histograms keep raw samples until they are folded into buckets; fold them
    // regularly so an unscraped endpoint does not grow.
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    });
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    upkeep.abort();
    served
}

async fn health() -> impl IntoResponse {
    let s = state();
    let last = LAST_COMMIT_MS.load(Ordering::Relaxed);
    let age = (last > 0).then(|| (chrono::Utc::now().timestamp_millis() - last) as f64 / 1000.0);
    let body = serde_json::json!({
        "status": if matches!(s, State::Retrying | State::Failed) { "unhealthy" } else { "ok" },
        "state": s.label(),
        "last_commit_age_seconds": age,
    });
    let code = if matches!(s, State::Retrying | State::Failed) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, axum::Json(body))
}
