"""End-to-end latency of a Tributary changelog table: for every row, the Delta commit
time of the version that added its file minus the row's `_commit_ts` (the Postgres
commit time). Prints p50/p99/max over rows."""
import glob
import json
import os
import sys

import duckdb

table = sys.argv[1]
file_time = {}
for entry in sorted(glob.glob(os.path.join(table, "_delta_log", "*.json"))):
    ts, adds = None, []
    with open(entry) as f:
        for line in f:
            action = json.loads(line)
            if "commitInfo" in action:
                ts = action["commitInfo"].get("timestamp")
            if "add" in action:
                adds.append(action["add"]["path"])
    for path in adds:
        file_time[path] = ts

con = duckdb.connect()
lat = []
for path, ts in file_time.items():
    if ts is None:
        continue
    full = os.path.join(table, path)
    rows = con.execute(
        f"SELECT epoch_ms(_commit_ts) FROM read_parquet('{full}') WHERE _commit_ts IS NOT NULL"
    ).fetchall()
    lat.extend(ts - r[0] for r in rows)
lat.sort()
if not lat:
    print("no rows")
    sys.exit(0)
pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"p50 {pick(0.5)} ms, p99 {pick(0.99)} ms, max {lat[-1]} ms over {len(lat)} rows")
