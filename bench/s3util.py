#!/usr/bin/python3
"""bench/s3util.py — the bucket side of bench/s3, through boto3 (python3-boto3).

    s3util.py mkbucket              create $S3_BUCKET, wait until it takes a write
    s3util.py du PREFIX             "<objects> <bytes>" under PREFIX
    s3util.py ls PREFIX             every key under PREFIX with its size
    s3util.py wait KEY SECONDS      exit 0 once KEY exists, 1 after SECONDS
    s3util.py newest-wal PREFIX     the highest WAL segment name stored under PREFIX

Endpoint, bucket and credentials come from S3_ENDPOINT, S3_BUCKET and the usual
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_CA_BUNDLE variables.
"""
import os
import re
import sys
import time

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["S3_ENDPOINT"]
BUCKET = os.environ["S3_BUCKET"]
s3 = boto3.client(
    "s3",
    endpoint_url=ENDPOINT,
    region_name="us-east-1",
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5}),
)


def objects(prefix):
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        yield from page.get("Contents", [])


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "mkbucket":
        end = time.time() + 120
        while True:
            try:
                try:
                    s3.create_bucket(Bucket=BUCKET)
                except ClientError as e:
                    if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
                s3.put_object(Bucket=BUCKET, Key="bench-probe/ready", Body=b"ready")
                s3.delete_object(Bucket=BUCKET, Key="bench-probe/ready")
                return 0
            except Exception as e:  # the gateway answers before the volumes take writes
                if time.time() > end:
                    print(f"bucket {BUCKET} at {ENDPOINT} takes no writes: {e}", file=sys.stderr)
                    return 1
                time.sleep(0.5)
    if cmd == "du" and len(argv) == 3:
        n = b = 0
        for o in objects(argv[2]):
            n += 1
            b += o["Size"]
        print(n, b)
        return 0
    if cmd == "ls" and len(argv) == 3:
        for o in objects(argv[2]):
            print(o["Size"], o["Key"])
        return 0
    if cmd == "wait" and len(argv) == 4:
        end = time.time() + float(argv[3])
        while True:
            try:
                s3.head_object(Bucket=BUCKET, Key=argv[2])
                return 0
            except ClientError as e:
                if e.response["Error"]["Code"] not in ("404", "NoSuchKey", "NotFound"):
                    raise
            if time.time() > end:
                return 1
            time.sleep(0.2)
    if cmd == "newest-wal" and len(argv) == 3:
        seg = re.compile(r"([0-9A-F]{24})(\.[a-z0-9]+)?$")
        names = [m.group(1) for o in objects(argv[2]) for m in [seg.search(o["Key"])] if m]
        print(max(names) if names else "")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
