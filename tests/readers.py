"""Reads Delta tables with every reader the reader matrix covers and prints what each
returned, as canonical rows, so the Rust test can compare readers with each other and
with the truth.

usage: readers.py < {"tables": {"name": "/path/or/s3://uri", ...}}
prints {"name": {"reader": {"rows": [[...], ...]} | {"error": "..."}}}

Readers: DuckDB's delta extension, Python deltalake (delta-rs) through its
QueryBuilder and through to_pyarrow_table, Polars' read_delta, and the Spark DataFrame
API through Sail (a Spark Connect server). Values are made comparable: timestamps as
UTC microseconds, floats rounded to 9 significant digits, bytes as hex, rows sorted.
"""
import datetime
import decimal
import json
import math
import os
import sys
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def canon(v):
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, datetime.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=datetime.timezone.utc)
        d = v - EPOCH
        return (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds
    if isinstance(v, datetime.date):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return canon(float(v))
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if v == 0:
            return 0
        return float(f"{v:.9g}")
    if isinstance(v, int):
        return v
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, dict):
        return sorted([str(k), canon(x)] for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return [canon(x) for x in v]
    if hasattr(v, "asDict"):
        return canon(v.asDict())
    return str(v)


def rows_of(tuples):
    rows = [[canon(v) for v in row] for row in tuples]
    rows.sort(key=lambda r: json.dumps(r, sort_keys=True))
    return rows


def storage():
    if not os.environ.get("AWS_ENDPOINT_URL"):
        return {}
    return {
        "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"],
        "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
        "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1"),
        "AWS_ALLOW_HTTP": "true",
    }


def read_duckdb(path):
    import duckdb_query  # the project's DuckDB connection, with its extensions loaded

    con = duckdb_query.connect()
    # Through Arrow: DuckDB's own Python conversion of zoned timestamps needs pytz.
    t = con.execute(f"SELECT * FROM delta_scan('{path}')").fetch_arrow_table()
    return rows_of(zip(*[c.to_pylist() for c in t.columns]))


def read_deltalake_querybuilder(path):
    from deltalake import DeltaTable, QueryBuilder

    t = DeltaTable(path, storage_options=storage())
    batches = QueryBuilder().register("t", t).execute("SELECT * FROM t").read_all()
    return rows_of(zip(*[c.to_pylist() for c in batches.columns]) if batches.num_columns else [])


def read_deltalake_pyarrow(path):
    from deltalake import DeltaTable

    t = DeltaTable(path, storage_options=storage()).to_pyarrow_table()
    return rows_of(zip(*[c.to_pylist() for c in t.columns]))


def read_polars(path):
    import polars as pl

    df = pl.read_delta(path, storage_options=storage() or None)
    return rows_of(df.rows())


_spark = None
_server = None  # kept: the server shuts down when its object is dropped


def spark():
    global _spark, _server
    if _spark is None:
        from pysail.spark import SparkConnectServer
        from pyspark.sql import SparkSession

        _server = SparkConnectServer("127.0.0.1", 0)
        _server.start(background=True)
        _, port = _server.listening_address
        _spark = (
            SparkSession.builder.remote(f"sc://127.0.0.1:{port}")
            .config("spark.sql.session.timeZone", "UTC")
            .getOrCreate()
        )
    return _spark


def read_sail(path):
    df = spark().read.format("delta").load(path)
    return rows_of(tuple(r) for r in df.collect())


READERS = {
    "duckdb": read_duckdb,
    "deltalake": read_deltalake_querybuilder,
    "deltalake-pyarrow": read_deltalake_pyarrow,
    "polars": read_polars,
    "sail": read_sail,
}


def main():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    spec = json.load(sys.stdin)
    out = {}
    for name, path in spec["tables"].items():
        out[name] = {}
        for reader, read in READERS.items():
            try:
                out[name][reader] = {"rows": read(path)}
            except Exception as e:  # a reader that cannot read the table: reported
                msg = " ".join(str(e).split())
                out[name][reader] = {"error": f"{type(e).__name__}: {msg[:300]}"}
    json.dump(out, sys.stdout)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
    # The Spark Connect server's threads can hold the interpreter's exit: the answer is
    # out, so leave without waiting for them.
    os._exit(0)
