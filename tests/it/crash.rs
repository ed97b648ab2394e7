//! SIGKILL at arbitrary moments, then a re-run: every event exactly once, aggregates
//! exactly what an uninterrupted run computes.

use crate::support::*;

const EVENTS: i64 = 600_000;

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
    kill_after_commits(dir.path(), &pipeline, "lake/clickstream_raw", 3, 200);
    kill_after_commits(dir.path(), &pipeline, "lake/clickstream_raw", 12, 200);
    kill_after_commits(dir.path(), &pipeline, "lake/clickstream_raw", 25, 200);
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
