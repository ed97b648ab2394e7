use indexmap::IndexMap;

use super::*;
use crate::config::Span;

fn measures(pairs: &[(&str, &str)]) -> IndexMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const FLINK_TUMBLE: &str = "INSERT INTO page_metrics SELECT window_start, window_end, page, COUNT(*), \
     COUNT(DISTINCT user_id) FROM TABLE(TUMBLE(TABLE clickstream, DESCRIPTOR(event_timestamp), \
     INTERVAL '5' MINUTE)) GROUP BY window_start, window_end, page";

#[test]
fn flink_tumble_query_translates_to_the_toml_form() {
    let t = translate(FLINK_TUMBLE).unwrap();
    assert_eq!(
        t,
        Translated {
            target: Some("page_metrics".into()),
            from: "clickstream".into(),
            event_time: "event_timestamp".into(),
            window: WindowSpec::Tumbling {
                size: Span::from_secs(300)
            },
            group_by: vec!["page".into()],
            measures: measures(&[
                ("count", "count(*)"),
                ("count_distinct_user_id", "count(distinct user_id)")
            ]),
            filter: None,
            over: IndexMap::new(),
        }
    );
}

#[test]
fn hop_cumulate_and_session_take_flinks_argument_order_and_names() {
    let hop = translate(
        "SELECT window_start, window_end, page, COUNT(*) AS views FROM TABLE(HOP(TABLE clickstream, \
         DESCRIPTOR(event_timestamp), INTERVAL '1' MINUTE, INTERVAL '10' MINUTE)) GROUP BY window_start, window_end, page",
    )
    .unwrap();
    assert_eq!(
        hop.window,
        WindowSpec::Hopping {
            size: Span::from_secs(600),
            slide: Span::from_secs(60)
        }
    );
    assert_eq!(hop.target, None);
    assert_eq!(hop.measures, measures(&[("views", "count(*)")]));

    let named = translate(
        "SELECT window_start, window_end, SUM(amount) AS total FROM TABLE(CUMULATE(DATA => TABLE orders, \
         TIMECOL => DESCRIPTOR(ts), SIZE => INTERVAL '1' HOUR, STEP => INTERVAL '10' MINUTES)) \
         WHERE amount > 0 GROUP BY window_start, window_end",
    )
    .unwrap();
    assert_eq!(
        named.window,
        WindowSpec::Cumulate {
            size: Span::from_secs(3600),
            step: Span::from_secs(600)
        }
    );
    assert_eq!(named.filter.as_deref(), Some("amount > 0"));
    assert_eq!(named.from, "orders");
    assert_eq!(named.event_time, "ts");

    let session = translate(
        "SELECT window_start, window_end, user_id, COUNT(*) AS clicks, MAX(page) FROM TABLE(SESSION(TABLE \
         clickstream PARTITION BY user_id, DESCRIPTOR(event_timestamp), INTERVAL '30 seconds')) \
         GROUP BY window_start, window_end, user_id",
    )
    .unwrap();
    assert_eq!(
        session.window,
        WindowSpec::Session {
            gap: Span::from_secs(30)
        }
    );
    assert_eq!(
        session.measures,
        measures(&[("clicks", "count(*)"), ("max_page", "max(page)")])
    );
}

#[test]
fn insert_column_lists_and_over_items_name_the_outputs() {
    let t = translate(
        "INSERT INTO m (window_start, window_end, page, views, views_ma3) SELECT window_start, window_end, page, \
         COUNT(*), AVG(COUNT(*)) OVER (PARTITION BY page ORDER BY window_start ROWS BETWEEN 2 PRECEDING AND \
         CURRENT ROW) FROM TABLE(TUMBLE(TABLE clickstream, DESCRIPTOR(event_timestamp), INTERVAL '1' MINUTE)) \
         GROUP BY window_start, window_end, page",
    )
    .unwrap();
    assert_eq!(t.measures, measures(&[("views", "count(*)")]));
    assert_eq!(
        t.over,
        measures(&[(
            "views_ma3",
            "avg(views) over (partition by page order by window_start rows between 2 preceding and current row)"
        )])
    );
    // An aggregate only inside OVER becomes a measure of its own.
    let t = translate(
        "SELECT window_start, window_end, SUM(COUNT(*)) OVER (ORDER BY window_start ROWS 5 PRECEDING) AS last6 \
         FROM TABLE(TUMBLE(TABLE s, DESCRIPTOR(t), INTERVAL '1' SECOND)) GROUP BY window_start, window_end",
    )
    .unwrap();
    assert_eq!(t.measures, measures(&[("count", "count(*)")]));
    assert_eq!(
        t.over["last6"],
        "sum(count) over (order by window_start rows between 5 preceding and current row)"
    );
    assert_eq!(parse_over(&t.over["last6"]).unwrap().preceding, 5);
}

