//! Windowed aggregates written as Flink window-TVF SQL, over the clickstream generator:
//! each query's table against DuckDB SQL over the raw table, the moving averages
//! against DuckDB's window functions over the aggregate tables, and each SQL aggregate
//! against its TOML twin. Then `explain` and `validate` on the same file.

use std::path::Path;

use crate::support::*;

/// Verbatim from the Flink documentation's examples (only the HOP table renamed).
const FLINK_TUMBLE: &str = "INSERT INTO page_metrics SELECT window_start, window_end, page, COUNT(*), COUNT(DISTINCT user_id) FROM TABLE(TUMBLE(TABLE clickstream, DESCRIPTOR(event_timestamp), INTERVAL '5' MINUTE)) GROUP BY window_start, window_end, page";
const FLINK_HOP: &str = "INSERT INTO page_metrics_hop SELECT window_start, window_end, page, COUNT(*), COUNT(DISTINCT user_id) FROM TABLE(HOP(TABLE clickstream, DESCRIPTOR(event_timestamp), INTERVAL '1' MINUTE, INTERVAL '10' MINUTE)) GROUP BY window_start, window_end, page";

fn pipeline(dir: &Path) -> std::path::PathBuf {
    write_file(
        dir,
        "sql.toml",
        &format!(
            r#"
name = "sql_windows"
[source]
kind = "generator"
events = 60000
rate = 0
seed = 11
out_of_order = "20s"
interval = "20ms"
users = 300
[sink]
uri = "./lake"
[batch]
max_rows = 5000

[streams.clickstream]
watermark = "WATERMARK FOR event_timestamp AS event_timestamp - INTERVAL '30' SECOND"

[[tables]]
name = "raw"
from = "clickstream"

[[aggregates]]
sql = "{FLINK_TUMBLE}"

[[aggregates]]
sql = "{FLINK_HOP}"

[[aggregates]]
sql = """
INSERT INTO page_views_ma (window_start, window_end, page, views, views_ma3)
SELECT window_start, window_end, page, COUNT(*),
       AVG(COUNT(*)) OVER (PARTITION BY page ORDER BY window_start ROWS BETWEEN 2 PRECEDING AND CURRENT ROW)
FROM TABLE(TUMBLE(TABLE clickstream, DESCRIPTOR(event_timestamp), INTERVAL '1' MINUTE))
GROUP BY window_start, window_end, page
"""

[[aggregates]]
name = "page_views_ma_toml"
from = "clickstream"
window = {{ kind = "tumbling", size = "1m" }}
group_by = ["page"]
measures = {{ views = "count(*)" }}
over = {{ views_ma3 = "avg(views) over (partition by page order by window_start rows between 2 preceding and current row)" }}

[[aggregates]]
sql = """
INSERT INTO page_metrics_ma
SELECT window_start, window_end, page, COUNT(*) AS views,
       AVG(COUNT(*)) OVER (ORDER BY window_start ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS views_ma3
FROM TABLE(TUMBLE(TABLE clickstream, DESCRIPTOR(event_timestamp), INTERVAL '5' MINUTE))
GROUP BY window_start, window_end, page
"""

[[aggregates]]
name = "sessions"
sql = """
SELECT window_start, window_end, user_id, COUNT(*) AS clicks, COUNT(DISTINCT page) AS pages, MIN(page), MAX(action)
FROM TABLE(SESSION(TABLE clickstream PARTITION BY user_id, DESCRIPTOR(event_timestamp), INTERVAL '2' MINUTE))
GROUP BY window_start, window_end, user_id
"""

[[aggregates]]
name = "sessions_toml"
from = "clickstream"
window = {{ kind = "session", gap = "2m" }}
group_by = ["user_id"]
measures = {{ clicks = "count(*)", pages = "count_distinct(page)", min_page = "min(page)", max_action = "max(action)" }}

[[aggregates]]
sql = """
INSERT INTO views_so_far
SELECT window_start, window_end, country, COUNT(*) AS views, COUNT(DISTINCT user_id) AS users,
       APPROX_COUNT_DISTINCT(user_id) AS approx_users
FROM TABLE(CUMULATE(TABLE clickstream, DESCRIPTOR(event_timestamp), INTERVAL '2' MINUTE, INTERVAL '10' MINUTE))
WHERE action = 'view'
GROUP BY window_start, window_end, country
"""

[[aggregates]]
name = "views_so_far_toml"
from = "clickstream"
event_time = "event_timestamp"
window = {{ kind = "cumulate", size = "10m", step = "2m" }}
watermark = "30s"
filter = "action = 'view'"
group_by = ["country"]
measures = {{ views = "count(*)", users = "count(distinct user_id)", approx_users = "approx_count_distinct(user_id)" }}

[[aggregates]]
name = "page_metrics_toml"
from = "clickstream"
window = {{ kind = "tumbling", size = "5m" }}
group_by = ["page"]
measures = {{ count = "count(*)", count_distinct_user_id = "count(distinct user_id)" }}

[[aggregates]]
name = "page_metrics_hop_toml"
from = "clickstream"
window = {{ kind = "hopping", size = "10m", slide = "1m" }}
group_by = ["page"]
measures = {{ count = "count(*)", count_distinct_user_id = "count(distinct user_id)" }}
"#
        ),
    )
}

