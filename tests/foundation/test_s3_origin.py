"""The S3 test origin is a real S3 HTTP server that aiobotocore talks to."""

from __future__ import annotations

import hashlib

import pytest
from aiobotocore.session import get_session

from edgefill_devenv.catalogue import generate, object_bytes, seed_bucket
from edgefill_devenv.s3 import ACCESS_KEY, REGION, SECRET_KEY, S3Server

pytestmark = pytest.mark.integration


async def test_seeded_catalogue_reads_back_over_http(s3_server: S3Server) -> None:
    entries = generate(12, prefix="foundation")
    seed_bucket(s3_server.endpoint_url, "foundation", entries, manifest_key="m/list.jsonl")
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
    ) as s3:
        listed = await s3.list_objects_v2(Bucket="foundation", Prefix="foundation/")
        assert {o["Key"] for o in listed["Contents"]} == {e.key for e in entries}
        e = entries[3]
        resp = await s3.get_object(Bucket="foundation", Key=e.key, Range="bytes=100-199")
        async with resp["Body"] as body:
            part = await body.read()
        assert resp["ContentRange"] == f"bytes 100-199/{e.size}"
        assert part == object_bytes(e.key, e.size)[100:200]
        head = await s3.head_object(Bucket="foundation", Key=e.key)
        assert head["ContentLength"] == e.size
        assert head["ETag"].strip('"') == hashlib.md5(object_bytes(e.key, e.size)).hexdigest()
