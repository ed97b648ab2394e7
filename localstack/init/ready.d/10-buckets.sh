#!/usr/bin/env bash
# Creates the S3 buckets Tributary's pipelines and tests use.
#
# The same file serves two hosts:
# - a real LocalStack: mount localstack/init at /etc/localstack/init; LocalStack runs
#   ready.d/*.sh once S3 is ready, with `awslocal` on the PATH;
# - the project's own stack: infra/up.sh runs it against moto with AWS_ENDPOINT_URL set
#   and TRIBUTARY_PYTHON pointing at a venv with boto3.
# Creating a bucket that exists is not an error, so it can run on every start.
set -euo pipefail
BUCKETS=${TRIBUTARY_BUCKETS:-"tributary tributary-test"}

if command -v awslocal >/dev/null 2>&1; then
  for bucket in $BUCKETS; do
    awslocal s3api head-bucket --bucket "$bucket" >/dev/null 2>&1 \
      || awslocal s3api create-bucket --bucket "$bucket" >/dev/null
    echo "bucket ready: s3://$bucket"
  done
  exit 0
fi

"${TRIBUTARY_PYTHON:-python3}" - $BUCKETS <<'PY'
import os, sys
import boto3
from botocore.exceptions import ClientError

s3 = boto3.client(
    "s3",
    endpoint_url=os.environ.get("AWS_ENDPOINT_URL", "http://localhost:4566"),
    region_name=os.environ.get("AWS_REGION", "us-east-1"),
    aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
    aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
)
for bucket in sys.argv[1:]:
    try:
        s3.create_bucket(Bucket=bucket)
    except ClientError as e:
        if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    print(f"bucket ready: s3://{bucket}")
PY