/// DuckDB's cumulating windows of `steps` steps of `step` µs over the events `ev` of
/// one action: (start, end, country, count, distinct users).
fn cumulated_by_country(ev: &str, action: &str, step: i64, steps: i64) -> String {
    let size = step * steps;
    format!(
        "SELECT s, s + (i + 1) * {step} AS e, country, count(*), count(DISTINCT user_id) \
         FROM (SELECT *, t // {size} * {size} AS s FROM ({ev}) WHERE action = '{action}'), range({steps}) r(i) \
         WHERE s + (i + 1) * {step} > t GROUP BY ALL"
    )
}

#[test]
fn flink_window_queries_equal_duckdb_sql_and_their_toml_twins() {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path());
    let out = run_once(dir.path(), &p);
    assert!(!out.contains("late"), "no event may be late here:\n{out}");
    let lake = dir.path().join("lake");
    let t = |name: &str| scan(lake.join(name).to_str().unwrap());
    assert_eq!(duck_i64(&format!("SELECT count(*) FROM {}", t("raw"))), 60_000);
    let ev = format!("SELECT *, epoch_us(event_timestamp) AS t FROM {}", t("raw"));

    assert_same_rows(
        "TUMBLE",
        &format!(
            "SELECT t // 300000000 * 300000000 AS ws, ws + 300000000, page, count(*), count(DISTINCT user_id) \
             FROM ({ev}) GROUP BY ALL"
        ),
        &format!(
            "SELECT epoch_us(window_start), epoch_us(window_end), page, count, count_distinct_user_id FROM {}",
            t("page_metrics")
        ),
    );
    assert_same_rows(
        "HOP",
        &format!(
            "SELECT ws, ws + 600000000, page, count(*), count(DISTINCT user_id) \
             FROM (SELECT *, t // 60000000 * 60000000 - i * 60000000 AS ws FROM ({ev}), range(10) r(i)) GROUP BY ALL"
        ),
        &format!(
            "SELECT epoch_us(window_start), epoch_us(window_end), page, count, count_distinct_user_id FROM {}",
            t("page_metrics_hop")
        ),
    );
    assert_same_rows(
        "SESSION",
        &format!(
            "WITH o AS (SELECT *, CASE WHEN t - lag(t) OVER (PARTITION BY user_id ORDER BY t) < 120000000 \
                                   THEN 0 ELSE 1 END AS starts FROM ({ev})), \
                  g AS (SELECT *, sum(starts) OVER (PARTITION BY user_id ORDER BY t \
                                                    ROWS UNBOUNDED PRECEDING) AS sid FROM o) \
             SELECT min(t), max(t) + 120000000, user_id, count(*), count(DISTINCT page), min(page), max(action) \
             FROM g GROUP BY user_id, sid"
        ),
        &format!(
            "SELECT epoch_us(window_start), epoch_us(window_end), user_id, clicks, pages, min_page, max_action FROM {}",
            t("sessions")
        ),
    );
    assert_same_rows(
        "CUMULATE",
        &cumulated_by_country(&ev, "view", 120_000_000, 5),
        &format!(
            "SELECT epoch_us(window_start), epoch_us(window_end), country, views, users FROM {}",
            t("views_so_far")
        ),
    );
    // The moving averages, against DuckDB's window functions over the tables: per page,
    // and over all rows (ties in window_start taken in page order).
    assert_same_rows(
        "AVG OVER (PARTITION BY page …)",
        &format!(
            "SELECT window_start, page, views, round(avg(views) OVER (PARTITION BY page ORDER BY window_start \
             ROWS BETWEEN 2 PRECEDING AND CURRENT ROW), 9) FROM {}",
            t("page_views_ma")
        ),
        &format!(
            "SELECT window_start, page, views, round(views_ma3, 9) FROM {}",
            t("page_views_ma")
        ),
    );
    assert_same_rows(
        "AVG OVER (ORDER BY window_start …)",
        &format!(
            "SELECT window_start, page, views, round(avg(views) OVER (ORDER BY window_start, page \
             ROWS BETWEEN 2 PRECEDING AND CURRENT ROW), 9) FROM {}",
            t("page_metrics_ma")
        ),
        &format!(
            "SELECT window_start, page, views, round(views_ma3, 9) FROM {}",
            t("page_metrics_ma")
        ),
    );
    // The frames really span several windows: some averages differ from their row.
    assert!(
        duck_i64(&format!(
            "SELECT count(*) FROM {} WHERE views_ma3 <> views",
            t("page_views_ma")
        )) > 0
    );
    // Each SQL aggregate and its TOML twin write the same table.
    for (sql, toml) in [
        ("page_metrics", "page_metrics_toml"),
        ("page_metrics_hop", "page_metrics_hop_toml"),
        ("page_views_ma", "page_views_ma_toml"),
        ("sessions", "sessions_toml"),
        ("views_so_far", "views_so_far_toml"),
    ] {
        assert_tables_equal(&lake.join(toml), &lake.join(sql), &format!("{sql} = {toml}"));
        let columns = |name: &str| {
            duck(&format!(
                "SELECT column_name FROM (DESCRIBE SELECT * FROM {})",
                t(name)
            ))
        };
        assert_eq!(columns(sql), columns(toml), "{sql}: columns");
    }

    // explain: every aggregate, with the TOML form a query runs as.
    let out = tributary(dir.path(), &["explain", p.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("\naggregate ").count() + 1, 11, "{text}");
    assert!(
        text.starts_with("aggregate page_metrics (aggregates[0], written in SQL)"),
        "{text}"
    );
    for expected in [
        "window     cumulate 2m steps up to 10m",
        "window = { kind = \"cumulate\", size = \"10m\", step = \"2m\" }",
        "watermark  min over shards of their largest event time − 30s ([streams.clickstream])",
        "filter     action = 'view'",
        "views_ma3 = avg of views over its last 3 window rows per page, as windows close",
        "aggregate sessions_toml (aggregates[6], written in TOML)",
        "late       drop",
    ] {
        assert!(text.contains(expected), "explain lacks {expected:?}:\n{text}");
    }
}

