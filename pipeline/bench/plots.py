"""PNG plots of a throughput run: output tok/s vs concurrency, and the TTFT CDF."""

from __future__ import annotations

from pathlib import Path

from pipeline.bench.harness import Point


def plot(points: list[Point], ttfts: dict[str, list[float]], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for (endpoint, workload) in sorted({(p.endpoint, p.workload) for p in points}):
        pts = sorted((p for p in points if p.endpoint == endpoint and p.workload == workload),
                     key=lambda p: p.concurrency)
        ax.plot([p.concurrency for p in pts], [p.output_tok_s for p in pts], marker="o",
                label=f"{endpoint} / {workload}")
    ax.set_xlabel("concurrency")
    ax.set_ylabel("output tokens/s")
    ax.set_title("Throughput vs concurrency")
    ax.legend()
    paths.append(out_dir / "throughput.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in sorted(ttfts.items()):
        if values:
            s = sorted(values)
            ax.step(s, [(i + 1) / len(s) for i in range(len(s))], where="post", label=name)
    ax.set_xlabel("TTFT (s)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("TTFT CDF")
    ax.legend()
    paths.append(out_dir / "ttft_cdf.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths
