use super::*;

const GOOD: &str = r#"
name = "quickstart"
[source]
kind = "generator"
events = 1000
seed = 7
out_of_order = "20s"
[sink]
uri = "s3://bucket/lake/"
[sink.storage]
AWS_SECRET_ACCESS_KEY = "${SECRET}"
[[tables]]
name = "raw"
from = "clickstream"
[[aggregates]]
name = "per_page"
from = "clickstream"
event_time = "event_timestamp"
window = { kind = "tumbling", size = "1m" }
watermark = "30s"
group_by = ["page"]
measures = { views = "count(*)", users = "count(user_id)" }
"#;

fn env(name: &str) -> Option<String> {
    (name == "SECRET").then(|| "s3cr3t".to_string())
}

fn error_of(text: &str) -> String {
    parse("p.toml", text, env).unwrap_err().to_string()
}

#[test]
fn a_good_file_resolves() {
    let p = parse("p.toml", GOOD, env).unwrap();
    assert_eq!(p.name, "quickstart");
    assert_eq!(p.sink.table_url("raw").as_str(), "s3://bucket/lake/raw");
    assert_eq!(p.sink.storage["AWS_SECRET_ACCESS_KEY"].expose(), "s3cr3t");
    assert!(!format!("{p:?}").contains("s3cr3t"), "secrets leak through Debug");
    assert_eq!(p.batch.max_rows, spec::DEFAULT_MAX_ROWS);
    let a = &p.aggregates[0];
    assert_eq!(
        a.window,
        Window::Tumbling {
            size: Span::from_secs(60)
        }
    );
    assert_eq!(a.measures[0].func, MeasureFn::CountAll);
    assert_eq!(a.measures[1].func, MeasureFn::Count("user_id".into()));
}

#[test]
fn errors_name_file_key_and_expectation() {
    let e = error_of(&GOOD.replace("size = \"1m\"", "size = \"5 minutes\""));
    assert!(e.starts_with("p.toml: aggregates[0].window"), "{e}");
    assert!(e.contains("\"5 minutes\" is not a duration"), "{e}");

    let e = error_of(&GOOD.replace("events = 1000", "events = \"many\""));
    assert!(e.starts_with("p.toml: source"), "{e}");

    let e = error_of(&GOOD.replace("from = \"clickstream\"\n[[agg", "from = \"clicks\"\n[[agg"));
    assert!(
        e.starts_with("p.toml: tables[0].from: no stream \"clicks\""),
        "{e}"
    );

    let e = error_of(&GOOD.replace("count(user_id)", "median(x)"));
    assert!(e.starts_with("p.toml: aggregates[0].measures.users:"), "{e}");

    let e = error_of(&GOOD.replace("watermark = \"30s\"", "watermrk = \"30s\""));
    assert!(
        e.starts_with("p.toml: aggregates[0].watermrk: unknown field"),
        "{e}"
    );

    let e = error_of(&GOOD.replace("[sink]\nuri", "[sink]\nurl"));
    assert!(e.starts_with("p.toml: sink.url: unknown field"), "{e}");

    let e = error_of(&GOOD.replace("${SECRET}", "${MISSING}"));
    assert_eq!(
        e,
        "p.toml: sink.storage.AWS_SECRET_ACCESS_KEY: environment variable MISSING is not set"
    );

    let e = error_of(&GOOD.replace("s3://bucket/lake/", "ftp://x/y"));
    assert!(e.starts_with("p.toml: sink.uri: scheme \"ftp\""), "{e}");
}

#[test]
fn names_must_be_unique_and_plain() {
    let e = error_of(&GOOD.replace("name = \"per_page\"", "name = \"raw\""));
    assert!(e.contains("aggregates[0].name: \"raw\" is used twice"), "{e}");
    let e = error_of(&GOOD.replace("name = \"quickstart\"", "name = \"quick start\""));
    assert!(
        e.starts_with("p.toml: name: \"quick start\" is not a valid name"),
        "{e}"
    );
}

#[test]
fn syntax_errors_name_a_line() {
    let e = error_of("name = \"x\"\n[source\nkind = 1");
    assert!(e.starts_with("p.toml: pipeline:"), "{e}");
    assert!(e.contains("line 2"), "{e}");
}

#[test]
fn folders_become_file_urls() {
    let url = parse_sink_uri("./lake").unwrap();
    assert_eq!(url.scheme(), "file");
    assert!(url.path().ends_with("/lake"), "{url}");
}

#[test]
fn table_modes_sizes_and_dead_letters_are_checked() {
    let table = "[[tables]]\nname = \"raw\"\nfrom = \"clickstream\"";
    let with = |extra: &str| GOOD.replace(table, &format!("{table}\n{extra}"));

    let e = error_of(&with("mode = \"mirror\""));
    assert!(
        e.starts_with("p.toml: tables[0].key: a mirror table needs its key"),
        "{e}"
    );
    let e = error_of(&with("key = [\"user_id\"]"));
    assert_eq!(e, "p.toml: tables[0].key: only mirror tables have a key");
    let e = error_of(&with("mode = \"mirror\"\nkey = [\"id\", \"id\"]"));
    assert_eq!(e, "p.toml: tables[0].key: \"id\" is listed twice");
    let e = error_of(&with("on_incompatible = \"dead_letter\""));
    assert!(
        e.starts_with("p.toml: tables[0].on_incompatible: \"dead_letter\" needs"),
        "{e}"
    );
    let e = error_of(&with("mode = \"upsert\""));
    assert!(
        e.starts_with("p.toml: tables[0].mode: unknown variant `upsert`"),
        "{e}"
    );

    let p = parse(
        "p.toml",
        &format!(
            "{}\n[dead_letters]\n",
            with("mode = \"mirror\"\nkey = [\"user_id\"]\non_incompatible = \"dead_letter\"")
        )
        .replace("[sink]\n", "[sink]\ntarget_file_size = \"32MiB\"\n"),
        env,
    )
    .unwrap();
    assert_eq!(p.dead_letters.as_deref(), Some("dead_letters"));
    assert_eq!(p.tables[0].key, ["user_id"]);
    assert_eq!(p.sink.target_file_size, ByteSize::mib(32));
    assert_eq!(
        p.table_names().collect::<Vec<_>>(),
        ["dead_letters", "raw", "per_page"]
    );

    let e = error_of(&GOOD.replace("[sink]\n", "[sink]\ntarget_file_size = \"12 parsecs\"\n"));
    assert!(e.contains("\"12 parsecs\" is not a size"), "{e}");
    let e = error_of(&format!("{GOOD}\n[batch]\nmax_bytes = 0\n"));
    assert_eq!(e, "p.toml: batch.max_bytes: must be at least 1");
}

const KAFKA: &str = r#"
name = "k"
[source]
kind = "kafka"
brokers = "127.0.0.1:19092"
topics = ["clicks", "orders"]
group_id = "g"
format = "debezium-avro"
schema_registry = "http://127.0.0.1:18081"
[source.options]
"sasl.password" = "${SECRET}"
[sink]
uri = "./lake"
[[tables]]
name = "orders"
from = "orders"
mode = "mirror"
key = ["id"]
"#;

#[test]
fn a_kafka_source_resolves_with_secret_options() {
    let p = parse("p.toml", KAFKA, env).unwrap();
    let SourceConfig::Kafka(k) = &p.source else {
        panic!("not kafka")
    };
    assert_eq!(k.format, KafkaFormat::DebeziumAvro);
    assert_eq!(k.subject_strategy.subject("orders", "x.Y"), "orders-value");
    assert_eq!(k.options["sasl.password"].expose(), "s3cr3t");
    assert!(!format!("{p:?}").contains("s3cr3t"), "secrets never print");
    assert_eq!(p.source.streams(), Some(vec!["clicks", "orders"]));
}

