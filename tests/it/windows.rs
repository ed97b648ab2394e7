//! Event-time windows end to end: every window kind against DuckDB SQL over the raw
//! table, the late-data policies, SIGKILL and replay, and `backfill` (the cold path).

use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;

use crate::support::*;

const BASE: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

fn rfc3339(micros: i64) -> String {
    let secs = BASE + micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let (d, s) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    assert_eq!(d, BASE / 86_400, "test events stay within one day");
    format!(
        "2026-01-01T{:02}:{:02}:{:02}.{frac:06}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Orders every 100 ms, jittered by up to ±10 s (so out of order, but never by more
/// than the 30 s watermark): users come in bursts, amounts and pages are sometimes null.
fn orders(first: i64, n: i64) -> String {
    let mut s = String::new();
    for i in first..first + n {
        let t = 60_000_000 + i * 100_000 + ((i * 7919) % 21 - 10) * 1_000_000;
        let amount = if i % 10 == 0 {
            "null".to_string()
        } else {
            ((i * 37) % 200 - 50).to_string()
        };
        #[allow(clippy::cast_precision_loss)]
        let price = (i % 13) as f64 * 0.25;
        writeln!(
            s,
            r#"{{"event_id":"e{i}","user":"u{}","page":{},"amount":{amount},"price":{price},"event_timestamp":"{}"}}"#,
            (i / 50) % 40,
            // A null group key now and then: MERGE must match it (null-safe).
            if i % 23 == 0 { "null".to_string() } else { format!("\"/p{}\"", i % 7) },
            rfc3339(t)
        )
        .unwrap();
    }
    s
}

fn files_pipeline(dir: &Path, aggregates: &str) -> std::path::PathBuf {
    write_file(
        dir,
        "windows.toml",
        &format!(
            r#"
name = "windows"
[source]
kind = "file"
path = "./in"
format = "jsonl"
stream = "orders"
[sink]
uri = "./lake"
[batch]
max_rows = 500
[[tables]]
name = "orders_raw"
from = "orders"
{aggregates}
"#
        ),
    )
}

const ALL_KINDS: &str = r#"
[[aggregates]]
name = "tumbling"
from = "orders"
event_time = "event_timestamp"
window = { kind = "tumbling", size = "1m" }
watermark = "30s"
group_by = ["page"]
measures = { n = "count(*)", users = "count_distinct(user)", amt = "sum(amount)", avg_price = "avg(price)", lo = "min(amount)", hi = "max(user)", with_amount = "count(amount)", approx_users = "approx_count_distinct(user)" }

[[aggregates]]
name = "hopping"
from = "orders"
event_time = "event_timestamp"
window = { kind = "hopping", size = "1m", slide = "20s" }
watermark = "30s"
group_by = ["page"]
measures = { n = "count(*)", users = "count(distinct user)", amt = "sum(amount)" }

[[aggregates]]
name = "sessions"
from = "orders"
event_time = "event_timestamp"
window = { kind = "session", gap = "30s" }
watermark = "30s"
group_by = ["user"]
measures = { n = "count(*)", amt = "sum(amount)", hi = "max(amount)" }

[[aggregates]]
name = "global"
from = "orders"
event_time = "event_timestamp"
window = { kind = "global" }
emit = "update"
group_by = ["page"]
measures = { n = "count(*)", users = "count_distinct(user)", amt = "sum(amount)" }

[[aggregates]]
name = "positive_updates"
from = "orders"
event_time = "event_timestamp"
window = { kind = "tumbling", size = "2m" }
watermark = "30s"
emit = "update"
filter = "amount > 0"
group_by = ["page"]
measures = { n = "count(*)", amt = "sum(amount)" }

[[aggregates]]
watermark = "30s"
sql = """
INSERT INTO tumbling_sql
SELECT window_start, window_end, page, COUNT(*) AS n, COUNT(DISTINCT "user") AS users, SUM(amount) AS amt,
       AVG(price) AS avg_price, MIN(amount) AS lo, MAX("user") AS hi, COUNT(amount) AS with_amount,
       APPROX_COUNT_DISTINCT("user") AS approx_users
FROM TABLE(TUMBLE(TABLE orders, DESCRIPTOR(event_timestamp), INTERVAL '1' MINUTE))
GROUP BY window_start, window_end, page
"""

[[aggregates]]
watermark = "30s"
emit = "update"
sql = """
INSERT INTO positive_updates_sql
SELECT window_start, window_end, page, COUNT(*) AS n, SUM(amount) AS amt
FROM TABLE(TUMBLE(TABLE orders, DESCRIPTOR(event_timestamp), INTERVAL '2' MINUTE))
WHERE amount > 0
GROUP BY window_start, window_end, page
"""
"#;

#[test]
fn every_window_kind_equals_duckdb_over_the_raw_table() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    for f in 0..4 {
        write_file(&input, &format!("part-{f}.jsonl"), &orders(f * 5000, 5000));
    }
    let p = files_pipeline(dir.path(), ALL_KINDS);
    let out = run_once(dir.path(), &p);
    assert!(!out.contains("late"), "no event may be late here:\n{out}");
    let lake = dir.path().join("lake");
    let t = |name: &str| scan(lake.join(name).to_str().unwrap());
    let events = format!(
        "SELECT *, epoch_us(CAST(event_timestamp AS TIMESTAMPTZ)) AS t FROM {}",
        t("orders_raw")
    );
    assert_eq!(
        duck_i64(&format!("SELECT count(*) FROM {}", t("orders_raw"))),
        20_000
    );

    assert_same_rows(
        "tumbling",
        &format!(
            "SELECT t // 60000000 * 60000000 AS ws, t // 60000000 * 60000000 + 60000000 AS we, page, \
                    count(*), count(DISTINCT \"user\"), sum(amount), round(avg(price), 9), min(amount), \
                    max(\"user\"), count(amount) FROM ({events}) GROUP BY ALL"
        ),
        &format!(
            "SELECT epoch_us(window_start), epoch_us(window_end), page, n, users, amt, round(avg_price, 9), \
                    lo, hi, with_amount FROM {}",
            t("tumbling")
        ),
    );
    // HyperLogLog: within 5 % of the exact count per window (a few distinct users each).
    let off = duck_i64(&format!(
        "SELECT count(*) FROM {} WHERE abs(approx_users - users) > 0.05 * users",
        t("tumbling")
    ));
    assert_eq!(off, 0);

    assert_same_rows(
        "hopping",
        &format!(
            "SELECT ws, ws + 60000000, page, count(*), count(DISTINCT \"user\"), sum(amount) \
             FROM (SELECT *, t // 20000000 * 20000000 - i * 20000000 AS ws FROM ({events}), range(3) r(i)) \
             GROUP BY ALL"
        ),
        &format!(
            "SELECT epoch_us(window_start), epoch_us(window_end), page, n, users, amt FROM {}",
            t("hopping")
        ),
    );

    assert_same_rows(
        "sessions",
        &format!(
            "WITH o AS (SELECT *, CASE WHEN t - lag(t) OVER (PARTITION BY \"user\" ORDER BY t) < 30000000 \
                                   THEN 0 ELSE 1 END AS starts FROM ({events})), \
                  g AS (SELECT *, sum(starts) OVER (PARTITION BY \"user\" ORDER BY t \
                                                    ROWS UNBOUNDED PRECEDING) AS sid FROM o) \
             SELECT min(t), max(t) + 30000000, \"user\", count(*), sum(amount), max(amount) FROM g \
             GROUP BY \"user\", sid"
        ),
        &format!(
            "SELECT epoch_us(window_start), epoch_us(window_end), \"user\", n, amt, hi FROM {}",
            t("sessions")
        ),
    );

    assert_same_rows(
        "global",
        &format!("SELECT page, count(*), count(DISTINCT \"user\"), sum(amount) FROM ({events}) GROUP BY ALL"),
        &format!(
            "SELECT page, n, users, amt FROM {} WHERE window_start IS NULL",
            t("global")
        ),
    );

    // The SQL forms of two of them write the same tables.
    for (toml, sql) in [
        ("tumbling", "tumbling_sql"),
        ("positive_updates", "positive_updates_sql"),
    ] {
        assert_tables_equal(&lake.join(toml), &lake.join(sql), &format!("{sql} = {toml}"));
    }
    assert_same_rows(
        "update + filter",
        &format!(
            "SELECT t // 120000000 * 120000000, page, count(*), sum(amount) FROM ({events}) \
             WHERE amount > 0 GROUP BY ALL"
        ),
        &format!(
            "SELECT epoch_us(window_start), page, n, amt FROM {}",
            t("positive_updates")
        ),
    );
}

/// One event a second for 10 minutes on page /a, then (in a later file) ten events of
/// the first minute, which is long final by then.
fn late_input(dir: &Path) {
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    let line = |i: i64, t: i64| {
        format!(
            "{{\"event_id\":\"e{i}\",\"user\":\"u\",\"page\":\"/a\",\"amount\":1,\"price\":1.0,\"event_timestamp\":\"{}\"}}\n",
            rfc3339(t * 1_000_000)
        )
    };
    write_file(
        &input,
        "part-0.jsonl",
        &(0..600).map(|i| line(i, i)).collect::<String>(),
    );
    write_file(
        &input,
        "part-1.jsonl",
        &(0..10).map(|i| line(1000 + i, 5 + i)).collect::<String>(),
    );
}

fn late_aggregate(name: &str, late: &str) -> String {
    format!(
        r#"
[[aggregates]]
name = "{name}"
from = "orders"
event_time = "event_timestamp"
window = {{ kind = "tumbling", size = "1m" }}
watermark = "5s"
group_by = ["page"]
measures = {{ n = "count(*)" }}
{late}
"#
    )
}

#[test]
fn late_events_are_dropped_set_aside_or_corrected_as_configured() {
    let dir = tempfile::tempdir().unwrap();
    late_input(dir.path());
    let aggregates = [
        late_aggregate("dropped", "late = \"drop\""),
        late_aggregate("set_aside", "late = \"dlq\""),
        late_aggregate("corrected", "late = \"update\"\nlateness = \"20m\""),
        late_aggregate("too_late", "late = \"update\"\nlateness = \"2m\""),
    ]
    .concat();
    let p = files_pipeline(dir.path(), &aggregates);
    let out = run_once(dir.path(), &p);
    let line = |name: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("dropped").contains(", 10 late dropped"), "{out}");
    // The end of the input closed every window: the watermark is the last one's end.
    assert!(
        line("dropped").contains(", watermark 2026-01-01T00:10:00Z"),
        "{out}"
    );
    assert!(line("set_aside ").contains(", 10 late set aside"), "{out}");
    assert!(line("corrected").contains(", 10 late corrected"), "{out}");
    assert!(line("too_late").contains(", 10 late dropped"), "{out}");

    let lake = dir.path().join("lake");
    let t = |name: &str| scan(lake.join(name).to_str().unwrap());
    let first_minute = |name: &str| {
        duck(&format!(
            "SELECT count(*), sum(n) FROM {} WHERE window_start = TIMESTAMPTZ '2026-01-01 00:00:00+00'",
            t(name)
        ))[0]
            .clone()
    };
    assert_eq!(first_minute("dropped"), vec![json!(1), json!(60)]);
    assert_eq!(first_minute("set_aside"), vec![json!(1), json!(60)]);
    assert_eq!(first_minute("corrected"), vec![json!(1), json!(70)]);
    assert_eq!(first_minute("too_late"), vec![json!(1), json!(60)]);
    for name in ["dropped", "set_aside", "corrected", "too_late"] {
        assert_eq!(
            duck_i64(&format!("SELECT count(*) FROM {}", t(name))),
            10,
            "{name}: ten windows"
        );
    }
    // The late-events table holds exactly the ten, with their positions and reason.
    let rows = duck(&format!(
        "SELECT count(*), min(event_id), max(event_id), count(DISTINCT _late_position), \
                min(_late_reason), max(epoch_us(_late_window_end)) FROM {}",
        t("set_aside_late_events")
    ));
    assert_eq!(
        rows[0],
        vec![
            json!(10),
            json!("e1000"),
            json!("e1009"),
            json!(10),
            json!("every window of the event was final"),
            json!((BASE + 60) * 1_000_000)
        ]
    );
    // A second run finds nothing new and writes nothing twice.
    run_once(dir.path(), &p);
    assert_eq!(
        duck_i64(&format!("SELECT count(*) FROM {}", t("set_aside_late_events"))),
        10
    );
}

