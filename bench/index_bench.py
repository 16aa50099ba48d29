"""Benchmarks exact and ScaNN candidate search: recall, QPS, build, size.

For each catalogue size it builds ScaNN brute force and a grid of ScaNN
tree + asymmetric hashing + reorder configs through CandidateIndex, measures
them side by side in one process (repeats interleaved, medians reported) and
writes bench/results/index.json and a recall-vs-QPS plot. The figures set
candidate_service.index.choose_config.

    TF_USE_LEGACY_KERAS=1 .venv/bin/python -m bench.index_bench
"""

import argparse
import gc
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from candidate_service.index import (
    CandidateIndex,
    IndexConfig,
    choose_config,
    exact_search,
    recall_at_k,
)

_log = logging.getLogger("bench.index_bench")

# MovieLens 100K and 1M catalogues at the towers' width, then sizes between
# them and the synthetic large catalogues to locate where ScaNN starts to pay.
DEFAULT_SIZES = (
    "1682:32,3706:32,10000:32,20000:32,50000:32,100000:64,1000000:64"
)
DEFAULT_OUT = Path(__file__).parent / "results" / "index.json"
# Tree grid: num_leaves as a multiple of sqrt(n), the fraction of leaves
# searched per query, and how many AH candidates are re-scored exactly.
LEAVES_PER_SQRT_N = (0.5, 1.0, 2.0)
LEAVES_SEARCHED_FRACTIONS = (0.02, 0.05, 0.1, 0.2)
REORDERS = (100, 250)
TARGET_RECALL = 0.95
TARGET_SPEEDUP = 10.0


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """Parses "N:DIM,N:DIM" into [(n, dim)], for argparse."""
    sizes = []
    for item in text.split(","):
        try:
            n, dim = (int(part) for part in item.split(":"))
        except ValueError as e:
            raise argparse.ArgumentTypeError(
                f"sizes must look like 1682:32,100000:64; got {item!r}"
            ) from e
        if n < 2 or dim < 1:
            raise argparse.ArgumentTypeError(
                f"need n >= 2 and dim >= 1, got {item!r}"
            )
        sizes.append((n, dim))
    return sizes