#[test]
fn registry_credentials_come_from_the_env_or_the_url_and_never_print() {
    let with = |line: &str| KAFKA.replace("schema_registry = \"http://127.0.0.1:18081\"", line);
    let endpoint = |text: &str| {
        let p = parse("p.toml", text, env).unwrap();
        let SourceConfig::Kafka(k) = p.source else {
            panic!("not kafka")
        };
        k.schema_registry.unwrap()
    };
    let e = endpoint(&with(
        "schema_registry = \"https://reg:8081/\"\nschema_registry_user_info = \"ingest:${SECRET}\"",
    ));
    assert_eq!(e.url, "https://reg:8081");
    let (user, password) = e.credentials.clone().unwrap();
    assert_eq!((user.as_str(), password.expose()), ("ingest", "s3cr3t"));
    assert!(!format!("{e:?}").contains("s3cr3t"), "secrets never print");
    // Confluent's clients also take them from the URL; they are taken out of it.
    let e = endpoint(&with("schema_registry = \"https://ingest:p%40ss@reg:8081\""));
    assert_eq!(e.url, "https://reg:8081");
    assert_eq!(e.credentials.unwrap().1.expose(), "p@ss");

    let e = error_of(&with(
        "schema_registry = \"https://u:p@reg\"\nschema_registry_user_info = \"u:p\"",
    ));
    assert!(
        e.contains("source.schema_registry_user_info: credentials are also in"),
        "{e}"
    );
    let e = error_of(&with(
        "schema_registry = \"https://reg\"\nschema_registry_user_info = \"nopassword\"",
    ));
    assert!(
        e.contains("source.schema_registry_user_info: expected \"user:password\""),
        "{e}"
    );
    let e = error_of(&with("schema_registry = \"https://u:%ff@reg\""));
    assert!(e.contains("source.schema_registry: a percent-escape"), "{e}");
    let e = error_of(&with("schema_registry = \"ftp://u:hunter2@reg\""));
    assert!(
        e.contains("source.schema_registry") && !e.contains("hunter2"),
        "{e}"
    );
    let e = error_of(&with(
        "schema_registry = \"https://reg\"\nschema_registry_ca = \"/nonexistent/ca.pem\"",
    ));
    assert!(
        e.contains("source.schema_registry_ca: /nonexistent/ca.pem"),
        "{e}"
    );
}

#[test]
fn kafka_mistakes_name_their_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "topics = [\"clicks\", \"orders\"]",
            "topics = [\"a b\"]",
            "source.topics[0]",
        ),
        (
            "topics = [\"clicks\", \"orders\"]",
            "topics = [\"x\", \"x\"]",
            "listed twice",
        ),
        (
            "schema_registry = \"http://127.0.0.1:18081\"",
            "schema_registry = \"ftp://x\"",
            "source.schema_registry",
        ),
        (
            "\"sasl.password\"",
            "\"group.id\"",
            "source.options.\"group.id\": is set by Tributary",
        ),
        (
            "format = \"debezium-avro\"",
            "format = \"protobuf\"",
            "unknown variant `protobuf`",
        ),
        (
            "key = [\"id\"]",
            "",
            "tables[0].key: a mirror table needs its key",
        ),
        ("from = \"orders\"", "from = \"nope\"", "no stream \"nope\""),
        (
            "format = \"debezium-avro\"",
            "format = \"avro\"\nsubject_strategy = \"record\"",
            "source.reader_schemas.clicks",
        ),
        (
            "schema_registry = \"http://127.0.0.1:18081\"",
            "",
            "source.schema_registry: Avro values are read with writer schemas",
        ),
        (
            "group_id = \"g\"",
            "group_id = \"g\"\nunknown_fields = \"dead_letter\"",
            "source.unknown_fields",
        ),
        (
            "group_id = \"g\"",
            "group_id = \"g\"\nkey_prefix = \"k_\"",
            "source.key_prefix: set key_format",
        ),
        (
            "group_id = \"g\"",
            "group_id = \"g\"\nkey_format = \"json\"",
            "source.key_schema: JSON keys are read against a declared schema",
        ),
        (
            "group_id = \"g\"",
            "group_id = \"g\"\nkey_format = \"string\"\nkey_prefix = \"k_\"",
            "source.key_prefix: only record keys",
        ),
        (
            "group_id = \"g\"",
            "group_id = \"g\"\nupsert = true",
            "source.upsert: an upsert topic's key is its rows' key",
        ),
        (
            "group_id = \"g\"",
            "group_id = \"g\"\nupsert = true\nkey_format = \"string\"",
            "source.upsert: Debezium events are changes already",
        ),
        (
            "group_id = \"g\"",
            "group_id = \"g\"\nheaders = true",
            "source.headers",
        ),
    ];
    for (from, to, expect) in cases {
        let text = KAFKA.replace(from, to);
        let e = error_of(&text);
        assert!(e.contains(expect), "{to}: {e}");
    }
}