const GENERATED: &str = r#"
name = "replay"
[source]
kind = "generator"
events = 150000
seed = 11
out_of_order = "20s"
[sink]
uri = "./lake"
[batch]
max_rows = 10000
[[tables]]
name = "clicks"
from = "clickstream"
[[aggregates]]
name = "per_minute"
from = "clickstream"
event_time = "event_timestamp"
window = { kind = "tumbling", size = "1m" }
watermark = "30s"
group_by = ["page"]
measures = { n = "count(*)", users = "count_distinct(user_id)", approx = "approx_count_distinct(user_id)", first_user = "min(user_id)" }
[[aggregates]]
name = "hopping"
from = "clickstream"
event_time = "event_timestamp"
window = { kind = "hopping", size = "5m", slide = "30s" }
watermark = "30s"
group_by = ["country"]
measures = { n = "count(*)", users = "count_distinct(user_id)" }
[[aggregates]]
name = "sessions"
from = "clickstream"
event_time = "event_timestamp"
window = { kind = "session", gap = "60s" }
watermark = "30s"
emit = "update"
group_by = ["user_id"]
measures = { n = "count(*)", last_page = "max(page)" }
[[aggregates]]
name = "per_device"
from = "clickstream"
event_time = "event_timestamp"
window = { kind = "global" }
group_by = ["device"]
measures = { n = "count(*)", users = "count_distinct(user_id)" }
[[aggregates]]
watermark = "30s"
sql = """
INSERT INTO moving
SELECT window_start, window_end, page, COUNT(*) AS n,
       AVG(COUNT(*)) OVER (PARTITION BY page ORDER BY window_start ROWS BETWEEN 3 PRECEDING AND CURRENT ROW) AS n_ma4,
       MAX(COUNT(*)) OVER (ORDER BY window_start ROWS BETWEEN 5 PRECEDING AND CURRENT ROW) AS n_max6
FROM TABLE(TUMBLE(TABLE clickstream, DESCRIPTOR(event_timestamp), INTERVAL '1' MINUTE))
GROUP BY window_start, window_end, page
"""
[[aggregates]]
watermark = "30s"
emit = "update"
sql = """
INSERT INTO so_far
SELECT window_start, window_end, country, COUNT(*) AS n, COUNT(DISTINCT user_id) AS users
FROM TABLE(CUMULATE(TABLE clickstream, DESCRIPTOR(event_timestamp), INTERVAL '1' MINUTE, INTERVAL '5' MINUTE))
GROUP BY window_start, window_end, country
"""
"#;