#[test]
fn queries_outside_the_subset_are_refused_naming_the_clause() {
    let tvf = "TABLE(TUMBLE(TABLE clickstream, DESCRIPTOR(event_timestamp), INTERVAL '1' MINUTE))";
    let cases = [
        (
            format!("SELECT window_start, window_end, COUNT(*) FROM {tvf} JOIN users u ON true GROUP BY window_start, window_end"),
            "JOIN",
        ),
        (
            format!("SELECT window_start, window_end, page, COUNT(*) AS n FROM {tvf} GROUP BY window_start, window_end, page HAVING COUNT(*) > 5"),
            "HAVING",
        ),
        (
            format!("SELECT window_start, window_end, COUNT(*) FROM {tvf} GROUP BY window_start, window_end ORDER BY window_start"),
            "ORDER BY",
        ),
        ("SELECT page, COUNT(*) FROM clickstream GROUP BY page".to_string(), "has no window"),
        (
            format!("SELECT window_start, window_end, page, COUNT(*) FROM {tvf} GROUP BY page"),
            "GROUP BY must list window_start and window_end",
        ),
        (
            format!("SELECT window_start, window_end, MEDIAN(price) FROM {tvf} GROUP BY window_start, window_end"),
            "function MEDIAN is not supported",
        ),
        (
            format!("SELECT window_start, window_end, COUNT(*) FROM {tvf} GROUP BY window_start, window_end LIMIT 10"),
            "LIMIT",
        ),
        (
            format!("SELECT DISTINCT window_start, window_end, COUNT(*) FROM {tvf} GROUP BY window_start, window_end"),
            "SELECT DISTINCT",
        ),
        (
            format!("SELECT window_start, window_end, COUNT(*) FROM {tvf} GROUP BY window_start, window_end UNION SELECT window_start, window_end, COUNT(*) FROM {tvf} GROUP BY window_start, window_end"),
            "UNION",
        ),
        (
            format!("WITH x AS (SELECT 1) SELECT window_start, window_end, COUNT(*) FROM {tvf} GROUP BY window_start, window_end"),
            "WITH",
        ),
        (
            "SELECT window_start, window_end, COUNT(*) FROM (SELECT * FROM clickstream) GROUP BY window_start, window_end".to_string(),
            "subquery in FROM",
        ),
        (
            "SELECT window_start, window_end, COUNT(*) FROM TABLE(TUMBLE(TABLE s, DESCRIPTOR(t), INTERVAL '1' MINUTE, INTERVAL '5' SECOND)) GROUP BY window_start, window_end".to_string(),
            "window offsets are not supported",
        ),
        (
            "SELECT window_start, window_end, COUNT(*) FROM TABLE(SLIDING(TABLE s, DESCRIPTOR(t), INTERVAL '1' MINUTE)) GROUP BY window_start, window_end".to_string(),
            "not a window function",
        ),
        (
            format!("SELECT * FROM {tvf} GROUP BY window_start, window_end"),
            "SELECT *",
        ),
        (
            format!("SELECT window_start, window_end, COUNT(*) FROM {tvf} WHERE window_start > TIMESTAMP '2026-01-01' GROUP BY window_start, window_end"),
            "window_start is not a column there",
        ),
        (
            format!("SELECT window_start, window_end, COUNT(*) FROM {tvf} WHERE page IN (SELECT page FROM pages) GROUP BY window_start, window_end"),
            "subquery in WHERE",
        ),
        (
            format!("SELECT window_start, window_end, COUNT(*) FROM {tvf} WHERE COUNT(*) > 2 GROUP BY window_start, window_end"),
            "aggregates cannot filter",
        ),
        (
            "SELECT window_start, window_end, COUNT(*) FROM TABLE(TUMBLE(TABLE s, DESCRIPTOR(t), INTERVAL '1' MINUTE) x) GROUP BY window_start, window_end".to_string(),
            "takes one window call",
        ),
        (
            format!("INSERT INTO db.IDENTIFIER('x') SELECT window_start, window_end, COUNT(*) FROM {tvf} GROUP BY window_start, window_end"),
            "",
        ),
        (
            format!("SELECT window_start, window_end, user_id, COUNT(*) FROM {tvf} GROUP BY window_start, window_end"),
            "column user_id is neither grouped nor aggregated",
        ),
        (
            format!("SELECT window_start, window_end, COUNT(*) * 2 FROM {tvf} GROUP BY window_start, window_end"),
            "is not supported in SELECT",
        ),
        (
            "SELECT window_start, window_end, page, COUNT(*) FROM TABLE(SESSION(TABLE s PARTITION BY user_id, DESCRIPTOR(t), INTERVAL '1' MINUTE)) GROUP BY window_start, window_end, page".to_string(),
            "must partition by exactly the group keys",
        ),
        (
            format!("SELECT window_start, window_end, COUNT(*) AS n, AVG(COUNT(*)) OVER (ORDER BY window_end ROWS 2 PRECEDING) FROM {tvf} GROUP BY window_start, window_end"),
            "ORDER BY window_start",
        ),
        (
            format!("SELECT window_start, window_end, COUNT(*) AS n, AVG(n) OVER (ORDER BY window_start) FROM {tvf} GROUP BY window_start, window_end"),
            "needs a frame",
        ),
        (
            "SELECT window_start, window_end, COUNT(*) FROM TABLE(TUMBLE(TABLE s, DESCRIPTOR(t), INTERVAL '1' MONTH)) GROUP BY window_start, window_end".to_string(),
            "interval unit MONTH",
        ),
    ];
    for (sql, clause) in cases {
        let e = translate(&sql).expect_err(&sql);
        assert!(
            e.message.contains(clause),
            "{sql}\n→ {}\n(expected it to name {clause})",
            e.message
        );
    }
}

