"""Time to roll back to a version pruned from the repository: its bundle comes back from S3.

When the serving version is bad, the rollback's duration is the time to recover, and for a
pruned version most of it is the download. This publishes v1 (padded to --pad-gib of weights),
v2 and v3 with keep=2 into a directory repository served by a real tritonserver, with the
bundles stored on a real SeaweedFS, then rolls back to v1 and splits the time: the store's
verified download alone (same bytes, separately), boto3's plain download of the same objects
(no verification; the peer, same run), and the rollback end to end (fetch, verify, materialize,
load, ready, smoke).

    python benchmarks/rollback_pruned.py [--pad-gib 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.bundle import facts_for_target, read_manifest, write_manifest  # noqa: E402
from pipeline.local import process, seaweed  # noqa: E402
from pipeline.local.services import credentials  # noqa: E402
from pipeline.repository.publish import publish_bundle, rollback  # noqa: E402
from pipeline.store import open_store  # noqa: E402
from pipeline.triton.server import TritonServer, locate_tritonserver  # noqa: E402
from tests.integration.test_publish_triton import make_bundle  # noqa: E402

MiB = 1 << 20


def padded(bundle: Path, out: Path, gib: float) -> Path:
    """`bundle` plus gib of incompressible bytes (a stand-in for large weights), manifest rewritten."""
    shutil.copytree(bundle, out)
    manifest, _ = read_manifest(out)
    (out / "manifest.json").unlink()
    pad = out / "padding"
    pad.mkdir()
    left, i = int(gib * 1024 * MiB), 0
    while left > 0:  # 256 MiB files, like a sharded checkpoint
        n = min(left, 256 * MiB)
        with (pad / f"shard-{i:03d}.bin").open("wb") as f:
            for _ in range(n // (16 * MiB)):
                f.write(os.urandom(16 * MiB))
        left, i = left - n, i + 1
    write_manifest(out, name=manifest["name"], backend=manifest["backend"], provenance=manifest["provenance"],
                   compatibility=manifest["compatibility"], runtime=manifest["runtime"])
    return out


def boto3_download(prefix_uri: str, dest: Path) -> float:
    """Every object under the bundle's prefix with boto3's defaults (no verification)."""
    import boto3

    bucket, prefix = prefix_uri.removeprefix("s3://").split("/", 1)
    client = boto3.session.Session().client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"])
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]
    t0 = time.perf_counter()
    for k in keys:
        target = dest / k
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, k, str(target))
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pad-gib", type=float, default=1.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rollback-bench-"))
    access, secret = credentials(tmp)
    rec = seaweed.start_seaweed(tmp / "s3", access_key=access, secret_key=secret, timeout=60)
    try:
        seaweed.ensure_buckets(rec["endpoint"], access, secret, ["bench"])
        os.environ.update({"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret,
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": rec["endpoint"]})
        bundles = {v: make_bundle(tmp / "b", v) for v in (1, 2, 3)}
        bundles[1] = padded(bundles[1], tmp / "b" / "v1-padded", args.pad_gib)
        store = open_store("s3://bench/store")
        ids = {v: store.put(b).bundle_id for v, b in bundles.items()}
        size = sum(f["size"] for f in read_manifest(bundles[1])[0]["files"])
        repo = tmp / "repo"
        repo.mkdir()
        facts = facts_for_target("cpu")
        with TritonServer(locate_tritonserver(None), log_path=tmp / "triton.log").start(repo) as srv:
            for v in (1, 2, 3):
                publish_bundle(bundles[v], repo, "m", facts=facts, keep=2, server_url=srv.http_url, store=store.uri)
            assert not (repo / "m" / "1").exists(), "v1 was not pruned"
            t0 = time.perf_counter()
            back = rollback(repo, "m", server_url=srv.http_url, to=1)
            rollback_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.get(ids[1], tmp / "get")
        get_s = time.perf_counter() - t0
        boto_s = boto3_download(store.object_uri(ids[1], "").rstrip("/"), tmp / "boto3")
    finally:
        process.stop(process.ProcInfo.from_dict(rec["proc"]))
        shutil.rmtree(tmp, ignore_errors=True)
    mb = size / 1e6
    out = {"bundle_bytes": size, "rollback_s": round(rollback_s, 2), "fetched": back.fetched,
           "rollback_switch_s": {k: round(v, 2) for k, v in back.seconds.items()},
           "store_get_s": round(get_s, 2), "store_get_MBps": round(mb / get_s, 1),
           "boto3_download_s": round(boto_s, 2), "boto3_MBps": round(mb / boto_s, 1),
           "verified_vs_boto3": round(boto_s / get_s, 2)}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"bundle {mb:.0f} MB; rollback to the pruned version {rollback_s:.1f} s end to end "
              f"(switch part {back.seconds})")
        print(f"download alone: ours (sha256 verified) {get_s:.1f} s = {mb / get_s:.0f} MB/s; boto3 (unverified) "
              f"{boto_s:.1f} s = {mb / boto_s:.0f} MB/s; ours/boto3 speed {boto_s / get_s:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
