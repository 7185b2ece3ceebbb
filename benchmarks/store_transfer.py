"""Bundle store throughput on a local SeaweedFS: trtbuild's S3 store vs boto3's defaults.

    python -m benchmarks.store_transfer --size 512MiB      (from the repository root)

Starts a `weed mini` of its own on loopback, writes a synthetic bundle (random bytes, so nothing
compresses or dedupes) and measures, in the same run:

  ours    S3BundleStore.put / .get: local sha256 check of every file before the upload, one
          transfer manager for all files (parallel parts across files), sha256 metadata, the
          manifest last; on the way down one stream per file (files in parallel), each hashed
          as its bytes arrive and verified against the manifest.
  boto3   client.upload_file / download_file with boto3's default TransferConfig, file after
          file, no verification at all.

MB/s are 10^6 bytes per second of bundle payload. "CPU s/GB" is this process's CPU time (all
threads, user + system) per 10^9 bytes: on a shared machine wall-clock rates swing with the load
of others, the client's own CPU cost much less (SeaweedFS's CPU is not in it).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from pipeline.local import process, seaweed
from pipeline.local.services import credentials
from pipeline.store import open_store
from pipeline.store.s3 import DEFAULT_CHUNK, DEFAULT_CONCURRENCY, MiB
from pipeline.util.hashing import canonical_json, file_entries, sha256_bytes

BUCKET = "bench"
_UNITS = {
    "": 1,
    "B": 1,
    "KIB": 1 << 10,
    "MIB": 1 << 20,
    "GIB": 1 << 30,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"size '{text}': use e.g. 512MiB, 2GiB, 100MB")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def make_bundle(d: Path, size: int, files: int) -> str:
    """`files` large files sharing `size` (engine ranks, shards) plus small tokenizer files."""
    d.mkdir(parents=True)
    per = size // files
    block = 64 * MiB
    for i in range(files):
        with (d / f"rank{i}.engine").open("wb") as f:
            left = per if i < files - 1 else size - per * (files - 1)
            while left > 0:
                n = min(block, left)
                f.write(os.urandom(n))
                left -= n
    (d / "tokenizer").mkdir()
    (d / "tokenizer" / "tokenizer.json").write_bytes(os.urandom(2 * MiB))
    (d / "tokenizer" / "tokenizer_config.json").write_bytes(b'{"bos": "<s>"}')
    (d / "config.json").write_bytes(b'{"backend": "bench"}')
    manifest = {
        "schema_version": 1,
        "kind": "trtbuild.bundle",
        "name": "bench",
        "backend": "reference",
        "files": file_entries(d),
        "provenance": {},
        "compatibility": {},
    }
    data = canonical_json(manifest)
    (d / "manifest.json").write_bytes(data)
    return sha256_bytes(data)


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--size", type=parse_size, default=parse_size("2GiB"), help="payload size (default 2GiB)"
    )
    ap.add_argument("--files", type=int, default=4, help="number of large files sharing the size")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per method (median)")
    ap.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="our transfer threads"
    )
    ap.add_argument(
        "--chunk-mib", type=int, default=DEFAULT_CHUNK // MiB, help="our multipart part size"
    )
    ap.add_argument(
        "--workdir", type=Path, default=None, help="scratch directory (default: a temp dir)"
    )
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="store-bench-", dir=args.workdir))
    rec = None
    try:
        access, secret = credentials(work)
        rec = seaweed.start_seaweed(work / "weed", access_key=access, secret_key=secret)
        seaweed.ensure_buckets(rec["endpoint"], access, secret, [BUCKET])
        os.environ.update({
            "AWS_ENDPOINT_URL_S3": rec["endpoint"], "AWS_ACCESS_KEY_ID": access,
            "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1",
        })  # fmt: skip

        t = time.perf_counter()
        bid = make_bundle(work / "bundle", args.size, args.files)
        payload = sum(
            p.stat().st_size
            for p in (work / "bundle").rglob("*")
            if p.is_file() and p.name != "manifest.json"
        )
        print(
            f"bundle: {payload / 1e6:.0f} MB in {args.files} large + 3 small files, "
            f"written in {time.perf_counter() - t:.1f}s; SeaweedFS at {rec['endpoint']}"
        )
        files = sorted(p for p in (work / "bundle").rglob("*") if p.is_file())

        import boto3

        client = boto3.session.Session().client("s3", endpoint_url=rec["endpoint"])
        bundle = work / "bundle"

        def boto3_round(r: int) -> tuple[float, float, float, float]:
            """boto3 defaults, file after file, no verification."""
            os.sync()
            t, c = time.perf_counter(), cpu_seconds()
            for p in files:
                client.upload_file(str(p), BUCKET, f"plain{r}/{p.relative_to(bundle).as_posix()}")
            up, up_cpu = time.perf_counter() - t, cpu_seconds() - c
            out_dir = work / f"plain{r}"
            for p in files:
                (out_dir / p.relative_to(bundle)).parent.mkdir(parents=True, exist_ok=True)
            os.sync()
            t, c = time.perf_counter(), cpu_seconds()
            for p in files:
                rel = p.relative_to(bundle).as_posix()
                client.download_file(BUCKET, f"plain{r}/{rel}", str(out_dir / rel))
            down, down_cpu = time.perf_counter() - t, cpu_seconds() - c
            shutil.rmtree(out_dir)
            return up, down, up_cpu, down_cpu

        def ours_round(r: int) -> tuple[float, float, float, float]:
            store = open_store(
                f"s3://{BUCKET}/store{r}",
                concurrency=args.concurrency,
                multipart_chunksize=args.chunk_mib * MiB,
            )
            os.sync()
            t, c = time.perf_counter(), cpu_seconds()
            stored = store.put(bundle)
            up, up_cpu = time.perf_counter() - t, cpu_seconds() - c
            if stored.bundle_id != bid or stored.uploaded_bytes != payload:
                raise SystemExit(f"unexpected put result: {stored}")
            os.sync()
            t, c = time.perf_counter(), cpu_seconds()
            store.get(bid, work / f"got{r}")
            down, down_cpu = time.perf_counter() - t, cpu_seconds() - c
            shutil.rmtree(work / f"got{r}")
            return up, down, up_cpu, down_cpu

        results: dict[str, list[tuple[float, float, float, float]]] = {"boto3": [], "ours": []}
        for r in range(args.rounds):
            # Alternate which goes first: the second of a pair runs on a warmer, dirtier cache.
            order = [("boto3", boto3_round), ("ours", ours_round)]
            for name, fn in order if r % 2 == 0 else order[::-1]:
                results[name].append(fn(r))
                up, down, up_cpu, down_cpu = results[name][-1]
                rates = (f"up {mbps(payload, up):4.0f} MB/s, down {mbps(payload, down):4.0f} MB/s; "
                         f"CPU s/GB up {up_cpu / payload * 1e9:.2f}, down {down_cpu / payload * 1e9:.2f}")
                print(f"  round {r} {name:5}: {rates}")

        store = open_store(f"s3://{BUCKET}/store0")
        t = time.perf_counter()
        again = store.put(bundle)
        o_noop = time.perf_counter() - t

        def med(name: str, i: int) -> float:
            return statistics.median(row[i] for row in results[name])

        b_up, b_down, b_upc, b_downc = (med("boto3", i) for i in range(4))
        o_up, o_down, o_upc, o_downc = (med("ours", i) for i in range(4))
        gb = payload / 1e9
        print(f"median of {args.rounds} rounds")
        print(f"{'':8}{'upload MB/s':>14}{'download MB/s':>16}{'up CPU s/GB':>14}{'down CPU s/GB':>16}")
        plain = "(defaults, no verification)"
        print(f"{'boto3':8}{mbps(payload, b_up):>14.0f}{mbps(payload, b_down):>16.0f}"
              f"{b_upc / gb:>14.2f}{b_downc / gb:>16.2f}   {plain}")
        print(
            f"{'ours':8}{mbps(payload, o_up):>14.0f}{mbps(payload, o_down):>16.0f}"
            f"{o_upc / gb:>14.2f}{o_downc / gb:>16.2f}   "
            f"(concurrency {args.concurrency}, {args.chunk_mib} MiB upload parts, sha256 verified)"
        )
        ratio = f"{b_up / o_up:>13.2f}x{b_down / o_down:>15.2f}x{b_upc / o_upc:>13.2f}x{b_downc / o_downc:>15.2f}x"
        print(f"{'ratio':8}{ratio}   (ours vs boto3; >1 is faster / cheaper)")
        print(
            f"re-put of the released bundle: {o_noop:.2f}s (already_stored={again.already_stored})"
        )
    finally:
        if rec is not None:
            process.stop(process.ProcInfo.from_dict(rec["proc"]))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
