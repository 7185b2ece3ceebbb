"""The writer lease of a model in an S3 repository: an object created and renewed with conditional
PUTs (If-None-Match / If-Match), so that of two writers or two takers only one can win.
The protocol, the holder record and `held()` are in lease.py; what SeaweedFS 4.48 was measured to
support is in lease.py's docstring.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.errors import ServiceError
from pipeline.repository.lease import DEFAULT_SKEW_MARGIN, Holder, LeaseLost, _Base, _iso, lease_name

log = logging.getLogger(__name__)


class S3Lease(_Base):
    """`s3://<bucket>/<prefix>/.<model>.trtbuild-lease`, conditional writes only."""

    def __init__(self, client: Any, bucket: str, prefix: str, model: str, *,
                 skew_margin: float = DEFAULT_SKEW_MARGIN) -> None:
        super().__init__()
        self.client, self.bucket, self.model = client, bucket, model
        self.prefix = prefix.strip("/")
        self.key = f"{self.prefix}/{lease_name(model)}" if self.prefix else lease_name(model)
        self.repository = f"s3://{bucket}/{self.prefix}"
        self.location = f"s3://{bucket}/{self.key}"
        self.skew_margin = skew_margin
        self._etag: str | None = None

    # -- S3 calls -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self, op: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            raise ServiceError(f"lease {op} {self.location}: S3 error {code or status}",
                               hint="check the endpoint, bucket and credentials") from None
        except BotoCoreError as e:
            raise ServiceError(f"lease {op} {self.location}: {type(e).__name__}") from None

    def _conditional(self, call: Callable[[], dict[str, Any]], op: str) -> dict[str, Any] | None:
        """The response, or None if a precondition failed (412; 409 is AWS's concurrent-write answer)."""
        from botocore.exceptions import ClientError

        try:
            return call()
        except ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            code = e.response.get("Error", {}).get("Code", "")
            if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return None
            if op == "delete" and status == 404:
                return None
            with self._errors(op):
                raise

    def _put(self, holder: Holder, **cond: str) -> str | None:
        body = holder.to_json(model=self.model)
        r = self._conditional(lambda: self.client.put_object(
            Bucket=self.bucket, Key=self.key, Body=body, ContentType="application/json", **cond),
            "write")
        return None if r is None else str(r["ETag"])

    def _read(self) -> tuple[Holder | None, str, float] | None:
        """(holder or None if unreadable, etag, last-modified) or None if there is no lease."""
        from botocore.exceptions import ClientError

        with self._errors("read"):
            try:
                r = self.client.get_object(Bucket=self.bucket, Key=self.key)
            except ClientError as e:
                if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    return None
                raise
            data = r["Body"].read()
        return Holder.from_json(data), str(r["ETag"]), r["LastModified"].timestamp()

    # -- the lease ------------------------------------------------------------------------
    def _try_take(self, holder: Holder) -> tuple[bool, Holder | None]:
        etag = self._put(holder, IfNoneMatch="*")
        if etag is None:
            current = self._read()
            if current is None:
                return False, None  # released in between: the next poll creates it
            seen, seen_etag, modified = current
            # An unreadable body (not ours) expires a ttl after it was written.
            expires = seen.expires_ts if seen else modified + self._ttl
            if time.time() <= expires + self.skew_margin:
                return False, seen
            etag = self._put(holder, IfMatch=seen_etag)
            if etag is None:
                return False, seen  # another taker won the expired lease, or it was renewed
            log.warning("took over the expired lease %s of %s", self.location,
                        seen.describe() if seen else "an unreadable holder")
        self._etag = etag
        return True, None

    def holder(self) -> Holder | None:
        """What the lease object says (also when it has expired and awaits a taker)."""
        current = self._read()
        return None if current is None else current[0]

    def renew(self) -> None:
        with self._mutex:
            mine, etag = self._mine, self._etag
            if mine is None or etag is None or self._lost is not None:
                raise LeaseLost(f"no lease held on model '{self.model}' ({self._lost or 'released'})")
            new = mine.extended(self._ttl)
            got = self._put(new, IfMatch=etag)
            if got is None:
                # A renewal whose answer was lost changed the etag; the body is still ours.
                current = self._read()
                if current and current[0] and current[0].token == mine.token:
                    got = self._put(new, IfMatch=current[1])
            if got is None:
                self._etag = None
                self._lost = "another writer took it over or it was removed"
                raise LeaseLost(f"lease on model '{self.model}' ({self.location}) lost: {self._lost}")
            self._mine, self._etag = new, got

    def _still_mine(self, mine: Holder) -> str | None:
        from botocore.exceptions import ClientError

        if time.time() >= mine.expires_ts:
            return f"it expired at {mine.expires} before it was renewed"

        with self._errors("check"):
            try:
                etag = self.client.head_object(Bucket=self.bucket, Key=self.key)["ETag"]
            except ClientError as e:
                if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                    raise
                return f"{self.location} was removed"
        return None if etag == self._etag else "another writer took it over"

    def release(self) -> None:
        with self._mutex:
            etag, self._etag, self._mine = self._etag, None, None
            if etag is None:
                return
            self._lost = "released"
            if self._conditional(lambda: self.client.delete_object(
                    Bucket=self.bucket, Key=self.key, IfMatch=etag), "delete") is None:
                log.warning("lease %s was no longer ours at release; left it alone", self.location)

    def _fix(self, holder: Holder | None) -> str:
        until = _iso(holder.expires_ts + self.skew_margin) if holder else "its expiry"
        return (f"wait for it, or if that writer is dead wait until {until} (it is then taken "
                f"over) or remove {self.location}")