def synthetic_embeddings(
    num_candidates: int, num_queries: int, dim: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draws candidate and query embeddings shaped like learned ones.

    Learned two-tower embeddings are not isotropic noise: they lie near a
    low-dimensional subspace, clump into groups (genres, eras) and their
    norms grow with popularity. Isotropic Gaussians would make every tree
    config look much worse than it does on real embeddings (a leaf's
    neighbours are then spread over all leaves), so this draws from a
    mixture of clusters in a rank dim/4 latent space, mapped to `dim` with
    a little full-rank noise and scaled by a log-normal norm. Queries come
    from the same mixture and map, with their own draws.

    Returns:
      (candidates, queries): float32 [num_candidates, dim] and
      [num_queries, dim].
    """
    rng = np.random.default_rng(seed)
    rank = max(2, dim // 4)
    num_clusters = 64
    centres = rng.standard_normal((num_clusters, rank))
    mapping = rng.standard_normal((rank, dim)) / math.sqrt(rank)

    def draw(count: int) -> np.ndarray:
        cluster = rng.integers(num_clusters, size=count)
        latent = centres[cluster] + 0.6 * rng.standard_normal((count, rank))
        points = latent @ mapping + 0.15 * rng.standard_normal((count, dim))
        norms = np.exp(0.3 * rng.standard_normal((count, 1)))
        return (points * norms).astype(np.float32)

    return draw(num_candidates), draw(num_queries)


def tree_configs(n: int) -> list[IndexConfig]:
    """The ScaNN tree + AH + reorder grid for a catalogue of n."""
    configs = []
    for factor in LEAVES_PER_SQRT_N:
        leaves = max(2, round(factor * math.sqrt(n)))
        searched = sorted(
            {max(1, round(f * leaves)) for f in LEAVES_SEARCHED_FRACTIONS}
        )
        for to_search in searched:
            for reorder in REORDERS:
                configs.append(
                    IndexConfig(
                        method="scann",
                        num_leaves=leaves,
                        num_leaves_to_search=to_search,
                        reorder=reorder,
                    )
                )
    return configs


def single_query_qps(search, queries: np.ndarray, budget_s: float) -> float:
    """Queries per second of one-at-a-time calls, cycling through queries
    for about budget_s (at least 20 calls)."""
    done, start = 0, time.perf_counter()
    while True:
        search(queries[done % len(queries)])
        done += 1
        elapsed = time.perf_counter() - start
        if done >= 20 and elapsed >= budget_s:
            return done / elapsed


def batched_qps(search, queries: np.ndarray) -> float:
    """Queries per second of one call over the whole batch."""
    start = time.perf_counter()
    search(queries)
    return len(queries) / (time.perf_counter() - start)


def directory_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def loaded_rss(directories: list[Path]) -> list[int]:
    """RSS growth of loading each saved index, in a fresh process.

    Measured apart from the benchmark so that the build's freed scratch
    memory, which the allocator keeps, does not blur the figure. Loaded
    indices are kept alive so that later loads cannot reuse their memory.
    """
    result = subprocess.run(
        [sys.executable, "-m", "bench.index_bench", "--rss-of"]
        + [str(d) for d in directories],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def _measure_rss_of(directories: list[str]) -> None:
    kept, deltas = [], []
    for directory in directories:
        gc.collect()
        before = _rss_bytes()
        kept.append(CandidateIndex.load(directory))
        deltas.append(_rss_bytes() - before)
    print(json.dumps(deltas))


class _Candidate:
    """One configuration under test and its measurements."""

    def __init__(self, index: CandidateIndex, build_s: float, built_id: int):
        self.index = index
        self.build_s = build_s
        self.built_id = built_id  # configs sharing a built tree share this
        self.runs: dict[str, list[float]] = {
            "qps": [],
            "qps_batched": [],
            "qps_batched_serial": [],
            "qps_batched_parallel": [],
        }

    def measure(self, queries: np.ndarray, k: int, budget_s: float) -> None:
        index, searcher = self.index, self.index._searcher
        kwargs = {"final_num_neighbors": k}
        if index.config.method == "scann":
            kwargs["leaves_to_search"] = index.config.num_leaves_to_search
            kwargs["pre_reorder_num_neighbors"] = max(index.config.reorder, k)
        self.runs["qps"].append(
            single_query_qps(lambda q: index.search(q, k), queries, budget_s)
        )
        self.runs["qps_batched"].append(
            batched_qps(lambda q: index.search(q, k), queries)
        )
        # The raw searcher, to compare ScaNN's two batch entry points
        # without CandidateIndex's choice between them.
        self.runs["qps_batched_serial"].append(
            batched_qps(lambda q: searcher.search_batched(q, **kwargs), queries)
        )
        self.runs["qps_batched_parallel"].append(
            batched_qps(
                lambda q: searcher.search_batched_parallel(q, **kwargs),
                queries,
            )
        )


def bench_size(
    n: int,
    dim: int,
    num_queries: int,
    repeats: int,
    budget_s: float,
    seed: int,
    workdir: Path,
) -> list[dict]:
    """Measures brute force and the tree grid at one catalogue size."""
    candidates, queries = synthetic_embeddings(n, num_queries, dim, seed)
    movie_ids = np.arange(1, n + 1, dtype=np.int64)
    titles = [f"movie {i}" for i in movie_ids.tolist()]

    exact_positions, _ = exact_search(candidates, queries, min(100, n))
    exact_ids = movie_ids[exact_positions]

    # Build brute force and one tree per num_leaves; the grid's
    # leaves_to_search and reorder are query-time settings on those trees.
    tested: list[_Candidate] = []
    saved: dict[int, Path] = {}
    builds = [IndexConfig(method="brute_force")]
    configs = tree_configs(n)
    for config in configs:
        if all(b.num_leaves != config.num_leaves for b in builds[1:]):
            builds.append(config)
    for built_id, config in enumerate(builds):
        start = time.perf_counter()
        index = CandidateIndex.build(movie_ids, titles, candidates, config)
        build_s = time.perf_counter() - start
        saved[built_id] = workdir / f"{n}_{built_id}"
        index.save(saved[built_id])
        _log.info("n=%d built %s in %.2fs", n, config, build_s)
        if config.method == "brute_force":
            tested.append(_Candidate(index, build_s, built_id))
            continue
        for variant in configs:
            if variant.num_leaves == config.num_leaves:
                tested.append(
                    _Candidate(
                        index.with_search_params(
                            variant.num_leaves_to_search, variant.reorder
                        ),
                        build_s,
                        built_id,
                    )
                )

    # Interleave repeats across configs so that a burst of noise on this
    # shared machine lands on all of them rather than on one.
    numpy_runs: dict[str, list[float]] = {"qps": [], "qps_batched": []}
    for repeat in range(repeats):
        for candidate in tested:
            candidate.measure(queries, 10, budget_s)
        numpy_runs["qps"].append(
            single_query_qps(
                lambda q: exact_search(candidates, q, 10), queries, budget_s
            )
        )
        numpy_runs["qps_batched"].append(
            batched_qps(lambda q: exact_search(candidates, q, 10), queries)
        )
        _log.info("n=%d repeat %d/%d done", n, repeat + 1, repeats)

    bytes_by_build = {b: directory_bytes(d) for b, d in saved.items()}
    rss = loaded_rss([saved[b] for b in sorted(saved)])
    rss_by_build = dict(zip(sorted(saved), rss))

    brute_force_qps = statistics.median(tested[0].runs["qps"])
    entries = []
    for candidate in tested:
        entries.append(
            _entry(
                candidate,
                queries,
                candidates,
                exact_ids,
                brute_force_qps,
                bytes_by_build[candidate.built_id],
                rss_by_build[candidate.built_id],
            )
        )
    entries[0]["numpy_qps"] = statistics.median(numpy_runs["qps"])
    entries[0]["numpy_qps_batched"] = statistics.median(
        numpy_runs["qps_batched"]
    )
    entries[0]["numpy_qps_runs"] = numpy_runs["qps"]
    return entries


def _entry(
    candidate: _Candidate,
    queries: np.ndarray,
    candidates: np.ndarray,
    exact_ids: np.ndarray,
    brute_force_qps: float,
    size_bytes: int,
    rss_bytes: int,
) -> dict:
    index = candidate.index
    found_10, _ = index.search(queries, 10)
    k_100 = min(100, index.size)
    found_100, scores_100 = index.search(queries, k_100)

    # Scores must be exact dot products; ids are positions + 1 here.
    rows = candidates[found_100 - 1]
    dots = np.einsum("bkd,bd->bk", rows, queries)
    medians = {k: statistics.median(v) for k, v in candidate.runs.items()}
    return {
        "n": index.size,
        "dim": index.dimension,
        "method": index.config.method,
        "config": index.config.to_dict(),
        "recall_at_10": recall_at_k(found_10, exact_ids, 10),
        "recall_at_100": recall_at_k(found_100, exact_ids, k_100),
        "qps": medians["qps"],
        "qps_batched": medians["qps_batched"],
        "qps_batched_serial": medians["qps_batched_serial"],
        "qps_batched_parallel": medians["qps_batched_parallel"],
        "brute_force_qps": brute_force_qps,
        "speedup": medians["qps"] / brute_force_qps,
        "build_s": candidate.build_s,
        "bytes": size_bytes,
        "rss_bytes": rss_bytes,
        "max_score_error": float(np.abs(scores_100 - dots).max()),
        "qps_runs": candidate.runs["qps"],
    }


def summarise(entries: list[dict]) -> dict:
    """Per size, the fastest tree config at recall@10 >= 0.95; the
    crossover size; and whether the 1M target was met."""
    per_size = []
    for n in sorted({e["n"] for e in entries}):
        at_n = [e for e in entries if e["n"] == n]
        good = [
            e
            for e in at_n
            if e["method"] == "scann" and e["recall_at_10"] >= TARGET_RECALL
        ]
        best = max(good, key=lambda e: e["qps"], default=None)
        per_size.append(
            {
                "n": n,
                "dim": at_n[0]["dim"],
                "brute_force_qps": at_n[0]["brute_force_qps"],
                "best_scann": None if best is None else best["config"],
                "best_scann_qps": None if best is None else best["qps"],
                "best_scann_recall_at_10": (
                    None if best is None else best["recall_at_10"]
                ),
                "best_scann_speedup": None if best is None else best["speedup"],
                "chosen": choose_config(n, at_n[0]["dim"]).to_dict(),
            }
        )

    # The crossover is the smallest size from which ScaNN at target recall
    # beats brute force at every larger benchmarked size too.
    crossover = None
    for row in reversed(per_size):
        if row["best_scann_speedup"] is None or row["best_scann_speedup"] <= 1:
            break
        crossover = row["n"]

    million = [
        row for row in per_size if row["n"] == 1_000_000 and row["dim"] == 64
    ]
    target = None
    if million:
        speedup = million[0]["best_scann_speedup"]
        target = {
            "recall_at_10": TARGET_RECALL,
            "speedup": TARGET_SPEEDUP,
            "met": speedup is not None and speedup >= TARGET_SPEEDUP,
        }
    return {
        "per_size": per_size,
        "crossover_n": crossover,
        "target_1m_x_64": target,
    }


def format_table(entries: list[dict]) -> str:
    header = (
        f"{'n':>8} {'dim':>3} {'method':<11} {'leaves':>6} {'search':>6} "
        f"{'reord':>5} {'r@10':>6} {'r@100':>6} {'qps':>9} {'qps_batch':>9} "
        f"{'x bf':>6} {'build_s':>7} {'MiB':>7}"
    )
    lines = [header, "-" * len(header)]
    for e in entries:
        c = e["config"]
        lines.append(
            f"{e['n']:>8} {e['dim']:>3} {e['method']:<11} "
            f"{c['num_leaves'] or '-':>6} {c['num_leaves_to_search'] or '-':>6} "
            f"{c['reorder'] or '-':>5} {e['recall_at_10']:>6.3f} "
            f"{e['recall_at_100']:>6.3f} {e['qps']:>9.0f} "
            f"{e['qps_batched']:>9.0f} {e['speedup']:>6.1f} "
            f"{e['build_s']:>7.2f} {e['bytes'] / 2**20:>7.1f}"
        )
    return "\n".join(lines)


def plot(entries: list[dict], path: Path) -> None:
    """Recall@10 against single-query QPS (log x), one panel per size."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers or CI
    import matplotlib.pyplot as plt

    sizes = sorted({(e["n"], e["dim"]) for e in entries})
    cols = min(3, len(sizes))
    rows = math.ceil(len(sizes) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(5 * cols, 4 * rows), squeeze=False
    )
    for ax, (n, dim) in zip(axes.flat, sizes):
        at_n = [e for e in entries if (e["n"], e["dim"]) == (n, dim)]
        groups = sorted(
            {
                (e["config"]["num_leaves"], e["config"]["reorder"])
                for e in at_n
                if e["method"] == "scann"
            }
        )
        for leaves, reorder in groups:
            points = sorted(
                (e["qps"], e["recall_at_10"])
                for e in at_n
                if e["config"]["num_leaves"] == leaves
                and e["config"]["reorder"] == reorder
            )
            ax.plot(
                *zip(*points),
                marker="o",
                label=f"scann leaves={leaves} reorder={reorder}",
            )
        brute = at_n[0]
        ax.plot(
            brute["qps"],
            brute["recall_at_10"],
            marker="*",
            markersize=14,
            color="black",
            linestyle="none",
            label="brute force",
        )
        ax.axhline(TARGET_RECALL, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_title(f"n={n:,} dim={dim}")
        ax.set_xlabel("single-query QPS (log)")
        ax.set_ylabel("recall@10 vs exact")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(sizes) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine_info() -> dict:
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = None
    try:
        with open("/proc/meminfo") as f:
            memory = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_bytes": memory,
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scann": metadata.version("scann"),
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=parse_sizes(DEFAULT_SIZES),
        help="catalogue sizes as N:DIM, comma separated (default "
        f"{DEFAULT_SIZES})",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timing repeats (medians)"
    )
    parser.add_argument(
        "--queries", type=int, default=1000, help="queries per size"
    )
    parser.add_argument(
        "--single-seconds",
        type=float,
        default=0.25,
        help="time spent per single-query QPS measurement",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="JSON results; the plot goes beside it as "
        "index_recall_vs_qps.png",
    )
    parser.add_argument("--rss-of", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_of:
        _measure_rss_of(args.rss_of)
        return
    if args.repeats < 1 or args.queries < 1:
        parser.error("--repeats and --queries must be >= 1")

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    started = time.perf_counter()
    machine = machine_info()
    entries = []
    with tempfile.TemporaryDirectory(prefix="index_bench_") as workdir:
        for n, dim in args.sizes:
            size_dir = Path(workdir) / f"{n}x{dim}"
            size_dir.mkdir()
            entries += bench_size(
                n,
                dim,
                args.queries,
                args.repeats,
                args.single_seconds,
                # Same seed per size: each catalogue is drawn independently.
                args.seed,
                size_dir,
            )
            _log.info(
                "n=%d done after %.0fs", n, time.perf_counter() - started
            )

    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "index": entries,
        "summary": summarise(entries),
        "machine": machine,
        "settings": {
            "queries": args.queries,
            "repeats": args.repeats,
            "single_seconds": args.single_seconds,
            "seed": args.seed,
            "k_for_qps": 10,
            "data": "synthetic clustered low-rank embeddings, see "
            "synthetic_embeddings()",
        },
        "total_s": time.perf_counter() - started,
        "command": "TF_USE_LEGACY_KERAS=1 python -m bench.index_bench "
        + " ".join(sys.argv[1:] if argv is None else argv),
    }
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    plot(entries, out.with_name("index_recall_vs_qps.png"))

    print(format_table(entries))
    print(json.dumps(result["summary"], indent=1))
    print(f"total {result['total_s']:.0f}s; wrote {out}")


if __name__ == "__main__":
    main()
