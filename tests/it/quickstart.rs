//! The quickstart pipeline end to end, on local disk and on S3 (moto).

use crate::support::*;

const EVENTS: i64 = 200_000;

fn check_tables(root: &str) {
    let raw = format!("{root}/clickstream_raw");
    let agg = format!("{root}/page_views_1m");
    let r = &duck(&format!(
        "SELECT count(*), count(DISTINCT event_id) FROM {}",
        scan(&raw)
    ))[0];
    assert_eq!(r[0], EVENTS, "raw count");
    assert_eq!(r[1], EVENTS, "distinct event ids");
    // No late events in the quickstart (jitter 20s < watermark 30s): every event counts.
    assert_eq!(
        duck_i64(&format!("SELECT sum(view_count) FROM {}", scan(&agg))),
        EVENTS
    );
    assert_page_views_match_raw(&raw, &agg);
}

#[test]
fn quickstart_writes_both_tables_to_a_local_folder_once() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = repo().join("pipelines/quickstart.toml");
    // The quickstart as shipped: `./lake` relative to where it runs.
    let out = run_once(dir.path(), &pipeline);
    assert!(out.contains("clickstream_raw"), "{out}");
    let lake = dir.path().join("lake");
    check_tables(lake.to_str().unwrap());

    // A second --once run finds everything committed: no new version, same counts.
    let raw_v = local_version(&lake.join("clickstream_raw"));
    let agg_v = local_version(&lake.join("page_views_1m"));
    assert!(raw_v.is_some() && agg_v.is_some());
    run_once(dir.path(), &pipeline);
    assert_eq!(
        local_version(&lake.join("clickstream_raw")),
        raw_v,
        "raw table changed on re-run"
    );
    assert_eq!(
        local_version(&lake.join("page_views_1m")),
        agg_v,
        "aggregate changed on re-run"
    );
    check_tables(lake.to_str().unwrap());
}

#[test]
fn quickstart_writes_both_tables_to_s3() {
    stack_env("AWS_ENDPOINT_URL");
    let dir = tempfile::tempdir().unwrap();
    let root = format!("s3://tributary-test/{}", unique("quickstart"));
    let pipeline = quickstart_variant(dir.path(), &root, &[]);
    run_once(dir.path(), &pipeline);
    check_tables(&root);
    let commits = || {
        duck_i64(&format!(
            "SELECT (SELECT count(*) FROM glob('{root}/clickstream_raw/_delta_log/*.json')) * 1000 + \
                    (SELECT count(*) FROM glob('{root}/page_views_1m/_delta_log/*.json'))"
        ))
    };
    let before = commits();
    assert!(before > 1000, "no commits listed on S3: {before}");
    // Re-run: nothing new is committed, counts stay exact.
    let out = run_once(dir.path(), &pipeline);
    assert_eq!(commits(), before, "re-run committed something:\n{out}");
    check_tables(&root);
}
