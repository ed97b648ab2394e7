"""Runs SQL read from stdin in DuckDB (the independent reader) and prints the rows of
the last statement as JSON (or, with --show, every result as a table). Delta and httpfs extensions load from the pip packages, and
S3 goes to AWS_ENDPOINT_URL when it is set (moto from infra/up.sh)."""
import json
import os
import sys
from urllib.parse import urlparse

import duckdb
import duckdb_extension_delta
import duckdb_extension_httpfs


def extension(module, name):
    base = os.path.dirname(module.__file__)
    return os.path.join(base, "extensions", "v" + duckdb.__version__, name + ".duckdb_extension")


def connect():
    """A DuckDB connection with the delta and httpfs extensions loaded and S3 set up."""
    con = duckdb.connect()
    con.execute(f"LOAD '{extension(duckdb_extension_httpfs, 'httpfs')}'")
    con.execute(f"LOAD '{extension(duckdb_extension_delta, 'delta')}'")
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        u = urlparse(endpoint)
        q = lambda v: "'" + v.replace("'", "''") + "'"
        con.execute(
            "CREATE SECRET s3 (TYPE S3, "
            f"KEY_ID {q(os.environ.get('AWS_ACCESS_KEY_ID', 'test'))}, "
            f"SECRET {q(os.environ.get('AWS_SECRET_ACCESS_KEY', 'test'))}, "
            f"REGION {q(os.environ.get('AWS_REGION', 'us-east-1'))}, "
            f"ENDPOINT {q(u.netloc)}, URL_STYLE 'path', USE_SSL {str(u.scheme == 'https').lower()})"
        )
    return con


def main():
    con = connect()
    statements = [s for s in sys.stdin.read().split(";\n") if s.strip()]
    if "--show" in sys.argv:
        # For people: echo each query and print its result as a table.
        for s in statements:
            print(f"D {s.strip()};")
            con.sql(s).show(max_width=120)
    else:
        rows = []
        for s in statements:
            rows = con.execute(s).fetchall()
        print(json.dumps(rows, default=str))


if __name__ == "__main__":
    main()