#[test]
fn validate_points_at_the_clause_it_refuses_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = "name = \"bad\"\n[source]\nkind = \"generator\"\n[sink]\nuri = \"./lake\"\n\n[[aggregates]]\nname = \"x\"\nwatermark = \"5s\"\nsql = \"\"\"\nSELECT window_start, window_end, page, COUNT(*) AS n\nFROM TABLE(TUMBLE(TABLE clickstream, DESCRIPTOR(event_timestamp), INTERVAL '1' MINUTE))\n  JOIN users ON users.id = page\nGROUP BY window_start, window_end, page\n\"\"\"\n";
    let p = write_file(dir.path(), "bad.toml", text);
    let out = tributary(dir.path(), &["validate", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    // JOIN's table, located independently in the file.
    let at = text.find("users ON").unwrap();
    let line = text[..at].matches('\n').count() + 1;
    let column = at - text[..at].rfind('\n').unwrap();
    assert!(err.contains("aggregates[0].sql: JOIN is not supported"), "{err}");
    assert!(err.contains(&format!("(line {line}, column {column})")), "{err}");
}

/// pipelines/windows.toml, as shipped: every aggregate writes (the global one by MERGE
/// after its last batch, too), and the SQL ones match DuckDB over the raw table.
#[test]
fn the_shipped_windows_pipeline_runs_and_its_sql_aggregates_are_right() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("windows.toml");
    std::fs::copy(repo().join("pipelines/windows.toml"), &p).unwrap();
    run_once(dir.path(), &p);
    let lake = dir.path().join("lake");
    let t = |name: &str| scan(lake.join(name).to_str().unwrap());
    let ev = format!("SELECT *, epoch_us(event_timestamp) AS t FROM {}", t("clicks"));
    assert_same_rows(
        "page_metrics",
        &format!(
            "SELECT t // 300000000 * 300000000 AS ws, page, count(*) AS views, count(DISTINCT user_id) FROM ({ev}) GROUP BY ALL"
        ),
        &format!(
            "SELECT epoch_us(window_start), page, views, users FROM {}",
            t("page_metrics")
        ),
    );
    assert_same_rows(
        "page_metrics.views_ma3",
        &format!(
            "SELECT window_start, page, round(avg(views) OVER (PARTITION BY page ORDER BY window_start \
             ROWS BETWEEN 2 PRECEDING AND CURRENT ROW), 9) FROM {}",
            t("page_metrics")
        ),
        &format!(
            "SELECT window_start, page, round(views_ma3, 9) FROM {}",
            t("page_metrics")
        ),
    );
    assert_same_rows(
        "purchases_today",
        &cumulated_by_country(&ev, "purchase", 3_600_000_000, 24),
        &format!(
            "SELECT epoch_us(window_start), epoch_us(window_end), country, purchases, buyers FROM {}",
            t("purchases_today")
        ),
    );
    assert_eq!(
        duck_i64(&format!("SELECT sum(events) FROM {}", t("devices"))),
        duck_i64(&format!("SELECT count(*) FROM {}", t("clicks")))
    );
}