#[test]
fn window_kinds_measures_and_late_policies_resolve_or_name_the_key() {
    let agg = |window: &str, extra: &str| {
        GOOD.replace(
            "window = { kind = \"tumbling\", size = \"1m\" }",
            &format!("window = {window}\n{extra}"),
        )
    };
    let p = parse(
        "p.toml",
        &agg(
            "{ kind = \"hopping\", size = \"10m\", slide = \"1m\" }",
            "late = \"dlq\"\nfilter = \"page <> '/'\"\nidle_timeout = \"1m\"",
        )
        .replace("count(user_id)", "count(distinct user_id)"),
        env,
    )
    .unwrap();
    let a = &p.aggregates[0];
    assert_eq!(
        a.window,
        Window::Hopping {
            size: Span::from_secs(600),
            slide: Span::from_secs(60)
        }
    );
    assert_eq!(a.late_table.as_deref(), Some("per_page_late_events"));
    assert_eq!(a.measures[1].func, MeasureFn::CountDistinct("user_id".into()));
    assert!(p.table_names().any(|t| t == "per_page_late_events"));
    assert!(!a.keyed());

    for (window, extra, key, says) in [
        (
            "{ kind = \"hopping\", size = \"1m\", slide = \"2m\" }",
            "",
            "window.slide",
            "longer than the window size",
        ),
        (
            "{ kind = \"session\", gap = \"0s\" }",
            "",
            "window.gap",
            "longer than 0",
        ),
        (
            "{ kind = \"tumbling\", size = \"1m\" }",
            "late = \"update\"",
            "lateness",
            "needs how long",
        ),
        (
            "{ kind = \"tumbling\", size = \"1m\" }",
            "late_table = \"x\"",
            "late_table",
            "only used with late = \"dlq\"",
        ),
        (
            "{ kind = \"tumbling\", size = \"1m\" }",
            "late = \"dlq\"\nlate_table = \"raw\"",
            "late_table",
            "used twice",
        ),
        ("{ kind = \"global\" }", "late = \"dlq\"", "late", "never closes"),
        (
            "{ kind = \"tumbling\", size = \"1m\" }",
            "filter = \"page = = 1\"",
            "filter",
            "not a SQL condition",
        ),
        ("{ kind = \"weekly\" }", "", "window", "unknown variant"),
    ] {
        let e = error_of(&agg(window, extra));
        assert!(e.starts_with(&format!("p.toml: aggregates[0].{key}")), "{e}");
        assert!(e.contains(says), "{e}");
    }
    let e = error_of(&GOOD.replace("watermark = \"30s\"\n", ""));
    assert!(e.starts_with("p.toml: aggregates[0].watermark: missing"), "{e}");
    for (expr, parsed) in [
        ("sum(amount)", MeasureFn::Sum("amount".into())),
        ("AVG( amount )", MeasureFn::Avg("amount".into())),
        (
            "approx_count_distinct(u)",
            MeasureFn::ApproxCountDistinct("u".into()),
        ),
        ("max(t)", MeasureFn::Max("t".into())),
    ] {
        assert_eq!(parse_measure(expr), Ok(parsed));
    }
    assert!(parse_measure("sum(*)").is_err());
    assert!(parse_measure("median(x)").unwrap_err().contains("supported:"));
}

