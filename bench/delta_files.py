"""Prints how many data files the current version of a Delta table holds (Python
`deltalake`, an independent reader; S3 goes to AWS_ENDPOINT_URL when it is set).

    python bench/delta_files.py URI
"""
import os
import sys

from deltalake import DeltaTable

storage = {}
if os.environ.get("AWS_ENDPOINT_URL"):
    for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
        if os.environ.get(k):
            storage[k] = os.environ[k]
    storage["AWS_ALLOW_HTTP"] = "true"
print(len(DeltaTable(sys.argv[1], storage_options=storage).file_uris()))