#[test]
fn errors_carry_the_line_and_column_of_the_sql_and_of_the_file() {
    let sql = "SELECT window_start, window_end, COUNT(*)\nFROM TABLE(TUMBLE(TABLE s, DESCRIPTOR(t), INTERVAL '1' MINUTE))\nGROUP BY window_start, window_end\n  HAVING COUNT(*) > 1";
    let e = translate(sql).unwrap_err();
    assert!(e.message.contains("HAVING"), "{}", e.message);
    let at = e.at.expect("a location");
    assert_eq!((at.line, at.column), (4, 10), "{}", e.message);

    // The same query in a pipeline file, as a multi-line string starting on line 3.
    let file = format!("name = \"x\"\n[[aggregates]]\nsql = \"\"\"\n{sql}\"\"\"\n");
    let start = file.find("\"\"\"").unwrap();
    let end = file.rfind("\"\"\"").unwrap() + 3;
    assert_eq!(place(&file, start..end, sql, e.at), " (line 7, column 10)");
    // On the value's first line, columns count from after the quotes.
    let one = "name = \"x\"\nsql = \"SELECT x\"\n";
    let s = one.find("\"SELECT").unwrap();
    let at = Some(sqlparser::tokenizer::Location { line: 1, column: 8 });
    assert_eq!(place(one, s..s + 10, "SELECT x", at), " (line 2, column 15)");
    // With escapes, columns in the SQL are not columns in the file: only the line.
    let esc = "sql = \"SELECT \\\"x\\\"\"\n";
    assert_eq!(place(esc, 6..esc.len() - 1, "SELECT \"x\"", at), " (line 1)");
}

#[test]
fn flink_watermark_declarations_parse() {
    assert_eq!(
        parse_watermark("WATERMARK FOR event_timestamp AS event_timestamp - INTERVAL '5' SECOND").unwrap(),
        ("event_timestamp".to_string(), Span::from_secs(5))
    );
    assert_eq!(
        parse_watermark("watermark for ts as ts").unwrap(),
        ("ts".to_string(), Span::from_secs(0))
    );
    assert!(
        parse_watermark("WATERMARK FOR a AS b - INTERVAL '5' SECOND")
            .unwrap_err()
            .contains("same column")
    );
    assert!(parse_watermark("WATERMARK FOR a AS a + INTERVAL '5' SECOND").is_err());
}