#[test]
fn the_runtime_section_sizes_batches_from_the_memory_budget() {
    let p = parse("p.toml", GOOD, env).unwrap();
    assert_eq!(p.runtime.memory, ByteSize::mib(256));
    assert_eq!(
        p.runtime.in_flight_bytes(),
        64 << 20,
        "half of what the 128MiB footprint leaves"
    );
    assert_eq!(
        p.batch.max_bytes,
        ByteSize::mib(32),
        "half of the in-flight bytes"
    );
    assert!(p.runtime.metrics.is_none());
    assert_eq!(p.runtime.shutdown_timeout.0, std::time::Duration::from_secs(30));

    let big = format!(
        "{GOOD}\n[runtime]\nmemory = \"1GiB\"\nmetrics = \"127.0.0.1:9464\"\nshutdown_timeout = \"5s\"\n"
    );
    let p = parse("p.toml", &big, env).unwrap();
    assert_eq!(
        p.batch.max_bytes,
        ByteSize::mib(64),
        "the default stays 64MiB when it fits"
    );
    assert_eq!(p.runtime.metrics.unwrap().port(), 9464);
    assert_eq!(p.runtime.shutdown_timeout.0, std::time::Duration::from_secs(5));

    for (extra, key, says) in [
        (
            "[runtime]\nmemory = \"128MiB\"",
            "runtime.memory",
            "at least 192MiB",
        ),
        (
            "[runtime]\nmetrics = \"localhost\"",
            "runtime.metrics",
            "not an address",
        ),
        ("[runtime]\nmemory = \"nope\"", "runtime.memory", "not a size"),
        (
            "[batch]\nmax_bytes = \"64MiB\"",
            "batch.max_bytes",
            "at most 32MiB",
        ),
    ] {
        let e = error_of(&format!("{GOOD}\n{extra}\n"));
        assert!(e.contains(key) && e.contains(says), "{extra}: {e}");
    }
}

#[test]
fn mirrors_merge_by_deletion_vectors_unless_told_and_caches_have_a_home() {
    let mirror = |extra: &str| {
        GOOD.replace(
            "[[tables]]\nname = \"raw\"\nfrom = \"clickstream\"\n",
            &format!("[[tables]]\nname = \"raw\"\nfrom = \"clickstream\"\nmode = \"mirror\"\nkey = [\"user_id\"]\n{extra}\n"),
        )
    };
    let p = parse("p.toml", &mirror(""), env).unwrap();
    assert_eq!(p.tables[0].merge, None, "the table's own way; new tables get DVs");
    let p = parse("p.toml", &mirror("merge = \"copy_on_write\""), env).unwrap();
    assert_eq!(p.tables[0].merge, Some(MergeMode::CopyOnWrite));
    let err = error_of(&mirror("merge = \"rewrite\""));
    assert!(
        err.contains("tables[0].merge") && err.contains("deletion_vectors"),
        "{err}"
    );
    let err = error_of(&mirror("partition_by = [\"user_id\"]"));
    assert!(
        err.contains("tables[0].partition_by") && err.contains("copy_on_write"),
        "{err}"
    );
    // With copy-on-write, partitioning by the key is allowed.
    parse(
        "p.toml",
        &mirror("partition_by = [\"user_id\"]\nmerge = \"copy_on_write\""),
        env,
    )
    .unwrap();
    let err = error_of(&GOOD.replace(
        "from = \"clickstream\"\n[[aggregates]]",
        "from = \"clickstream\"\nmerge = \"copy_on_write\"\n[[aggregates]]",
    ));
    assert!(
        err.contains("tables[0].merge") && err.contains("only mirror tables"),
        "{err}"
    );

    // The cache folder: the setting, else XDG_CACHE_HOME, else ~/.cache.
    let home = |n: &str| match n {
        "HOME" => Some("/home/u".to_string()),
        other => env(other),
    };
    let p = parse("p.toml", GOOD, home).unwrap();
    assert_eq!(
        p.runtime.cache_dir,
        std::path::PathBuf::from("/home/u/.cache/tributary")
    );
    let xdg = |n: &str| match n {
        "XDG_CACHE_HOME" => Some("/x".to_string()),
        other => home(other),
    };
    assert_eq!(
        parse("p.toml", GOOD, xdg).unwrap().runtime.cache_dir,
        std::path::PathBuf::from("/x/tributary")
    );
    let set = format!("{GOOD}\n[runtime]\ncache_dir = \"/c\"\n");
    assert_eq!(
        parse("p.toml", &set, xdg).unwrap().runtime.cache_dir,
        std::path::PathBuf::from("/c")
    );
    assert_eq!(p.runtime.key_index_cache_bytes(), 8 << 20);
}

