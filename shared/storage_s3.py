"""The `Storage` protocol on an S3-compatible bucket (AWS S3, MinIO, Cloudflare R2, ...) through boto3.

Configured the usual boto3 way: the endpoint from `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`),
credentials from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, a profile or an instance role,
retries from `AWS_MAX_ATTEMPTS`/`AWS_RETRY_MODE`. Only the bucket and key prefix come from
`ATELIER_STORAGE_URL` (`s3://bucket/prefix`).

The guarantees of the local backend hold: a PUT is atomic per object (a reader sees the old
object or the new one, never part of one), so nothing half-written is ever served; a job's
objects all live under `<prefix>/jobs/<id>/`, and deleting a job lists that prefix page by page
and deletes every object on it. Every failure of the store is raised as `StorageError`.
"""
from __future__ import annotations

from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from shared.storage import StorageError, StorageKeyError

MISSING = {"404", "NoSuchKey", "NotFound"}
DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys


def _client(session: boto3.session.Session):
    """An S3 client. Buckets behind an endpoint other than AWS's (MinIO in a compose network, a
    loopback test server) are addressed by path, which works on all of them; on AWS, and wherever
    a profile says `addressing_style`, botocore's own choice stands."""
    config = Config(connect_timeout=5, read_timeout=60, signature_version="s3v4")  # SigV4: presigned URLs too
    client = session.client("s3", config=config)
    host = urlsplit(client.meta.endpoint_url).hostname or ""
    configured = (session._session.get_scoped_config().get("s3") or {}).get("addressing_style")
    if host.endswith(".amazonaws.com") or configured:
        return client
    return session.client("s3", config=config.merge(Config(s3={"addressing_style": "path"})))


class S3Storage:
    def __init__(self, bucket: str, prefix: str = "") -> None:
        if not bucket:
            raise ValueError("ATELIER_STORAGE_URL: an s3:// URL needs a bucket (s3://bucket/prefix)")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = _client(boto3.session.Session())

    def _key(self, key: str) -> str:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in (".", ".."):
            raise ValueError(f"invalid storage key {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot write {key}: {exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in MISSING:
                raise StorageKeyError(key) from None
            raise StorageError(f"cannot read {key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot read {key}: {exc}") from exc

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in MISSING:
                return False
            raise StorageError(f"cannot look up {key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot look up {key}: {exc}") from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))  # no error if absent
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot delete {key}: {exc}") from exc

    def delete_prefix(self, prefix: str) -> None:
        """Every object under `prefix`, however many pages the listing takes."""
        full = self._key(prefix.rstrip("/")) + "/"
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                for start in range(0, len(keys), DELETE_BATCH):
                    answer = self.client.delete_objects(Bucket=self.bucket,
                                                        Delete={"Objects": keys[start:start + DELETE_BATCH],
                                                                "Quiet": True})
                    if answer.get("Errors"):
                        first = answer["Errors"][0]
                        raise StorageError(f"cannot delete {first.get('Key')}: {first.get('Code')} "
                                           f"{first.get('Message')} ({len(answer['Errors'])} objects left)")
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot delete {prefix}: {exc}") from exc

    def presigned_url(self, key: str, seconds: int, content_type: str, cache_control: str) -> str:
        """A GET URL signed for `seconds`; S3 answers it with our content type and caching."""
        try:
            return self.client.generate_presigned_url(
                "get_object", ExpiresIn=seconds,
                Params={"Bucket": self.bucket, "Key": self._key(key), "ResponseContentType": content_type,
                        "ResponseCacheControl": cache_control})
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot sign a URL for {key}: {exc}") from exc