const PIPELINE: &str = r#"
name = "sqlp"
[source]
kind = "generator"
events = 1000
[sink]
uri = "/tmp/lake"
[streams.clickstream]
watermark = "WATERMARK FOR event_timestamp AS event_timestamp - INTERVAL '5' SECOND"
"#;

fn parse_pipeline(aggregates: &str) -> Result<crate::config::Pipeline, String> {
    crate::config::parse("p.toml", &format!("{PIPELINE}{aggregates}"), |_| None).map_err(|e| e.to_string())
}

#[test]
fn the_sql_and_toml_forms_resolve_to_the_same_aggregate() {
    let p = parse_pipeline(
        r#"
[[aggregates]]
sql = """
INSERT INTO by_sql
SELECT window_start, window_end, page, COUNT(*) AS views, COUNT(DISTINCT user_id) AS users,
       AVG(COUNT(*)) OVER (PARTITION BY page ORDER BY window_start ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS views_ma3
FROM TABLE(HOP(TABLE clickstream, DESCRIPTOR(event_timestamp), INTERVAL '1' MINUTE, INTERVAL '10' MINUTE))
WHERE action = 'view'
GROUP BY window_start, window_end, page
"""
late = "dlq"

[[aggregates]]
name = "by_toml"
from = "clickstream"
event_time = "event_timestamp"
window = { kind = "hopping", size = "10m", slide = "1m" }
group_by = ["page"]
measures = { views = "count(*)", users = "count(distinct user_id)" }
filter = "action = 'view'"
over = { views_ma3 = "avg(views) over (partition by page order by window_start rows between 2 preceding and current row)" }
late = "dlq"
"#,
    )
    .unwrap();
    let (sql, toml) = (&p.aggregates[0], &p.aggregates[1]);
    assert!(
        sql.sql
            .as_deref()
            .is_some_and(|s| s.contains("INSERT INTO by_sql"))
    );
    assert_eq!(sql.name, "by_sql");
    assert_eq!(sql.watermark, Span::from_secs(5));
    assert_eq!(
        sql.watermark_from,
        crate::config::WatermarkFrom::Stream("clickstream".into())
    );
    let same = |a: &crate::config::AggregateConfig| {
        (
            a.from.clone(),
            a.event_time.clone(),
            a.window,
            a.watermark,
            a.group_by.clone(),
            a.measures.clone(),
            a.filter.clone(),
            a.over.clone(),
            a.emit,
            a.late,
        )
    };
    assert_eq!(same(sql), same(toml));
    assert_eq!(sql.late_table.as_deref(), Some("by_sql_late_events"));
    // The explanation shows the TOML form a SQL aggregate runs as.
    let text = crate::config::explain::aggregate(&p, sql);
    assert!(
        text.contains("window = { kind = \"hopping\", size = \"10m\", slide = \"1m\" }"),
        "{text}"
    );
    assert!(
        text.contains("views_ma3 = avg of views over its last 3 window rows per page"),
        "{text}"
    );
    assert!(text.contains("([streams.clickstream])"), "{text}");
}

#[test]
fn sql_mistakes_name_the_key_and_the_place_in_the_file() {
    let aggregate = "[[aggregates]]\nsql = \"\"\"\nSELECT window_start, window_end, COUNT(*) AS n\nFROM TABLE(TUMBLE(TABLE clickstream, DESCRIPTOR(event_timestamp), INTERVAL '1' MINUTE))\nGROUP BY window_start, window_end\nHAVING COUNT(*) > 1\n\"\"\"\nname = \"x\"\n";
    let e = parse_pipeline(aggregate).unwrap_err();
    // HAVING's condition, counted in the file independently.
    let file = format!("{PIPELINE}{aggregate}");
    let line = file[..file.find("HAVING").unwrap()].matches('\n').count() + 1;
    assert!(
        e.starts_with("p.toml: aggregates[0].sql: HAVING is not supported"),
        "{e}"
    );
    assert!(e.ends_with(&format!("(line {line}, column 8)")), "{e}");

    let e = parse_pipeline("[[aggregates]]\nname = \"x\"\nsql = \"SELECT window_start, window_end, COUNT(*) FROM TABLE(TUMBLE(TABLE nope, DESCRIPTOR(t), INTERVAL '1' MINUTE)) GROUP BY window_start, window_end\"\n").unwrap_err();
    assert!(e.contains("aggregates[0].from: no stream \"nope\""), "{e}");

    let e =
        parse_pipeline("[[aggregates]]\nname = \"x\"\nwindow = { kind = \"global\" }\nsql = \"SELECT 1\"\n")
            .unwrap_err();
    assert!(e.contains("aggregates[0].window: give either sql or"), "{e}");

    let e = parse_pipeline(&format!(
        "[[aggregates]]\nname = \"other\"\nsql = \"{}\"\n",
        FLINK_TUMBLE
    ))
    .unwrap_err();
    assert!(
        e.contains("differs from the query's INSERT INTO page_metrics"),
        "{e}"
    );

    let e = parse_pipeline("[[aggregates]]\nname = \"x\"\nfrom = \"clickstream\"\nevent_time = \"event_timestamp\"\nwindow = { kind = \"session\", gap = \"1m\" }\nmeasures = { n = \"count(*)\" }\nover = { m = \"avg(n) over (order by window_start rows between 1 preceding and current row)\" }\n").unwrap_err();
    assert!(
        e.contains("aggregates[0].over.m: OVER needs tumbling or hopping windows"),
        "{e}"
    );

    let e = parse_pipeline("[[aggregates]]\nname = \"x\"\nfrom = \"clickstream\"\nevent_time = \"event_timestamp\"\nwindow = { kind = \"cumulate\", size = \"1h\", step = \"7m\" }\nmeasures = { n = \"count(*)\" }\n").unwrap_err();
    assert!(
        e.contains("aggregates[0].window.size: 3600s must be a whole multiple of the step 420s"),
        "{e}"
    );
}