#[test]
fn compaction_and_the_adaptive_trigger_resolve_against_the_budget() {
    let p = parse("p.toml", GOOD, env).unwrap();
    let c = p.sink.compaction.unwrap();
    assert_eq!(c.every, std::time::Duration::from_secs(10));
    assert_eq!(c.min_files, 10);
    assert_eq!(
        c.file_size,
        16 << 20,
        "a quarter of the 64MiB in flight, under the 128MiB target"
    );
    assert_eq!(p.batch.min_interval.0, std::time::Duration::from_millis(250));

    let off = parse(
        "p.toml",
        &format!("{GOOD}\n[sink.compaction]\nenabled = false\n"),
        env,
    )
    .unwrap();
    assert!(off.sink.compaction.is_none());
    let set = format!(
        "{GOOD}\n[sink.compaction]\nevery = \"30s\"\nmin_files = 4\nfile_size = \"8MiB\"\n[batch]\nmin_interval = \"500ms\"\n"
    );
    let p = parse("p.toml", &set, env).unwrap();
    let c = p.sink.compaction.unwrap();
    assert_eq!((c.every.as_secs(), c.min_files, c.file_size), (30, 4, 8 << 20));
    assert_eq!(p.batch.min_interval.0, std::time::Duration::from_millis(500));

    for (extra, key, says) in [
        (
            "[sink.compaction]\nfile_size = \"64MiB\"",
            "sink.compaction.file_size",
            "does not fit the memory budget",
        ),
        (
            "[sink.compaction]\nevery = \"0s\"",
            "sink.compaction.every",
            "enabled = false",
        ),
        (
            "[sink.compaction]\nmin_files = 1",
            "sink.compaction.min_files",
            "at least 2",
        ),
        ("[sink.compaction]\nmin_size = 1", "min_size", "unknown field"),
        (
            "[batch]\nmin_interval = \"2s\"",
            "batch.min_interval",
            "longer than batch.max_latency",
        ),
    ] {
        let e = error_of(&format!("{GOOD}\n{extra}\n"));
        assert!(e.contains(key) && e.contains(says), "{extra}: {e}");
    }
}

