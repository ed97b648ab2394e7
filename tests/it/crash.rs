//! SIGKILL at arbitrary moments, then a re-run: every event exactly once, aggregates
//! exactly what an uninterrupted run computes.

use std::time::{Duration, Instant};

use crate::support::*;

const EVENTS: i64 = 600_000;

/// Kills a --once run after the raw table reached `commits` versions plus a
/// pseudo-random delay, so the kill lands at different instructions each time.
fn run_and_kill(dir: &std::path::Path, pipeline: &std::path::Path, commits: u64) {
    let raw = dir.join("lake/clickstream_raw");
    let mut child = spawn_once(dir, pipeline);
    let deadline = Instant::now() + Duration::from_secs(300);
    while local_version(&raw).is_none_or(|v| v < commits) {
        if child.try_wait().unwrap().is_some() {
            panic!("the run finished before reaching {commits} commits; make the input larger");
        }
        assert!(Instant::now() < deadline, "no progress within 300s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        % 200;
    std::thread::sleep(Duration::from_millis(u64::from(jitter)));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

#[test]
fn sigkill_mid_run_then_rerun_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = quickstart_variant(
        dir.path(),
        "./lake",
        &[
            ("events = 200000", "events = 600000"),
            ("max_rows = 100000", "max_rows = 15000"),
        ],
    );
    run_and_kill(dir.path(), &pipeline, 3);
    run_and_kill(dir.path(), &pipeline, 12);
    run_and_kill(dir.path(), &pipeline, 25);
    run_once(dir.path(), &pipeline);

    let raw = dir.path().join("lake/clickstream_raw");
    let agg = dir.path().join("lake/page_views_1m");
    let (raw, agg) = (raw.to_str().unwrap(), agg.to_str().unwrap());
    let r = &duck(&format!(
        "SELECT count(*), count(DISTINCT event_id) FROM {}",
        scan(raw)
    ))[0];
    assert_eq!(r[0], EVENTS, "raw count after kills");
    assert_eq!(r[1], EVENTS, "distinct event ids after kills");
    assert_eq!(
        duck_i64(&format!("SELECT sum(view_count) FROM {}", scan(agg))),
        EVENTS
    );
    assert_page_views_match_raw(raw, agg);
}