#[test]
fn a_streams_watermark_applies_to_its_column_only() {
    // Declared for event_timestamp: an aggregate on another column needs its own.
    let e = parse_pipeline("[[aggregates]]\nname = \"x\"\nfrom = \"clickstream\"\nevent_time = \"other\"\nwindow = { kind = \"tumbling\", size = \"1m\" }\nmeasures = { n = \"count(*)\" }\n").unwrap_err();
    assert!(e.contains("aggregates[0].watermark: missing"), "{e}");
    // And event_time may come from the stream.
    let p = parse_pipeline("[[aggregates]]\nname = \"x\"\nfrom = \"clickstream\"\nwindow = { kind = \"tumbling\", size = \"1m\" }\nmeasures = { n = \"count(*)\" }\n").unwrap();
    assert_eq!(p.aggregates[0].event_time, "event_timestamp");
    assert_eq!(p.aggregates[0].watermark, Span::from_secs(5));
    let e = crate::config::parse(
        "p.toml",
        &PIPELINE.replace("[streams.clickstream]", "[streams.clicks]"),
        |_| None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("streams.clicks: no stream \"clicks\""), "{e}");
}

/// Every prefix of accepted queries, and each with one token swapped for a stray one:
/// refused or translated, never a panic.
#[test]
fn truncated_and_garbled_queries_never_panic() {
    let queries = [
        FLINK_TUMBLE.to_string(),
        "SELECT window_start, window_end, user_id, COUNT(*) AS n, AVG(COUNT(*)) OVER (ORDER BY window_start ROWS \
         BETWEEN 2 PRECEDING AND CURRENT ROW) FROM TABLE(SESSION(DATA => TABLE s PARTITION BY (user_id), TIMECOL => \
         DESCRIPTOR(t), GAP => INTERVAL '5 minutes')) AS w WHERE w.page <> 'x' GROUP BY window_start, window_end, user_id"
            .to_string(),
        "INSERT INTO t (window_start, window_end, n) SELECT window_start, window_end, COUNT(*) FROM \
         TABLE(CUMULATE(TABLE s, DESCRIPTOR(t), INTERVAL 1 MINUTE, INTERVAL '1' HOUR)) GROUP BY window_start, window_end"
            .to_string(),
    ];
    let strays = [
        "(",
        ")",
        ",",
        "TABLE",
        "=>",
        "INTERVAL",
        "DESCRIPTOR",
        "''",
        "*",
        "OVER",
        ";",
    ];
    for q in &queries {
        for (i, _) in q.char_indices() {
            let _ = translate(&q[..i]);
            let _ = parse_over(&q[..i]);
            let _ = parse_watermark(&q[..i]);
        }
        let words: Vec<&str> = q.split(' ').collect();
        for i in 0..words.len() {
            for stray in strays {
                let mut w = words.clone();
                w[i] = stray;
                let _ = translate(&w.join(" "));
            }
        }
    }
}
