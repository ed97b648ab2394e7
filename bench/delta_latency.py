"""End-to-end latency of a Tributary table: for every row, the Delta commit time of
the version that first added its file minus the row's source time (`_commit_ts` for
Postgres, `_timestamp` for Kafka). A deletion-vector mirror adds a file again when it
marks rows of it deleted, and compaction rewrites rows into new files
(`dataChange: false`); only the first add wrote the rows. Prints p50/p99/max over
rows, of those whose source time is at or after SINCE_MS when given. With BUCKET_S set,
also per BUCKET_S seconds of source time, from the first row.

    delta_latency.py TABLE [COLUMN [SINCE_MS]]      TABLE: a folder or s3://bucket/prefix
    BUCKET_S=30 delta_latency.py TABLE _timestamp
"""
import json
import os
import sys
import tempfile

import duckdb

table = sys.argv[1].rstrip("/")
column = sys.argv[2] if len(sys.argv) > 2 else "_commit_ts"
since = int(sys.argv[3]) if len(sys.argv) > 3 else None

if table.startswith("s3://"):
    import boto3

    bucket, _, prefix = table[len("s3://"):].partition("/")
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])

    def log_entries():
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/_delta_log/")
        keys = sorted(o["Key"] for p in pages for o in p.get("Contents", []) if o["Key"].endswith(".json"))
        for key in keys:
            yield s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()

    scratch = tempfile.mkdtemp()

    def local(path):
        out = os.path.join(scratch, "f.parquet")
        s3.download_file(bucket, f"{prefix}/{path}", out)
        return out
else:
    def log_entries():
        folder = os.path.join(table, "_delta_log")
        for name in sorted(n for n in os.listdir(folder) if n.endswith(".json")):
            with open(os.path.join(folder, name)) as f:
                yield f.read()

    def local(path):
        return os.path.join(table, path)

file_time = {}
for text in log_entries():
    ts, adds = None, []
    for line in text.splitlines():
        action = json.loads(line)
        if "commitInfo" in action:
            ts = action["commitInfo"].get("timestamp")
        # Compaction re-adds rows already committed (`dataChange: false`): only the
        # first add of a row counts.
        if "add" in action and action["add"].get("dataChange", True):
            adds.append(action["add"]["path"])
    for path in adds:
        file_time.setdefault(path, ts)

con = duckdb.connect()
lat = []
for path, ts in file_time.items():
    if ts is None:
        continue
    rows = con.execute(
        f"SELECT epoch_ms({column}) FROM read_parquet('{local(path)}') WHERE {column} IS NOT NULL"
        + (f" AND epoch_ms({column}) >= {since}" if since is not None else "")
    ).fetchall()
    lat.extend((ts - r[0], r[0]) for r in rows)
bucket_s = int(os.environ.get("BUCKET_S", "0"))
if bucket_s and lat:
    t0 = min(t for _, t in lat)
    buckets = {}
    for latency, t in lat:
        buckets.setdefault((t - t0) // (bucket_s * 1000), []).append(latency)
    for b in sorted(buckets):
        v = sorted(buckets[b])
        q = lambda x: v[min(len(v) - 1, int(x * len(v)))]
        print(f"from {b * bucket_s} s: p50 {q(0.5)} ms, p99 {q(0.99)} ms, max {v[-1]} ms over {len(v)} rows")
lat = sorted(latency for latency, _ in lat)
if not lat:
    print("no rows")
    sys.exit(0)
pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"p50 {pick(0.5)} ms, p99 {pick(0.99)} ms, max {lat[-1]} ms over {len(lat)} rows")
