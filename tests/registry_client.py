"""Drives Tributary's schema registry with Confluent's own Python client, then produces
Confluent-framed Avro records with its AvroSerializer. Prints what it produced as JSON
(the independent truth the Rust test checks the Delta table against).

usage: registry_client.py REGISTRY_URL BROKERS TOPIC
REGISTRY_CLIENT_CONF (JSON), when set, adds client settings such as
basic.auth.user.info and ssl.ca.location."""
import json
import os
import sys

from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

url, brokers, topic = sys.argv[1:4]
subject = f"{topic}-value"
client = SchemaRegistryClient({"url": url, **json.loads(os.environ.get("REGISTRY_CLIENT_CONF", "{}"))})

V1 = {"type": "record", "name": "Click", "namespace": "t",
      "fields": [{"name": "user", "type": "long"}, {"name": "page", "type": "string"}]}
# Adds an optional field with a default: BACKWARD compatible.
V2 = {**V1, "fields": V1["fields"] + [{"name": "ref", "type": ["null", "string"], "default": None}]}
# Adds a required field: a V3 reader cannot read V2 data.
V3 = {**V1, "fields": V2["fields"] + [{"name": "campaign", "type": "string"}]}


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")


id1 = client.register_schema(subject, Schema(json.dumps(V1), "AVRO"))
check(client.register_schema(subject, Schema(json.dumps(V1), "AVRO")) == id1, "same schema, same id")
check(client.test_compatibility(subject, Schema(json.dumps(V2), "AVRO")), "V2 is compatible")
id2 = client.register_schema(subject, Schema(json.dumps(V2), "AVRO"))
check(id2 != id1, "a new schema gets a new id")
check(not client.test_compatibility(subject, Schema(json.dumps(V3), "AVRO")), "V3 is not compatible")
try:
    client.register_schema(subject, Schema(json.dumps(V3), "AVRO"))
    raise SystemExit("FAILED: an incompatible schema was accepted")
except SchemaRegistryError as e:
    check(e.http_status_code == 409 and e.error_code == 409, f"409 for incompatible, got {e}")

latest = client.get_latest_version(subject)
check(latest.version == 2 and latest.schema_id == id2, f"latest is version 2: {latest}")
check(client.get_versions(subject) == [1, 2], "versions 1 and 2")
check(json.loads(client.get_schema(id1).schema_str) == V1, "schema by id")
check(client.lookup_schema(subject, Schema(json.dumps(V1), "AVRO")).version == 1, "lookup")
try:
    client.get_latest_version(f"{topic}-missing")
    raise SystemExit("FAILED: a missing subject was found")
except SchemaRegistryError as e:
    check(e.http_status_code == 404 and e.error_code == 40401, f"40401, got {e}")

# Levels: a subject of its own set to NONE accepts V3 after V1; FORWARD refuses V1
# after V3 (a V3 reader needs `campaign`).
other = f"{topic}-levels"
client.set_compatibility(other, "NONE")
check(client.get_compatibility(other) == "NONE", "subject level NONE")
client.register_schema(other, Schema(json.dumps(V1), "AVRO"))
client.register_schema(other, Schema(json.dumps(V3), "AVRO"))
client.set_compatibility(other, "FORWARD")
try:
    client.register_schema(other, Schema(json.dumps(V2), "AVRO"))
    raise SystemExit("FAILED: FORWARD accepted a schema V3 cannot be read into")
except SchemaRegistryError as e:
    check(e.error_code == 409, f"409 under FORWARD, got {e}")
check(client.delete_subject(other) == [1, 2], "soft delete lists the versions")
check(client.delete_subject(other, permanent=True) == [1, 2], "then permanent delete")

# Produce with both schemas, as a producer mid-migration would.
conf = {"auto.register.schemas": False, "use.latest.version": False}
ser1 = AvroSerializer(client, json.dumps(V1), conf=conf)
ser2 = AvroSerializer(client, json.dumps(V2), conf=conf)
producer = Producer({"bootstrap.servers": brokers, "linger.ms": 5})
ctx = SerializationContext(topic, MessageField.VALUE)
n, sum_user, with_ref = 0, 0, 0
for i in range(2000):
    if i % 3 == 0:
        value = ser1({"user": i, "page": f"/p/{i % 17}"}, ctx)
    else:
        ref = None if i % 5 == 0 else f"r{i}"
        value = ser2({"user": i, "page": f"/p/{i % 17}", "ref": ref}, ctx)
        with_ref += ref is not None
    producer.produce(topic, value=value, partition=0)
    n += 1
    sum_user += i
    if i % 500 == 0:
        producer.poll(0)
check(producer.flush(30) == 0, "every record delivered")
print(json.dumps({"records": n, "sum_user": sum_user, "with_ref": with_ref}))
