//! Kafka → Delta throughput for the clickstream schema, beside its limits:
//! - decode only: Confluent frames → Arrow with the direct decoder Tributary uses,
//!   and with apache-avro `Value`s appended to Arrow builders (the alternative);
//! - drain: an rdkafka consumer reading the topic and doing nothing else, with the
//!   settings Tributary uses (the limit) and with librdkafka's defaults;
//! - a hand-written Python consumer (confluent-kafka + fastavro + `deltalake` append,
//!   bench/kafka_python.py) into Delta on moto S3;
//! - end to end: `tributary run --once` from the topic into Delta on moto S3, with its
//!   CPU time and peak RSS, and every row counted back by DuckDB.
//!
//! With `FORMAT=json` the topic holds the same events as JSON text (RFC 3339 times),
//! decode-only measures arrow-json against the schema file, and there is no Python row.
//!
//! Needs the local stack (`infra/up.sh`, `source infra/env.sh`) and the release binary.
//! Run with `bench/kafka.sh`; results go to BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apache_avro::Schema;
use apache_avro::types::Value;
use deltalake::arrow::array::{ArrayRef, RecordBatch, StringBuilder, TimestampMicrosecondBuilder};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use tributary::decode::confluent::{ConfluentDecoder, FixedSchemas, Frames};
use tributary::decode::json::{JsonDecoder, json_schema};

mod common;
use common::{PARTITIONS, click, click_json, env, frames};

/// Decodes JSON messages with the decoder Tributary uses; returns the rows kept.
fn decode_json(reader: &str, all: &[Vec<u8>]) -> usize {
    let schema = json_schema(&ConfluentDecoder::new(reader, 1).unwrap().schema());
    let d = JsonDecoder::new(schema, false, 8192).unwrap();
    let mut rows = 0;
    for chunk in all.chunks(8192) {
        let mut frames = Frames::default();
        for f in chunk {
            frames.push(f);
        }
        let which: Vec<usize> = (0..frames.len()).collect();
        rows += d.decode(&frames, &which).unwrap().batch.num_rows();
    }
    rows
}

fn rate(n: u64, d: Duration) -> String {
    let r = n as f64 / d.as_secs_f64();
    let s = format!("{r:.0}");
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// apache-avro `Value`s appended to Arrow builders: the per-value alternative.
fn decode_values(writer: &Schema, all: &[Vec<u8>]) -> usize {
    let reader = apache_avro::reader::datum::GenericDatumReader::builder(writer)
        .build()
        .unwrap();
    let mut rows = 0;
    for chunk in all.chunks(32_768) {
        let mut strings: Vec<StringBuilder> = (0..7).map(|_| StringBuilder::new()).collect();
        let mut ts = TimestampMicrosecondBuilder::new();
        for f in chunk {
            let v = reader.read_value(&mut &f[5..]).unwrap();
            let Value::Record(fields) = v else {
                panic!("not a record")
            };
            for (i, (_, v)) in fields.into_iter().enumerate() {
                match v {
                    Value::String(s) => strings[i.min(6)].append_value(s),
                    Value::Uuid(u) => strings[0].append_value(u.to_string()),
                    Value::TimestampMicros(t) => ts.append_value(t),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        let mut cols: Vec<ArrayRef> = strings
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        cols.push(Arc::new(ts.finish()));
        let batch =
            RecordBatch::try_from_iter(cols.into_iter().enumerate().map(|(i, c)| (format!("c{i}"), c)))
                .unwrap();
        rows += batch.num_rows();
    }
    rows
}

fn decode_direct(reader: &str, id: u32, writer: &str, all: &[Vec<u8>]) -> usize {
    let mut d = ConfluentDecoder::new(reader, 32_768).unwrap();
    let mut schemas = FixedSchemas(HashMap::from([(id, writer.to_string())]));
    let mut rows = 0;
    for chunk in all.chunks(32_768) {
        let mut fr = Frames::default();
        for f in chunk {
            fr.push(f);
        }
        let out = d.decode(&fr, 0..fr.len(), &mut schemas).unwrap();
        assert!(out.rejected.is_empty());
        rows += out.batch.num_rows();
    }
    rows
}

/// The hand-written Python consumer over the topic: seconds and cores.
fn python_consumer(python: &str, topic: &str, events: u64) -> (Duration, f64) {
    let out = std::process::Command::new(python)
        .args([
            "bench/kafka_python.py",
            topic,
            &events.to_string(),
            &format!("s3://tributary/{topic}-python"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let py: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let py_secs = Duration::from_secs_f64(py["seconds"].as_f64().unwrap());
    let py_cpu = py["cpu_seconds"].as_f64().unwrap() / py_secs.as_secs_f64();
    assert_eq!(py["rows"].as_u64(), Some(events));
    (py_secs, py_cpu)
}

fn main() {
    let events: u64 = std::env::var("EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let json = std::env::var("FORMAT").is_ok_and(|f| f == "json");
    let text = std::fs::read_to_string("schemas/clickstream.avsc").unwrap();
    let schema = Schema::parse_str(&text).unwrap();

    // --- decode only ------------------------------------------------------------------
    let sample = if json {
        (0..200_000).map(click_json).collect()
    } else {
        frames(&schema, 1, 200_000)
    };
    let t = Instant::now();
    if json {
        assert_eq!(decode_json(&text, &sample), sample.len());
    } else {
        assert_eq!(decode_direct(&text, 1, &text, &sample), sample.len());
    }
    let direct = t.elapsed();
    let t = Instant::now();
    if !json {
        assert_eq!(decode_values(&schema, &sample), sample.len());
    }
    let values = t.elapsed();

    // --- produce the topic ------------------------------------------------------------
    let brokers = env("KAFKA_BROKERS");
    let registry = env("SCHEMA_REGISTRY_URL");
    let topic = format!("bench-clicks-{}", std::process::id());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = common::topic(&rt, &brokers, &registry, &topic, &text);
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let t = Instant::now();
    for i in 0..events {
        let f = if json {
            click_json(i)
        } else {
            let mut f = vec![0u8];
            f.extend_from_slice(&id.to_be_bytes());
            f.extend(
                apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
                    .build()
                    .unwrap()
                    .write_value_to_vec(click(i))
                    .unwrap(),
            );
            f
        };
        let mut rec = BaseRecord::<'_, [u8], [u8]>::to(&topic)
            .partition((i % PARTITIONS as u64) as i32)
            .payload(&f);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    let produce = t.elapsed();

    // --- raw drain: the limit, and with librdkafka's defaults -------------------------
    let drain = |group: &str, tuned: bool| {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("{topic}-{group}"))
            .set("fetch.wait.max.ms", "10")
            .set("enable.auto.commit", "false");
        if tuned {
            config.set("fetch.queue.backoff.ms", "0");
        }
        let consumer: BaseConsumer = config.create().unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(&topic, p, Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let t = Instant::now();
        let (mut n, mut bytes) = (0u64, 0usize);
        while n < events {
            if let Some(m) = consumer.poll(Duration::from_secs(5)) {
                bytes += rdkafka::Message::payload(&m.unwrap()).map_or(0, <[u8]>::len);
                n += 1;
            }
        }
        (t.elapsed(), bytes)
    };
    let (drain_tuned, bytes) = drain("drain", true);
    let (drain_default, _) = drain("drain-default", false);

    // --- the hand-written Python consumer (Avro only) -----------------------------------
    let python = std::env::var("TRIBUTARY_PYTHON").unwrap_or_else(|_| "python3".into());
    let (py_secs, py_cpu) = if json {
        (Duration::ZERO, 0.0)
    } else {
        python_consumer(&python, &topic, events)
    };

    // --- end to end ---------------------------------------------------------------------
    // One run into its own table (`{topic}-{run}`, read from the start by a group of its
    // own), with `batch` added to the pipeline's `[batch]`: time, cores, peak RSS.
    let end_to_end = |run: &str, batch: &str, failpoint: &str| {
        let table = format!("{topic}-{run}");
        let dir = std::env::temp_dir().join(&table);
        std::fs::create_dir_all(&dir).unwrap();
        let pipeline = dir.join("p.toml");
        let format = if json {
            format!(
                "format = \"json\"\nschema = \"{}\"",
                std::fs::canonicalize("schemas/clickstream.avsc")
                    .unwrap()
                    .display()
            )
        } else {
            format!("format = \"avro\"\nschema_registry = \"{registry}\"")
        };
        std::fs::write(
        &pipeline,
        format!(
            "name = \"bench\"\n[source]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopics = [\"{topic}\"]\n\
             group_id = \"{table}\"\n{format}\n\
             [sink]\nuri = \"s3://tributary/{table}\"\n[sink.storage]\nAWS_ENDPOINT_URL = \"${{AWS_ENDPOINT_URL}}\"\n\
             AWS_ACCESS_KEY_ID = \"${{AWS_ACCESS_KEY_ID}}\"\nAWS_SECRET_ACCESS_KEY = \"${{AWS_SECRET_ACCESS_KEY}}\"\n\
             AWS_REGION = \"${{AWS_REGION}}\"\nAWS_ALLOW_HTTP = \"true\"\n[batch]\nmax_rows = 200000\n{batch}\n\
             [[tables]]\nname = \"clicks\"\nfrom = \"{topic}\"\n"
        ),
    )
    .unwrap();
        let bin = std::env::var("TRIBUTARY_BIN").unwrap_or_else(|_| "target/release/tributary".into());
        let t = Instant::now();
        let mut child = std::process::Command::new(&bin)
            .args(["run", pipeline.to_str().unwrap(), "--once"])
            .env("TRIBUTARY_FAILPOINT", failpoint)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // CPU ticks and peak RSS, sampled until the process exits.
        let (mut ticks, mut peak_kib) = (0u64, 0u64);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", child.id())) {
                let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
                // utime and stime are fields 14 and 15; after the command, 12 and 13 here.
                ticks = fields
                    .get(11)
                    .and_then(|f| f.parse::<u64>().ok())
                    .unwrap_or(ticks)
                    + fields.get(12).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
            }
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
                && let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:"))
            {
                peak_kib = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(peak_kib);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let e2e = t.elapsed();
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(status.success(), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
        // Every row, counted by DuckDB from the table.
        let mut duck = std::process::Command::new(&python)
            .arg("tests/duckdb_query.py")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(
        duck.stdin.as_mut().unwrap(),
        format!("SELECT count(*), count(DISTINCT (_partition, _offset)) FROM delta_scan('s3://tributary/{table}/clicks')").as_bytes(),
    )
    .unwrap();
        drop(duck.stdin.take());
        let counted = duck.wait_with_output().unwrap();
        let counted: serde_json::Value = serde_json::from_slice(&counted.stdout).unwrap();
        assert_eq!(
            counted[0][0].as_u64(),
            Some(events),
            "rows in the table: {counted}"
        );
        assert_eq!(
            counted[0][1].as_u64(),
            Some(events),
            "distinct offsets: {counted}"
        );
        let cores = ticks as f64 / 100.0 / e2e.as_secs_f64();
        (e2e, cores, peak_kib)
    };
    // Runs alternate, and each figure is the median of its three.
    // The same against a distant object store: every log entry held back 100 ms (S3
    // across regions, or a conditional PUT under load), where the commit's round trip
    // is a larger part of it than on loopback.
    const DISTANT: &str = "delay_commit:100";
    let (mut pipelined, mut serial, mut distant, mut distant_serial) = (vec![], vec![], vec![], vec![]);
    for i in 0..3 {
        pipelined.push(end_to_end(&format!("p{i}"), "", ""));
        serial.push(end_to_end(&format!("s{i}"), "pipelined = false", ""));
        distant.push(end_to_end(&format!("dp{i}"), "", DISTANT));
        distant_serial.push(end_to_end(&format!("ds{i}"), "pipelined = false", DISTANT));
    }
    let median = |mut runs: Vec<(Duration, f64, u64)>| {
        runs.sort_by_key(|r| r.0);
        runs[1]
    };
    let (e2e, cores, peak_kib) = median(pipelined);
    let (serial_e2e, serial_cores, serial_kib) = median(serial);
    let (distant_e2e, distant_cores, distant_kib) = median(distant);
    let (distant_serial_e2e, distant_serial_cores, distant_serial_kib) = median(distant_serial);

    println!(
        "| Stage ({events} clickstream events as {}, {PARTITIONS} partitions, {:.0} B/record) | Time | Events/s |",
        if json { "JSON" } else { "Avro" },
        bytes as f64 / events as f64
    );
    println!("|---|---:|---:|");
    if json {
        println!(
            "| Decode only, JSON → Arrow (arrow-json against the .avsc), 200k messages | {:.2} s | {} |",
            direct.as_secs_f64(),
            rate(sample.len() as u64, direct)
        );
    } else {
        println!(
            "| Decode only, direct Avro → Arrow (arrow-avro + frame check), 200k frames | {:.2} s | {} |",
            direct.as_secs_f64(),
            rate(sample.len() as u64, direct)
        );
        println!(
            "| Decode only, apache-avro `Value`s → Arrow builders, 200k frames | {:.2} s | {} |",
            values.as_secs_f64(),
            rate(sample.len() as u64, values)
        );
    }
    println!(
        "| Produce (rdkafka, acks=1) | {:.2} s | {} |",
        produce.as_secs_f64(),
        rate(events, produce)
    );
    println!(
        "| Raw drain: rdkafka consumer, no work, `fetch.queue.backoff.ms=0` (the limit) | {:.2} s | {} |",
        drain_tuned.as_secs_f64(),
        rate(events, drain_tuned)
    );
    println!(
        "| Raw drain: rdkafka consumer, no work, librdkafka defaults | {:.2} s | {} |",
        drain_default.as_secs_f64(),
        rate(events, drain_default)
    );
    if !json {
        println!(
            "| Python: confluent-kafka + fastavro + `deltalake` append (same consumer settings), {py_cpu:.2} cores | {:.2} s | {} |",
            py_secs.as_secs_f64(),
            rate(events, py_secs)
        );
    }
    println!(
        "| Tributary `run --once`, `[batch] pipelined = false` (one micro-batch at a time), {serial_cores:.2} cores, peak RSS {} MiB | {:.2} s | {} |",
        serial_kib / 1024,
        serial_e2e.as_secs_f64(),
        rate(events, serial_e2e)
    );
    println!(
        "| Tributary `run --once`: Kafka → Delta on moto S3 (startup included), {cores:.2} cores, peak RSS {} MiB | {:.2} s | {} |",
        peak_kib / 1024,
        e2e.as_secs_f64(),
        rate(events, e2e)
    );
    println!(
        "| Tributary, every log entry 100 ms slow (`TRIBUTARY_FAILPOINT={DISTANT}`), one micro-batch at a time, {distant_serial_cores:.2} cores, peak RSS {} MiB | {:.2} s | {} |",
        distant_serial_kib / 1024,
        distant_serial_e2e.as_secs_f64(),
        rate(events, distant_serial_e2e)
    );
    println!(
        "| Tributary, every log entry 100 ms slow, pipelined, {distant_cores:.2} cores, peak RSS {} MiB | {:.2} s | {} |",
        distant_kib / 1024,
        distant_e2e.as_secs_f64(),
        rate(events, distant_e2e)
    );
    println!();
    println!(
        "Pipelined against one micro-batch at a time: {:.2}× on loopback moto, {:.2}× with 100 ms log entries.",
        serial_e2e.as_secs_f64() / e2e.as_secs_f64(),
        distant_serial_e2e.as_secs_f64() / distant_e2e.as_secs_f64()
    );
    if json {
        println!(
            "Tributary (pipelined, loopback): {:.0} % of the raw drain (medians of 3 runs of each kind, alternating); DuckDB counted {events} rows, each offset once, in every run.",
            100.0 * drain_tuned.as_secs_f64() / e2e.as_secs_f64(),
        );
    } else {
        println!(
            "Tributary (pipelined, loopback): {:.0} % of the raw drain, {:.1}× the Python consumer (medians of 3 runs of each kind, alternating); DuckDB counted {events} rows, each offset once, in every run.",
            100.0 * drain_tuned.as_secs_f64() / e2e.as_secs_f64(),
            py_secs.as_secs_f64() / e2e.as_secs_f64(),
        );
    }
}
