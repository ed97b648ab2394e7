"""The hand-written consumer bench/kafka.sh compares Tributary with: confluent-kafka
(librdkafka, the same consumer settings Tributary uses), fastavro to decode each
Confluent-framed record with its writer schema from the registry, and Python
`deltalake` to append micro-batches of 200k rows (Tributary's bench batch size) to a
Delta table on S3. No exactly-once bookkeeping, no validation beyond fastavro's:
the simplest thing that lands the topic in Delta.

    python bench/kafka_python.py TOPIC EVENTS s3://bucket/table

Prints one JSON line: {"rows": n, "seconds": s, "cpu_seconds": c}.
"""
import io
import json
import os
import resource
import struct
import sys
import time
import urllib.request

import fastavro
import pyarrow as pa
from confluent_kafka import Consumer, TopicPartition
from deltalake import write_deltalake

BATCH_ROWS = 200_000


def main():
    topic, events, uri = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    registry = os.environ["SCHEMA_REGISTRY_URL"]
    storage = {
        "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"],
        "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
        "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1"),
        "AWS_ALLOW_HTTP": "true",
    }
    schemas = {}

    def writer_schema(schema_id):
        s = schemas.get(schema_id)
        if s is None:
            with urllib.request.urlopen(f"{registry}/schemas/ids/{schema_id}") as r:
                s = fastavro.parse_schema(json.loads(json.load(r)["schema"]))
            schemas[schema_id] = s
        return s

    consumer = Consumer(
        {
            "bootstrap.servers": os.environ["KAFKA_BROKERS"],
            "group.id": f"{topic}-python",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
            "fetch.queue.backoff.ms": 0,
        }
    )
    meta = consumer.list_topics(topic, timeout=30)
    partitions = sorted(meta.topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, -2) for p in partitions])

    started = time.monotonic()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    rows, n = [], 0
    while n < events:
        for m in consumer.consume(num_messages=10_000, timeout=5.0):
            if m.error() or m.value() is None:
                continue
            value = m.value()
            magic, schema_id = struct.unpack(">bI", value[:5])
            record = fastavro.schemaless_reader(io.BytesIO(value[5:]), writer_schema(schema_id), None)
            record["_partition"] = m.partition()
            record["_offset"] = m.offset()
            rows.append(record)
            n += 1
            if len(rows) >= BATCH_ROWS:
                write_deltalake(uri, pa.Table.from_pylist(rows), mode="append", storage_options=storage)
                rows = []
    if rows:
        write_deltalake(uri, pa.Table.from_pylist(rows), mode="append", storage_options=storage)
    seconds = time.monotonic() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    consumer.close()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    print(json.dumps({"rows": n, "seconds": seconds, "cpu_seconds": cpu}))


if __name__ == "__main__":
    main()