const AGGREGATES: [&str; 6] = [
    "per_minute",
    "hopping",
    "sessions",
    "per_device",
    "moving",
    "so_far",
];

#[test]
fn sigkill_replay_and_backfill_all_yield_the_uninterrupted_tables() {
    let straight = tempfile::tempdir().unwrap();
    let killed = tempfile::tempdir().unwrap();
    let replayed = tempfile::tempdir().unwrap();
    let p1 = write_file(straight.path(), "p.toml", GENERATED);
    let p2 = write_file(killed.path(), "p.toml", GENERATED);
    let p3 = write_file(replayed.path(), "p.toml", GENERATED);
    run_once(straight.path(), &p1);
    kill_after_commits(killed.path(), &p2, "lake/clicks", 3, 300);
    kill_after_commits(killed.path(), &p2, "lake/clicks", 9, 300);
    run_once(killed.path(), &p2);
    run_once(replayed.path(), &p3);
    for name in AGGREGATES {
        let table = |d: &tempfile::TempDir| d.path().join("lake").join(name);
        assert_tables_equal(
            &table(&straight),
            &table(&killed),
            &format!("{name}: SIGKILLed vs uninterrupted"),
        );
        assert_tables_equal(
            &table(&straight),
            &table(&replayed),
            &format!("{name}: replay vs first run"),
        );
        // The cold path: recomputed from the raw table, the same rows.
        let out = tributary(straight.path(), &["backfill", "p.toml", "--aggregate", name]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let cold = straight.path().join("lake").join(format!("{name}_backfill"));
        assert_tables_equal(&table(&straight), &cold, &format!("{name}: backfill vs stream"));
    }
    let sessions = scan(straight.path().join("lake/sessions").to_str().unwrap());
    assert_eq!(duck_i64(&format!("SELECT sum(n) FROM {sessions}")), 150_000);
}

#[test]
fn global_totals_carry_over_from_one_bounded_run_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let p = files_pipeline(
        dir.path(),
        r#"
[[aggregates]]
name = "totals"
from = "orders"
event_time = "event_timestamp"
window = { kind = "global" }
group_by = ["page"]
measures = { n = "count(*)", users = "count_distinct(user)", amt = "sum(amount)" }
"#,
    );
    write_file(&input, "part-0.jsonl", &orders(0, 3000));
    run_once(dir.path(), &p);
    write_file(&input, "part-1.jsonl", &orders(3000, 2000));
    run_once(dir.path(), &p);
    let lake = dir.path().join("lake");
    let t = |name: &str| scan(lake.join(name).to_str().unwrap());
    assert_same_rows(
        "global totals over two runs",
        &format!(
            "SELECT page, count(*), count(DISTINCT \"user\"), sum(amount) FROM {} GROUP BY ALL",
            t("orders_raw")
        ),
        &format!("SELECT page, n, users, amt FROM {}", t("totals")),
    );
    assert_eq!(duck_i64(&format!("SELECT sum(n) FROM {}", t("totals"))), 5000);
}
