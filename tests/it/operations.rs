//! Operating a pipeline: a slow sink within the memory budget, `--once` stopping at
//! the positions it noted, SIGTERM, `/metrics` read by Prometheus's own parser with
//! lag back at 0, `status`, a password that never shows, and the shutdown deadline.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::kafka::{assert_exact, clicks_source, clicks_topic, produce_clicks, s3_count};
use crate::kafka_support::*;
use crate::pg::Db;
use crate::support::*;

/// A TCP proxy in front of S3 that lets uploads through at `bytes_per_sec`: a sink
/// slower than any source.
struct Throttle {
    port: u16,
    uploaded: Arc<AtomicU64>,
}

impl Throttle {
    fn start(upstream: &str, bytes_per_sec: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let uploaded = Arc::new(AtomicU64::new(0));
        let upstream = upstream.to_string();
        let counter = uploaded.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let counter = counter.clone();
                std::thread::spawn(move || pump(client, server, Some((bytes_per_sec, counter))));
                std::thread::spawn(move || pump(s2, c2, None));
            }
        });
        Self { port, uploaded }
    }
}

/// Copies `from` to `to`; with a rate, sleeps so that the copy never runs ahead of it.
fn pump(mut from: TcpStream, mut to: TcpStream, rate: Option<(u64, Arc<AtomicU64>)>) {
    let mut buf = vec![0u8; 16 * 1024];
    let started = Instant::now();
    let mut sent = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((rate, counter)) = &rate {
            sent += n as u64;
            counter.fetch_add(n as u64, Ordering::Relaxed);
            let due = Duration::from_secs_f64(sent as f64 / *rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// The peak resident memory of `pid` so far (VmHWM), in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

#[test]
fn a_slow_sink_holds_memory_to_the_budget_and_loses_nothing() {
    // 2M generated events are ~280 MB as Arrow: more than the whole 256 MiB budget, so
    // a source that ran ahead of the 4 MB/s sink would blow through it.
    const EVENTS: u64 = 2_000_000;
    const BUDGET: u64 = 256 << 20;
    let endpoint = stack_env("AWS_ENDPOINT_URL");
    let proxy = Throttle::start(endpoint.trim_start_matches("http://"), 4_000_000);
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("s3://tributary/{}", unique("slow-sink"));
    let pipeline = write_file(
        dir.path(),
        "slow.toml",
        &format!(
            "name = \"slow\"\n[source]\nkind = \"generator\"\nevents = {EVENTS}\nrate = 0\n\
             [sink]\nuri = \"{prefix}\"\n[sink.storage]\nAWS_ENDPOINT_URL = \"http://127.0.0.1:{}\"\nAWS_ALLOW_HTTP = \"true\"\n\
             [runtime]\nmemory = \"256MiB\"\n\
             [[tables]]\nname = \"clicks\"\nfrom = \"clickstream\"\n",
            proxy.port
        ),
    );
    let started = Instant::now();
    let mut child = spawn_once(dir.path(), &pipeline);
    let mut peak = 0;
    let status = loop {
        if let Some(p) = peak_rss(child.id()) {
            peak = peak.max(p);
        }
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the run did not finish"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "run failed: {status}");
    let uploaded = proxy.uploaded.load(Ordering::Relaxed);
    // The sink was the bottleneck: the upload alone took at least half the run (79 %
    // on an idle machine; CPU contention from other tests lowers it).
    let upload_secs = uploaded as f64 / 4e6;
    assert!(
        upload_secs >= 0.5 * started.elapsed().as_secs_f64(),
        "uploads of {uploaded} bytes took {upload_secs:.1}s of a {:.1}s run: the sink was not the slow part",
        started.elapsed().as_secs_f64()
    );
    assert!(
        peak < BUDGET,
        "peak RSS {} MiB over the {} MiB budget",
        peak >> 20,
        BUDGET >> 20
    );
    let table = format!("{prefix}/clicks");
    let row = &duck(&format!(
        "SELECT count(*), count(DISTINCT event_id) FROM {}",
        scan(&table)
    ))[0];
    assert_eq!(
        (row[0].as_i64(), row[1].as_i64()),
        (Some(EVENTS as i64), Some(EVENTS as i64))
    );
    eprintln!(
        "slow sink: {EVENTS} events, {} MB uploaded at 4 MB/s in {:.1}s, peak RSS {} MiB",
        uploaded / 1_000_000,
        started.elapsed().as_secs_f64(),
        peak >> 20
    );
}

/// The changelog `changes` holds ids 1..=`n`, each once.
fn assert_ids_once(changes: &str, n: i64) {
    let row = &duck(&format!(
        "SELECT count(*), count(DISTINCT id), max(id) FROM {changes}"
    ))[0];
    assert_eq!(
        (row[0].as_i64(), row[1].as_i64(), row[2].as_i64()),
        (Some(n), Some(n), Some(n)),
        "rows, distinct ids, largest id"
    );
}

/// `--once: … stops at` lines of a JSON log: shard → end position.
fn noted_ends(log: &str) -> BTreeMap<String, i64> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("--once:"))
        })
        .map(|v| {
            let f = &v["fields"];
            (
                f["shard"].as_str().unwrap().to_string(),
                f["end"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Samples of a `/metrics` page, parsed by the Prometheus client library's parser.
pub(crate) fn prometheus(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut child = Command::new(stack_env("TRIBUTARY_PYTHON"))
        .args([
            "-c",
            "import sys, json\n\
             from prometheus_client.parser import text_string_to_metric_families\n\
             out = [[s.name, s.labels, s.value] for f in text_string_to_metric_families(sys.stdin.read()) for s in f.samples]\n\
             print(json.dumps(out))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn get(port: u16, path: &str) -> reqwest::blocking::Response {
    reqwest::blocking::get(format!("http://127.0.0.1:{port}{path}")).unwrap()
}

pub(crate) fn spawn_logged(dir: &Path, args: &[&str], log: &str) -> Child {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(log)).unwrap())
        .spawn()
        .unwrap()
}

/// SIGTERM, and how long the process took to exit.
pub(crate) fn terminate(child: &mut Child) -> (std::process::ExitStatus, Duration) {
    let asked = Instant::now();
    Command::new("kill").arg(child.id().to_string()).status().unwrap();
    (child.wait().unwrap(), asked.elapsed())
}

#[test]
fn kafka_once_stops_at_the_noted_offsets_and_sigterm_and_lag_are_clean() {
    let (topic, id) = clicks_topic("ops");
    let mut counts = produce_clicks(&topic, id, 3, 0, 30_000);
    // A producer that keeps going while the runs below start and stop.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (topic, stop) = (topic.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut all = BTreeMap::new();
            let mut next = 30_000;
            while !stop.load(Ordering::Relaxed) {
                for (p, n) in produce_clicks(&topic, id, 3, next, next + 3_000) {
                    *all.entry(p).or_insert(0) += n;
                }
                next += 3_000;
                std::thread::sleep(Duration::from_millis(100));
            }
            all
        })
    };
    std::thread::sleep(Duration::from_secs(1));

    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("s3://tributary/{}", unique("kafka-ops"));
    let pipeline = kafka_pipeline(
        dir.path(),
        "ops",
        &clicks_source(&topic, &topic),
        &prefix,
        &format!("[batch]\nmax_latency = \"300ms\"\n\n[[tables]]\nname = \"clicks\"\nfrom = \"{topic}\""),
    );
    let table = format!("{prefix}/clicks");
    let p = pipeline.to_str().unwrap();

    // --once: exactly the offsets below the high watermarks it noted at start.
    let once = tributary(dir.path(), &["--log-format", "json", "run", p, "--once"]);
    let log = String::from_utf8_lossy(&once.stderr).into_owned();
    assert!(once.status.success(), "--once failed:\n{log}");
    let ends = noted_ends(&log);
    assert_eq!(ends.len(), 3, "one noted end per partition:\n{log}");
    let per = duck(&format!(
        "SELECT _partition, count(*), count(DISTINCT _offset), max(_offset) FROM {} GROUP BY 1 ORDER BY 1",
        scan(&table)
    ));
    for row in &per {
        let shard = format!("{topic}-{}", row[0].as_i64().unwrap());
        let end = ends[&shard];
        assert!(end >= 10_000, "{shard}: noted {end} before the first 30k were in");
        let got: Vec<i64> = row[1..].iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(got, vec![end, end, end - 1], "{shard}: offsets 0..{end} exactly");
    }

    // Continuous, SIGTERM while records keep arriving: exit 0 well within the deadline.
    let mut a = spawn_logged(dir.path(), &["run", p], "a.log");
    std::thread::sleep(Duration::from_secs(5));
    let (status, took) = terminate(&mut a);
    let a_log = std::fs::read_to_string(dir.path().join("a.log")).unwrap();
    assert!(status.success(), "SIGTERM: {status}\n{a_log}");
    assert!(took < Duration::from_secs(30), "SIGTERM took {took:?}");
    assert!(a_log.contains("shutdown requested"), "{a_log}");
    let after_a = s3_count(&table);
    assert!(
        after_a > ends.values().sum::<i64>(),
        "the continuous run committed nothing"
    );

    stop.store(true, Ordering::Relaxed);
    for (p, n) in producer.join().unwrap() {
        *counts.entry(p).or_default() += n;
    }
    let total: i64 = counts.values().sum();
    assert!(
        ends.values().sum::<i64>() < total,
        "the producer added nothing after --once noted its ends"
    );

    // Restart with /metrics: it catches up, and the lag per partition drops to 0.
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut b = spawn_logged(dir.path(), &["run", p, "--metrics", &addr], "b.log");
    let deadline = Instant::now() + Duration::from_secs(120);
    let lags = loop {
        assert!(Instant::now() < deadline, "lag did not drop to 0");
        assert!(b.try_wait().unwrap().is_none(), "the run died");
        std::thread::sleep(Duration::from_millis(500));
        let Ok(resp) = reqwest::blocking::get(format!("http://{addr}/metrics")) else {
            continue;
        };
        let samples = prometheus(&resp.text().unwrap());
        let lags: BTreeMap<String, f64> = samples
            .iter()
            .filter(|(n, ..)| n == "tributary_kafka_lag_messages")
            .map(|(_, l, v)| (l["partition"].clone(), *v))
            .collect();
        if lags.len() == 3 && lags.values().all(|v| *v == 0.0) && s3_count(&table) == total {
            break (lags, samples);
        }
    };
    let (_, samples) = lags;
    let value = |name: &str| -> f64 { samples.iter().filter(|(n, ..)| n == name).map(|(.., v)| v).sum() };
    assert!(value("tributary_records_read_total") > 0.0);
    assert!(value("tributary_rows_written_total") > 0.0);
    assert!(value("tributary_end_to_end_latency_seconds_count") > 0.0);
    assert!(value("tributary_commit_duration_seconds_count") > 0.0);
    assert!(value("tributary_in_flight_limit_bytes") > 0.0);
    assert!(value("tributary_process_resident_memory_bytes") > 0.0);
    let health = get(port, "/health");
    assert_eq!(health.status(), 200);
    let health: serde_json::Value = health.json().unwrap();
    assert_eq!(health["status"], "ok", "{health}");

    // `status` agrees: every partition committed to its end, lag 0.
    let out = tributary(dir.path(), &["status", p, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let shards = status["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 3, "{status}");
    for s in shards {
        let partition: i32 = s["shard"]
            .as_str()
            .unwrap()
            .rsplit('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(s["committed"].as_i64(), Some(counts[&partition]), "{status}");
        assert_eq!(s["lag"].as_i64(), Some(0), "{status}");
    }

    let (status, _) = terminate(&mut b);
    assert!(status.success(), "{status}");
    assert_exact(&table, &counts);
}

#[test]
fn postgres_once_stops_at_the_noted_lsn_and_the_password_never_shows() {
    const PASSWORD: &str = "Zq81-do-not-print-me";
    let mut db = Db::create("ops");
    let role = crate::pg::ident("ops_role");
    db.sql(&format!(
        "CREATE ROLE {role} LOGIN SUPERUSER REPLICATION PASSWORD '{PASSWORD}'; \
         CREATE TABLE items (id bigint PRIMARY KEY, note text); \
         INSERT INTO items SELECT g, 'before' FROM generate_series(1, 1000) g;"
    ));
    let slot = db.slot();
    let dir = tempfile::tempdir().unwrap();
    let pipeline = crate::pg::pipeline(
        dir.path(),
        &db,
        &slot,
        &["public.items"],
        "[[tables]]\nname = \"items\"\nfrom = \"public.items\"\nmode = \"changelog\"\n",
    );
    // The same pipeline, connecting as the role with the password.
    let text = std::fs::read_to_string(&pipeline).unwrap();
    let base = stack_env("TRIBUTARY_PG_DSN");
    let port = base
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("port="))
        .unwrap();
    let dsn = format!(
        "host=127.0.0.1 port={port} user={role} password={PASSWORD} dbname={}",
        db.name
    );
    let start = text.find("dsn = \"").unwrap() + 7;
    let stop = start + text[start..].find('"').unwrap();
    let text = format!("{}{dsn}{}", &text[..start], &text[stop..]);
    std::fs::write(&pipeline, &text).unwrap();
    let p = pipeline.to_str().unwrap();
    let mut shown = String::new();

    // The first run takes the snapshot and creates the slot.
    let out = tributary(dir.path(), &["run", p, "--once"]);
    shown += &String::from_utf8_lossy(&out.stdout);
    shown += &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{shown}");

    // Transactions keep committing, one row each, while `--once` runs.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, dsn) = (stop.clone(), db.dsn());
        std::thread::spawn(move || {
            let mut psql = Command::new(Db::bin("psql"))
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
                .arg(&dsn)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            let mut input = psql.stdin.take().unwrap();
            let mut id = 1000;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                writeln!(input, "INSERT INTO items VALUES ({id}, 'during');").unwrap();
                input.flush().unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            drop(input);
            psql.wait().unwrap();
            id
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let once = Command::new(bin())
        .args(["--log-format", "json", "run", p, "--once"])
        .current_dir(dir.path())
        .env("TRIBUTARY_LOG", "debug")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&once.stderr).into_owned();
    shown += &log;
    shown += &String::from_utf8_lossy(&once.stdout);
    assert!(once.status.success(), "{log}");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let last_id = writer.join().unwrap();
    let end = noted_ends(&log)[&slot];

    let changes = scan(dir.path().join("lake/items").to_str().unwrap());
    let row = &duck(&format!(
        "SELECT count(*), count(DISTINCT id), max(id), max(_position) FROM {changes}"
    ))[0];
    let (n, distinct, max_id, max_pos) = (
        row[0].as_i64().unwrap(),
        row[1].as_i64().unwrap(),
        row[2].as_i64().unwrap(),
        row[3].as_i64().unwrap(),
    );
    assert_eq!((n, distinct), (max_id, max_id), "ids 1..{max_id} each once");
    assert!(
        max_id > 1000,
        "--once took none of the transactions committed before it"
    );
    assert!(
        max_pos < end,
        "a transaction committed at {max_pos} after the noted end {end}"
    );
    assert!(
        max_id < last_id,
        "--once read on past its end: {max_id} of {last_id}"
    );

    // The next run picks up exactly the rest.
    let out = tributary(dir.path(), &["run", p, "--once"]);
    shown += &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{shown}");
    assert_ids_once(&changes, last_id);

    // A continuous run whose replication connection is killed starts over from the
    // tables (the one retry policy) and loses nothing.
    let mut service = spawn_logged(dir.path(), &["run", p], "service.log");
    db.sql(&format!(
        "INSERT INTO items SELECT g, 'service' FROM generate_series({}, {}) g",
        last_id + 1,
        last_id + 500
    ));
    let killed = Instant::now();
    loop {
        let n = db.sql(&format!(
            "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active_pid IS NOT NULL"
        ));
        if n == ["1"] {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "the run never streamed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    db.sql(&format!(
        "INSERT INTO items SELECT g, 'service' FROM generate_series({}, {}) g",
        last_id + 501,
        last_id + 1000
    ));
    let last_id = last_id + 1000;
    let deadline = Instant::now() + Duration::from_secs(120);
    while duck_i64(&format!("SELECT count(*) FROM {changes}")) < last_id {
        assert!(
            Instant::now() < deadline,
            "the run did not come back after its connection was killed"
        );
        assert!(service.try_wait().unwrap().is_none(), "the run died");
        std::thread::sleep(Duration::from_millis(500));
    }
    let (status, _) = terminate(&mut service);
    let service_log = std::fs::read_to_string(dir.path().join("service.log")).unwrap();
    shown += &service_log;
    assert!(status.success(), "{service_log}");
    assert!(
        service_log.contains("transient failure: starting over"),
        "{service_log}"
    );
    assert_ids_once(&changes, last_id);

    // `status` shows the slot and its lag, human and JSON.
    for args in [vec!["status", p], vec!["status", p, "--json"]] {
        let out = tributary(dir.path(), &args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        shown += &text;
        shown += &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains(&slot), "{text}");
    }
    let out = tributary(dir.path(), &["status", p, "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let shard = &status["shards"][0];
    assert_eq!(shard["unit"], "bytes");
    assert!(shard["lag"].as_i64().is_some_and(|l| l >= 0), "{status}");
    assert!(shard["slot_confirmed"].is_string(), "{status}");

    // Errors: a wrong password and an unreachable server.
    for (from, to) in [
        (PASSWORD.to_string(), format!("{PASSWORD}-wrong")),
        (format!("port={port} "), "port=1 ".to_string()),
    ] {
        std::fs::write(&pipeline, text.replacen(&from, &to, 1)).unwrap();
        for args in [vec!["run", p, "--once"], vec!["status", p]] {
            let out = tributary(dir.path(), &args);
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if args[0] == "run" {
                assert!(!out.status.success(), "{said}");
            }
            shown += &said;
        }
    }
    std::fs::write(&pipeline, &text).unwrap();
    assert!(shown.len() > 1000, "too little output to judge:\n{shown}");
    assert!(
        !shown.contains(PASSWORD.split('-').next().unwrap()),
        "the password was printed:\n{shown}"
    );
}

#[test]
fn a_last_commit_past_the_shutdown_timeout_exits_1_and_a_restart_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = |timeout: &str| {
        write_file(
            dir.path(),
            "deadline.toml",
            &format!(
                "name = \"deadline\"\n[source]\nkind = \"generator\"\nrate = 20000\n\
                 [sink]\nuri = \"./lake\"\n[batch]\nmax_latency = \"500ms\"\n\
                 [runtime]\nshutdown_timeout = \"{timeout}\"\n\
                 [[tables]]\nname = \"clicks\"\nfrom = \"clickstream\"\n"
            ),
        )
    };
    let p = pipeline("1s");
    let p = p.to_str().unwrap();
    // Every commit entry is held back 4s: the commit under way when SIGTERM comes
    // cannot finish within the 1s deadline.
    let mut slow = Command::new(bin())
        .args(["run", p])
        .current_dir(dir.path())
        .env("TRIBUTARY_FAILPOINT", "delay_commit:4000")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("slow.log")).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let (status, took) = terminate(&mut slow);
    let log = std::fs::read_to_string(dir.path().join("slow.log")).unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        took < Duration::from_secs(3),
        "the deadline was not kept: {took:?}\n{log}"
    );
    assert!(log.contains("runtime.shutdown_timeout (1s)"), "{log}");

    // A restart resumes at the last commit; with time to finish, SIGTERM exits 0.
    let p = pipeline("30s");
    let mut ok = spawn_logged(dir.path(), &["run", p.to_str().unwrap()], "ok.log");
    std::thread::sleep(Duration::from_secs(3));
    let (status, _) = terminate(&mut ok);
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(dir.path().join("ok.log")).unwrap()
    );
    let table = dir.path().join("lake/clicks");
    let row = &duck(&format!(
        "SELECT count(*), count(DISTINCT event_id) FROM {}",
        scan(table.to_str().unwrap())
    ))[0];
    assert!(row[0].as_i64().unwrap() > 0);
    assert_eq!(row[0], row[1], "no event twice");
}
