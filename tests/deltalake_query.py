"""Runs SQL read from stdin over Delta tables with Python `deltalake` (delta-rs's own
reader; its QueryBuilder applies deletion vectors) and prints the rows as JSON.
Arguments are NAME=URI pairs registered as tables; S3 goes to AWS_ENDPOINT_URL."""
import json
import os
import sys

import pyarrow as pa
from deltalake import DeltaTable, QueryBuilder

storage = {}
if os.environ.get("AWS_ENDPOINT_URL"):
    for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ALLOW_HTTP"):
        if os.environ.get(k):
            storage[k] = os.environ[k]

qb = QueryBuilder()
for arg in sys.argv[1:]:
    name, uri = arg.split("=", 1)
    qb = qb.register(name, DeltaTable(uri, storage_options=storage if uri.startswith("s3://") else None))
table = pa.table(qb.execute(sys.stdin.read()).read_all())
print(json.dumps([list(r.values()) for r in table.to_pylist()], default=str))
