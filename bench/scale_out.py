"""Aggregates across a consumer group (bench/scale_out.sh): throughput of a
per-partition aggregate pipeline run by 1, 2 and 3 processes in one group, and the
state hand-over at a rebalance.

A 6-partition topic of EVENTS JSON click events keyed by their user (5,000 users,
1 ms apart) is produced once. For each process count K, K `tributary run` processes
(release build) start together in a new group and drain it into three per-partition
aggregates (tumbling 1m with count + exact distinct count, session 30s, global) on
local disk; the time is from their start until the group's committed offsets (which
follow the Delta commits of every table) reach the end of every partition.

Hand-over: two processes drain the topic; when 40 % of it is committed a third joins.
From the processes' logs: per claim of the partitions a process gains, how long the
claim commit took; per partition state loaded, how long the load took and its size;
and the pause, from the first revocation to the last claim of that rebalance.

    python bench/scale_out.py EVENTS BIN WORKDIR

Prints a Markdown table.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONS = 6
USERS = 5000
BASE_US = 1_767_225_600_000_000


def produce(brokers, topic, events):
    admin = AdminClient({"bootstrap.servers": brokers})
    for f in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        f.result(timeout=30)
    p = Producer({"bootstrap.servers": brokers, "linger.ms": 20, "batch.size": 1 << 20,
                  "queue.buffering.max.messages": 1_000_000})
    for i in range(events):
        u = i % USERS
        value = json.dumps({
            "event_id": str(uuid.UUID(int=i)), "user_id": f"u{u}", "page": f"/p/{i % 100}",
            "action": "view", "session_id": f"s{i % 20000}", "device": "mobile", "country": "NL",
            "event_timestamp": BASE_US + i * 1000 + (i // 100_000) * 60_000_000,
        }).encode()
        while True:
            try:
                p.produce(topic, value=value, key=f"u{u}".encode(), partition=u % PARTITIONS)
                break
            except BufferError:
                p.poll(0.05)
        if i % 10_000 == 0:
            p.poll(0)
    # One event per partition an hour later: every window and session closes, so each
    # aggregate emits and commits up to the last offset at once (instead of when the
    # input has been quiet for a second, which the measured time would include).
    for part in range(PARTITIONS):
        value = json.dumps({
            "event_id": str(uuid.UUID(int=events + part)), "user_id": f"closer{part}", "page": "/",
            "action": "view", "session_id": "s", "device": "mobile", "country": "NL",
            "event_timestamp": BASE_US + events * 1000 + 3_600_000_000 + (events // 100_000) * 60_000_000,
        }).encode()
        p.produce(topic, value=value, key=f"closer{part}".encode(), partition=part)
    p.flush(60)


def committed(brokers, topic, group):
    c = Consumer({"bootstrap.servers": brokers, "group.id": group, "enable.auto.commit": False})
    tps = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
    c.close()
    return {tp.partition: max(tp.offset, 0) for tp in tps}


def pipeline(workdir, name, topic, group):
    schema = os.path.join(os.getcwd(), "schemas/clickstream.avsc")
    lake = os.path.join(workdir, name)
    shutil.rmtree(lake, ignore_errors=True)

    def agg(n, window, measures):
        emit = "update" if "global" in window else "final"
        return (f'[[aggregates]]\nname = "{n}"\nfrom = "{topic}"\nevent_time = "event_timestamp"\n'
                f'window = {window}\nwatermark = "0s"\ngroup_by = ["_key"]\nmeasures = {measures}\n'
                f'emit = "{emit}"\n\n')

    text = (
        f'name = "{name}"\n\n[source]\nkind = "kafka"\nbrokers = "{os.environ["KAFKA_BROKERS"]}"\n'
        f'topics = ["{topic}"]\ngroup_id = "{group}"\nformat = "json"\nschema = "{schema}"\n'
        f'key_format = "string"\nscale_out = true\n\n[sink]\nuri = "{lake}"\n\n[batch]\nmax_rows = 100000\n\n'
        + agg("per_minute", '{ kind = "tumbling", size = "1m" }', '{ n = "count(*)", pages = "count(distinct page)" }')
        + agg("sessions", '{ kind = "session", gap = "30s" }', '{ n = "count(*)" }')
        + agg("totals", '{ kind = "global" }', '{ n = "count(*)", pages = "count(distinct page)" }')
    )
    path = os.path.join(workdir, f"{name}.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def spawn(binary, path, log):
    env = dict(os.environ, TRIBUTARY_LOG="info,tributary::runtime=debug", NO_COLOR="1")
    return subprocess.Popen([binary, "run", path], stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"), env=env)


def drain(binary, workdir, topic, brokers, events, k, join_third_at=None):
    group = f"bench-{uuid.uuid4().hex[:8]}"
    name = f"k{k}{'-join' if join_third_at else ''}"
    path = pipeline(workdir, name, topic, group)
    logs = [os.path.join(workdir, f"{name}-{i}.log") for i in range(3)]
    start = time.monotonic()
    procs = [spawn(binary, path, logs[i]) for i in range(k)]
    joined = None
    while True:
        done = sum(committed(brokers, topic, group).values()) - PARTITIONS
        if join_third_at is not None and joined is None and done >= join_third_at * events:
            procs.append(spawn(binary, path, logs[2]))
            joined = time.monotonic()
        if done >= events:
            break
        if any(p.poll() is not None for p in procs):
            raise SystemExit(f"a process died; see {logs}")
        if time.monotonic() - start > 1800:
            raise SystemExit("did not finish in 30 min")
        time.sleep(0.2)
    seconds = time.monotonic() - start
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait(60)
    return seconds, logs[: len(procs)]


STAMP = re.compile(r"^(\S+Z)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def ts(line):
    m = STAMP.match(line)
    if not m:
        return None
    t = m.group(1)
    whole, frac = t.rstrip("Z").split(".")
    return time.mktime(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float("0." + frac)


def handover(logs):
    claims, loads, revokes, claim_times = [], [], [], []
    for log in logs:
        for line in open(log, errors="replace"):
            line = ANSI.sub("", line)
            if "partitions claimed" in line:
                m = re.search(r"ms=(\d+)", line)
                claims.append(int(m.group(1)) if m else None)
                claim_times.append(ts(line))
            elif "partition state loaded" in line:
                m = re.search(r"ms=(\d+)", line)
                b = re.search(r"bytes=(\d+)", line)
                loads.append((int(m.group(1)), int(b.group(1)) if b else 0))
            elif "kafka partitions revoked" in line:
                revokes.append(ts(line))
    pause = None
    if revokes and claim_times:
        last_rev = max(revokes)
        # The rebalance the third process caused: its revocations are the last ones.
        first = min(r for r in revokes if r >= last_rev - 30)
        after = [c for c in claim_times if c >= first]
        if after:
            pause = max(after) - first
    return claims, loads, pause


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None


def main():
    events, binary, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    brokers = os.environ["KAFKA_BROKERS"]
    os.makedirs(workdir, exist_ok=True)
    topic = f"bench-keyed-{uuid.uuid4().hex[:8]}"
    t = time.monotonic()
    produce(brokers, topic, events)
    print(f"Produced {events:,} keyed JSON events to {PARTITIONS} partitions in {time.monotonic() - t:.1f} s.\n")
    print("| processes | seconds (start → every offset committed) | events/s | vs 1 process |")
    print("|---|---|---|---|")
    base = None
    for k in (1, 2, 3):
        seconds, _ = drain(binary, workdir, topic, brokers, events, k)
        rate = events / seconds
        base = base or rate
        print(f"| {k} | {seconds:.1f} | {rate:,.0f} | {rate / base:.2f}× |")
    seconds, logs = drain(binary, workdir, topic, brokers, events, 2, join_third_at=0.4)
    claims, loads, pause = handover(logs)
    claims = [c for c in claims if c is not None]
    print()
    print(f"Hand-over (2 processes, a third joins at 40 %; {seconds:.1f} s in all):")
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| claims (one per aggregate per process per rebalance) | {len(claims)} |")
    if claims:
        print(f"| claim commit, median / max | {pct(claims, 0.5)} ms / {max(claims)} ms |")
    if loads:
        ms = [m for m, _ in loads]
        size = [b for _, b in loads]
        print(f"| partition states loaded | {len(loads)} |")
        print(f"| state load, median / max | {pct(ms, 0.5)} ms / {max(ms)} ms |")
        print(f"| state size, median / max | {pct(size, 0.5) / 1024:.0f} KiB / {max(size) / 1024:.0f} KiB |")
    if pause is not None:
        print(f"| rebalance pause (first revocation → last claim) | {pause * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
