//! Kafka and registry helpers: topics on the local tansu broker, Confluent-framed Avro
//! produced with librdkafka and apache-avro (independent of Tributary's decoder), and a
//! private registry process per test that needs one.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apache_avro::Schema;
use apache_avro::types::Value;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::support::*;

pub fn brokers() -> String {
    stack_env("KAFKA_BROKERS")
}

/// Creates `topic` with `partitions` partitions (tansu does not auto-create).
pub fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let res = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .unwrap();
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

/// A producer that fails the test on any delivery error.
pub struct Produce {
    producer: ThreadedProducer<DefaultProducerContext>,
}

impl Produce {
    pub fn new() -> Self {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "1000000")
            .set("acks", "all")
            .create()
            .unwrap();
        Self { producer }
    }

    pub fn send(&self, topic: &str, partition: i32, key: Option<&[u8]>, payload: Option<&[u8]>) {
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).partition(partition);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        if let Some(p) = payload {
            rec = rec.payload(p);
        }
        let mut rec = rec;
        loop {
            match self.producer.send(rec) {
                Ok(()) => return,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => panic!("produce: {e}"),
            }
        }
    }

    pub fn flush(&self) {
        self.producer.flush(Duration::from_secs(60)).unwrap();
        assert_eq!(self.producer.in_flight_count(), 0, "undelivered records");
    }
}

/// The offsets group `group` has committed in Kafka for `topic`'s partitions (what lag
/// tools read).
pub fn committed_offsets(group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..partitions)
        .map(|p| {
            got.find_partition(topic, p)
                .and_then(|e| e.offset().to_raw())
                .unwrap_or(-1)
        })
        .collect()
}

/// A Confluent frame: magic, schema id, datum.
pub fn frame(id: u32, schema: &Schema, value: Value) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend(
        apache_avro::writer::datum::GenericDatumWriter::builder(schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap(),
    );
    out
}

/// A registry process of its own (private store), stopped on drop.
pub struct RegistryProcess {
    pub url: String,
    child: Child,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RegistryProcess {
    pub fn start(store: &str, port: u16) -> Self {
        Self::start_with(store, port, &[], None)
    }

    /// With more arguments (`--tls-cert` makes the URL https://localhost), its log
    /// written to `log` when given.
    pub fn start_with(store: &str, port: u16, args: &[&str], log: Option<&Path>) -> Self {
        Self::start_with_env(store, port, args, log, &[])
    }

    /// As [`RegistryProcess::start_with`], with variables added to its environment.
    pub fn start_with_env(
        store: &str,
        port: u16,
        args: &[&str],
        log: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Self {
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            None => Stdio::inherit(),
        };
        let child = Command::new(bin())
            .args([
                "registry",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--store",
                store,
            ])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let url = if args.contains(&"--tls-cert") {
            format!("https://localhost:{port}")
        } else {
            format!("http://127.0.0.1:{port}")
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { url, child }
    }

    /// SIGKILL: nothing gets flushed on the way out.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Registers `schema` under `subject` at `url`, returning its id.
pub fn register(url: &str, subject: &str, schema: &str) -> u32 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(tributary::registry::client::Client::new(url).register(subject, schema))
        .unwrap()
}

/// A Kafka pipeline file writing to `sink`.
pub fn kafka_pipeline(dir: &Path, name: &str, source: &str, sink: &str, tables: &str) -> std::path::PathBuf {
    let s3 = if sink.starts_with("s3://") {
        "[sink.storage]\nAWS_ENDPOINT_URL = \"${AWS_ENDPOINT_URL}\"\nAWS_ACCESS_KEY_ID = \"${AWS_ACCESS_KEY_ID}\"\n\
         AWS_SECRET_ACCESS_KEY = \"${AWS_SECRET_ACCESS_KEY}\"\nAWS_REGION = \"${AWS_REGION}\"\nAWS_ALLOW_HTTP = \"true\"\n"
    } else {
        ""
    };
    write_file(
        dir,
        &format!("{name}.toml"),
        &format!(
            "name = \"{name}\"\n\n[source]\nkind = \"kafka\"\nbrokers = \"{}\"\n{source}\n\n[sink]\nuri = \"{sink}\"\n{s3}\n{tables}\n",
            brokers()
        ),
    )
}