#[test]
fn json_upsert_topics_resolve_and_supply_the_mirror_key() {
    let dir = tempfile::tempdir().unwrap();
    let avsc = dir.path().join("v.avsc");
    std::fs::write(
        &avsc,
        r#"{"type":"record","name":"V","fields":[{"name":"n","type":"long"}]}"#,
    )
    .unwrap();
    let text = KAFKA
        .replace("format = \"debezium-avro\"", "format = \"json\"")
        .replace(
            "schema_registry = \"http://127.0.0.1:18081\"",
            &format!(
                "schema = \"{}\"\nkey_format = \"string\"\nupsert = true\nheaders = true",
                avsc.display()
            ),
        )
        .replace("key = [\"id\"]", "");
    let p = parse("p.toml", &text, env).unwrap();
    let SourceConfig::Kafka(k) = &p.source else {
        panic!("not kafka")
    };
    assert!(k.schema_registry.is_none());
    assert!(k.upsert && k.headers);
    assert_eq!(k.key.as_ref().map(|k| k.format), Some(KeyFormat::String));
    // Every topic reads against the one schema.
    assert_eq!(k.reader_schemas.len(), 2);
    assert_eq!(p.source.source_time_column(), Some("_commit_ts"));
    // Without the upsert, a mirror needs its key spelled out again.
    let e = error_of(&text.replace("upsert = true\n", ""));
    assert!(e.contains("tables[0].key: a mirror table needs its key"), "{e}");
}

#[test]
fn every_example_pipeline_resolves() {
    let env = |name: &str| {
        Some(
            match name {
                "KAFKA_BROKERS" => "127.0.0.1:19092",
                "SCHEMA_REGISTRY_URL" => "http://127.0.0.1:18081",
                "TRIBUTARY_PG_DSN" => "host=127.0.0.1 port=15432 user=postgres dbname=postgres",
                "AWS_ENDPOINT_URL" => "http://127.0.0.1:19000",
                _ => "x",
            }
            .to_string(),
        )
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            if let Err(e) = parse(&path.display().to_string(), &text, env) {
                panic!("{e}");
            }
            n += 1;
        }
    }
    assert!(n >= 7, "{n} example pipelines");
}

#[test]
fn errors_inside_the_source_name_the_key_and_its_line() {
    let text = "name = \"v\"\n\n[source]\nkind = \"kafka\"\nbrokers = \"b:9092\"\ntopics = [\"t\"]\nformat = \"jsonx\"\n\n[sink]\nuri = \"/tmp/lake\"\n\n[[tables]]\nname = \"t\"\nfrom = \"t\"\n";
    let e = error_of(text);
    assert!(
        e.contains("source.format: unknown variant `jsonx`") && e.contains("(line 7)"),
        "{e}"
    );
    let e = error_of(&text.replace("format = \"jsonx\"", "topicz = [\"x\"]"));
    assert!(
        e.contains("source.topicz") && e.contains("unknown field") && e.contains("(line 7)"),
        "{e}"
    );
    let pg = "name = \"v\"\n[source]\nkind = \"postgres\"\ndsn = \"host=x\"\npublication = \"p\"\nslot = \"s\"\nsnapshot = \"yes\"\n[sink]\nuri = \"/tmp/lake\"\n[[tables]]\nname = \"t\"\nfrom = \"t\"\n";
    let e = error_of(pg);
    assert!(e.contains("source.snapshot") && e.contains("(line 7)"), "{e}");
    let chunk = |rows: &str| pg.replace("snapshot = \"yes\"", &format!("snapshot_chunk_rows = {rows}"));
    let e = error_of(&chunk("0"));
    assert!(
        e.contains("source.snapshot_chunk_rows") && e.contains("between 1 and"),
        "{e}"
    );
    let SourceConfig::Postgres(p) = parse("p.toml", &chunk("2500"), env).unwrap().source else {
        panic!("a postgres source");
    };
    assert_eq!(p.snapshot_chunk_rows, 2500);
    let SourceConfig::Postgres(p) = parse("p.toml", &pg.replace("snapshot = \"yes\"\n", ""), env)
        .unwrap()
        .source
    else {
        panic!("a postgres source");
    };
    assert_eq!(p.snapshot_chunk_rows, 100_000, "the default");
    // An unknown kind is still named as such.
    let e = error_of(&text.replace("kind = \"kafka\"", "kind = \"kafkaa\""));
    assert!(e.contains("source") && e.contains("kafkaa"), "{e}");
}
