//! End-to-end latency at a steady Kafka rate: a producer paced at `RATE` events/s for
//! `DURATION` seconds into a 3-partition topic, a continuous `tributary run` into Delta on moto
//! S3, then SIGTERM. Prints the table URI, the run's peak RSS and what its own
//! `/metrics` said; `bench/delta_latency.py` measures the latency from the table
//! (Kafka timestamp → commit time of the Delta version holding the row).
//!
//! Needs the local stack and the release binary; run with `bench/latency.sh`.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use apache_avro::Schema;
use common::{PARTITIONS, env, frames};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

fn number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The sum of the samples of `name` on a `/metrics` page.
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn peak_rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap()
        / 1024
}

fn main() {
    let rate = number("RATE", 50_000);
    let seconds = number("DURATION", 60);
    let brokers = env("KAFKA_BROKERS");
    let registry = env("SCHEMA_REGISTRY_URL");
    let text = std::fs::read_to_string("schemas/clickstream.avsc").unwrap();
    let schema = Schema::parse_str(&text).unwrap();
    let topic = format!("bench-steady-{}", std::process::id());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = common::topic(&rt, &brokers, &registry, &topic, &text);
    // Distinct frames are encoded up front so that pacing, not encoding, sets the rate.
    let sample = frames(&schema, id, 100_000);

    let dir = std::env::temp_dir().join(&topic);
    std::fs::create_dir_all(&dir).unwrap();
    let pipeline = dir.join("p.toml");
    let uri = format!("s3://tributary/{topic}");
    // `EXTRA` is appended to the pipeline file (e.g. "[sink.compaction]\nenabled = false").
    let extra = std::env::var("EXTRA").unwrap_or_default().replace("\\n", "\n");
    std::fs::write(
        &pipeline,
        format!(
            "name = \"steady\"\n[source]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopics = [\"{topic}\"]\n\
             group_id = \"{topic}\"\nformat = \"avro\"\nschema_registry = \"{registry}\"\n\
             [sink]\nuri = \"{uri}\"\n[sink.storage]\nAWS_ENDPOINT_URL = \"${{AWS_ENDPOINT_URL}}\"\n\
             AWS_ACCESS_KEY_ID = \"${{AWS_ACCESS_KEY_ID}}\"\nAWS_SECRET_ACCESS_KEY = \"${{AWS_SECRET_ACCESS_KEY}}\"\n\
             AWS_REGION = \"${{AWS_REGION}}\"\nAWS_ALLOW_HTTP = \"true\"\n\
             [[tables]]\nname = \"clicks\"\nfrom = \"{topic}\"\n{extra}\n"
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bin = std::env::var("TRIBUTARY_BIN").unwrap_or_else(|_| "target/release/tributary".into());
    let mut run = Command::new(&bin)
        .args([
            "run",
            pipeline.to_str().unwrap(),
            "--metrics",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("run.log")).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));

    // --- a steady rate: every 10 ms, the events due by then ------------------------------
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let total = rate * seconds;
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            let f = &sample[(sent % sample.len() as u64) as usize];
            let rec = BaseRecord::<'_, [u8], [u8]>::to(&topic)
                .partition((sent % PARTITIONS as u64) as i32)
                .payload(f);
            if producer.send(rec).is_err() {
                break;
            }
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    let produced_in = started.elapsed();

    // --- wait for the tail, then SIGTERM ---------------------------------------------------
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(120);
    let page = loop {
        let page = rt
            .block_on(async { reqwest::get(&metrics_url).await?.text().await })
            .unwrap_or_default();
        if metric(&page, "tributary_rows_written_total") as u64 >= total || Instant::now() > deadline {
            break page;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let rss = peak_rss_mib(run.id());
    Command::new("kill").arg(run.id().to_string()).status().unwrap();
    assert!(
        run.wait().unwrap().success(),
        "see {}",
        dir.join("run.log").display()
    );
    let written = metric(&page, "tributary_rows_written_total") as u64;
    assert_eq!(written, total, "the run did not catch up");
    let e2e_sum = metric(&page, "tributary_end_to_end_latency_seconds_sum");
    let e2e_count = metric(&page, "tributary_end_to_end_latency_seconds_count");
    let commits = metric(&page, "tributary_commits_total");
    let _ = std::fs::remove_dir_all(&dir);
    println!("uri={uri}");
    println!("events={total}");
    println!("achieved_rate={:.0}", total as f64 / produced_in.as_secs_f64());
    println!("peak_rss_mib={rss}");
    println!("commits={commits}");
    println!(
        "metrics_mean_latency_ms={:.0}",
        1000.0 * e2e_sum / e2e_count.max(1.0)
    );
}
