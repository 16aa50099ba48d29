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
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
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
PLOT_NAME = "index_recall_vs_qps.png"
# Tree grid: num_leaves as a multiple of sqrt(n), the fraction of leaves
# searched per query, and how many AH candidates are re-scored exactly.
LEAVES_PER_SQRT_N = (0.5, 1.0, 2.0)
LEAVES_SEARCHED_FRACTIONS = (0.01, 0.02, 0.05, 0.1)
REORDERS = (100, 300, 1000)
TARGET_RECALL = 0.95
TARGET_SPEEDUP = 10.0
# ScaNN "pays" once it is this much faster than brute force at the target
# recall: below that it saves microseconds a query (less than one RPC costs)
# and gives up exactness for them.
CROSSOVER_SPEEDUP = 2.0


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


def tree_configs(n: int, dim: int) -> list[IndexConfig]:
    """The ScaNN tree + AH + reorder grid for a catalogue of n, plus the
    config choose_config picks if that is a tree one."""
    chosen = choose_config(n, dim)
    configs = [chosen] if chosen.method == "scann" else []
    for factor in LEAVES_PER_SQRT_N:
        leaves = max(2, round(factor * math.sqrt(n)))
        searched = sorted(
            {max(1, round(f * leaves)) for f in LEAVES_SEARCHED_FRACTIONS}
        )
        for to_search in searched:
            for reorder in REORDERS:
                config = IndexConfig(
                    method="scann",
                    num_leaves=leaves,
                    num_leaves_to_search=to_search,
                    reorder=reorder,
                )
                if config != chosen:
                    configs.append(config)
    return configs


def single_query_qps(
    search, queries: np.ndarray, budget_s: float
) -> tuple[float, float]:
    """Queries per second of one-at-a-time calls, cycling through queries
    for about budget_s (at least 20 calls).

    Returns:
      (wall, cpu): per second of wall time, and per second of this
      process's CPU time. Other jobs on a shared machine deschedule us and
      lower the first; the second counts only time spent searching.
    """
    done = 0
    start, start_cpu = time.perf_counter(), time.process_time()
    while True:
        search(queries[done % len(queries)])
        done += 1
        elapsed = time.perf_counter() - start
        if done >= 20 and elapsed >= budget_s:
            cpu = max(time.process_time() - start_cpu, 1e-9)
            return done / elapsed, done / cpu


def threaded_qps(
    search, queries: np.ndarray, budget_s: float, threads: int
) -> float:
    """Queries per second of one-at-a-time calls from several threads, as a
    threaded server makes them."""
    counts = [0] * threads

    def work(slot: int) -> None:
        start = time.perf_counter()
        done = 0
        while done < 20 or time.perf_counter() - start < budget_s:
            search(queries[(slot + done * threads) % len(queries)])
            done += 1
        counts[slot] = done

    start = time.perf_counter()
    workers = [
        threading.Thread(target=work, args=(slot,)) for slot in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - start)


def batched_qps(search, queries: np.ndarray, budget_s: float) -> float:
    """Queries per second of calls over the whole batch, repeated for about
    budget_s (at least one call)."""
    calls, start = 0, time.perf_counter()
    while True:
        search(queries)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s:
            return calls * len(queries) / elapsed


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

    def __init__(
        self,
        index: CandidateIndex,
        build_s: float,
        built_id: int,
        compare_entry_points: bool,
    ):
        self.index = index
        self.build_s = build_s
        self.built_id = built_id  # configs sharing a built tree share this
        self.chosen = index.config == choose_config(
            index.size, index.dimension
        )
        self.compare_entry_points = compare_entry_points
        self.runs: dict[str, list[float]] = {
            "qps": [],
            "qps_cpu": [],
            "qps_batched": [],
        }
        if compare_entry_points:
            self.runs["qps_two_threads"] = []
            self.runs["qps_batched_serial"] = []
            self.runs["qps_batched_parallel"] = []

    def measure(
        self, queries: np.ndarray, k: int, single_s: float, batched_s: float
    ) -> None:
        index = self.index
        wall, cpu = single_query_qps(
            lambda q: index.search(q, k), queries, single_s
        )
        self.runs["qps"].append(wall)
        self.runs["qps_cpu"].append(cpu)
        self.runs["qps_batched"].append(
            batched_qps(lambda q: index.search(q, k), queries, batched_s)
        )
        if not self.compare_entry_points:
            return

        self.runs["qps_two_threads"].append(
            threaded_qps(lambda q: index.search(q, k), queries, single_s, 2)
        )
        # ScaNN's two batch entry points called directly, without
        # CandidateIndex's choice between them (hence the private access).
        searcher = index._searcher
        kwargs = {"final_num_neighbors": k}
        if index.config.method == "scann":
            kwargs["leaves_to_search"] = index.config.num_leaves_to_search
            kwargs["pre_reorder_num_neighbors"] = max(index.config.reorder, k)
        self.runs["qps_batched_serial"].append(
            batched_qps(
                lambda q: searcher.search_batched(q, **kwargs),
                queries,
                batched_s,
            )
        )
        self.runs["qps_batched_parallel"].append(
            batched_qps(
                lambda q: searcher.search_batched_parallel(q, **kwargs),
                queries,
                batched_s,
            )
        )


def bench_size(
    n: int,
    dim: int,
    num_queries: int,
    repeats: int,
    single_s: float,
    batched_s: float,
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
    configs = tree_configs(n, dim)
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
            tested.append(_Candidate(index, build_s, built_id, True))
            continue
        for variant in configs:
            if variant.num_leaves == config.num_leaves:
                variant_index = index.with_search_params(
                    variant.num_leaves_to_search, variant.reorder
                )
                chosen = variant == choose_config(n, dim)
                tested.append(
                    _Candidate(variant_index, build_s, built_id, chosen)
                )

    # Interleave repeats across configs so that a burst of noise on this
    # shared machine lands on all of them rather than on one.
    numpy_runs: dict[str, list[float]] = {"qps": [], "qps_batched": []}
    for repeat in range(repeats):
        for candidate in tested:
            candidate.measure(queries, 10, single_s, batched_s)
        numpy_runs["qps"].append(
            single_query_qps(
                lambda q: exact_search(candidates, q, 10), queries, single_s
            )[0]
        )
        numpy_runs["qps_batched"].append(
            batched_qps(
                lambda q: exact_search(candidates, q, 10), queries, batched_s
            )
        )
        _log.info("n=%d repeat %d/%d done", n, repeat + 1, repeats)

    bytes_by_build = {b: directory_bytes(d) for b, d in saved.items()}
    rss = loaded_rss([saved[b] for b in sorted(saved)])
    rss_by_build = dict(zip(sorted(saved), rss))

    entries = []
    for candidate in tested:
        entries.append(
            _entry(
                candidate,
                tested[0],
                queries,
                candidates,
                exact_ids,
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


def _speedup(runs: list[float], brute_force_runs: list[float]) -> float:
    # Ratios within a repeat compare measurements seconds apart, which a
    # burst of load on the shared machine hits alike; then the median.
    return statistics.median(r / b for r, b in zip(runs, brute_force_runs))


def _entry(
    candidate: _Candidate,
    brute_force: _Candidate,
    queries: np.ndarray,
    candidates: np.ndarray,
    exact_ids: np.ndarray,
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
    error = np.abs(scores_100 - dots)
    medians = {k: statistics.median(v) for k, v in candidate.runs.items()}
    return {
        "n": index.size,
        "dim": index.dimension,
        "method": index.config.method,
        "config": index.config.to_dict(),
        "chosen": candidate.chosen,
        "recall_at_10": recall_at_k(found_10, exact_ids, 10),
        "recall_at_100": recall_at_k(found_100, exact_ids, k_100),
        "qps": medians["qps"],
        "qps_cpu": medians["qps_cpu"],
        "qps_batched": medians["qps_batched"],
        "qps_two_threads": medians.get("qps_two_threads"),
        "qps_batched_serial": medians.get("qps_batched_serial"),
        "qps_batched_parallel": medians.get("qps_batched_parallel"),
        "brute_force_qps": statistics.median(brute_force.runs["qps"]),
        "speedup": _speedup(candidate.runs["qps"], brute_force.runs["qps"]),
        "speedup_cpu": _speedup(
            candidate.runs["qps_cpu"], brute_force.runs["qps_cpu"]
        ),
        "build_s": candidate.build_s,
        "bytes": size_bytes,
        "rss_bytes": rss_bytes,
        "max_score_error": float(error.max()),
        # Relative to the largest score, since scores near 0 make a
        # per-score ratio meaningless.
        "max_score_relative_error": float(error.max() / np.abs(dots).max()),
        "qps_runs": candidate.runs["qps"],
        "brute_force_qps_runs": brute_force.runs["qps"],
    }


def summarise(entries: list[dict]) -> dict:
    """Per size, the fastest tree config at recall@10 >= 0.95 and how the
    chosen config did; the crossover size; and whether the 1M target was
    met."""
    per_size = []
    for n in sorted({e["n"] for e in entries}):
        at_n = [e for e in entries if e["n"] == n]
        good = [
            e
            for e in at_n
            if e["method"] == "scann" and e["recall_at_10"] >= TARGET_RECALL
        ]
        best = max(good, key=lambda e: e["qps"], default=None)
        chosen = next(e for e in at_n if e["chosen"])
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
                "best_scann_speedup_cpu": (
                    None if best is None else best["speedup_cpu"]
                ),
                "chosen": chosen["config"],
                "chosen_recall_at_10": chosen["recall_at_10"],
                "chosen_qps": chosen["qps"],
                "chosen_speedup": chosen["speedup"],
                "chosen_speedup_cpu": chosen["speedup_cpu"],
            }
        )

    # The crossover is the smallest size from which ScaNN at target recall
    # is CROSSOVER_SPEEDUP times faster than brute force at every larger
    # benchmarked size too; faster_from_n is the same for any speedup.
    def from_n(threshold: float) -> int | None:
        found = None
        for row in reversed(per_size):
            speedup = row["best_scann_speedup"]
            if speedup is None or speedup <= threshold:
                break
            found = row["n"]
        return found

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
        "crossover_n": from_n(CROSSOVER_SPEEDUP),
        "crossover_speedup": CROSSOVER_SPEEDUP,
        "faster_from_n": from_n(1.0),
        "target_1m_x_64": target,
    }


def format_table(entries: list[dict]) -> str:
    header = (
        f"{'n':>8} {'dim':>3} {'method':<12} {'leaves':>6} {'search':>6} "
        f"{'reord':>5} {'r@10':>6} {'r@100':>6} {'qps':>9} {'qps_batch':>9} "
        f"{'x bf':>6} {'cpu x':>6} {'build_s':>7} {'MiB':>7}"
    )
    lines = [header, "-" * len(header)]
    for e in entries:
        c = e["config"]
        lines.append(
            f"{e['n']:>8} {e['dim']:>3} "
            f"{e['method'] + ('*' if e['chosen'] else ''):<12} "
            f"{c['num_leaves'] or '-':>6} "
            f"{c['num_leaves_to_search'] or '-':>6} "
            f"{c['reorder'] or '-':>5} {e['recall_at_10']:>6.3f} "
            f"{e['recall_at_100']:>6.3f} {e['qps']:>9.0f} "
            f"{e['qps_batched']:>9.0f} {e['speedup']:>6.1f} "
            f"{e['speedup_cpu']:>6.1f} "
            f"{e['build_s']:>7.2f} {e['bytes'] / 2**20:>7.1f}"
        )
    lines.append("* the config choose_config picks at that size")
    return "\n".join(lines)


def plot(entries: list[dict], path: Path) -> None:
    """Recall@10 against single-query QPS (log x), one panel per size, and
    a last panel of QPS against catalogue size."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers or CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    sizes = sorted({(e["n"], e["dim"]) for e in entries})
    cols = 3
    rows = math.ceil((len(sizes) + 1) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(5 * cols, 4 * rows), squeeze=False
    )
    for ax, (n, dim) in zip(axes.flat, sizes):
        at_n = [e for e in entries if (e["n"], e["dim"]) == (n, dim)]
        _plot_size(ax, at_n)
        ax.set_title(f"n={n:,} dim={dim}")
    _plot_scaling(axes.flat[len(sizes)], entries)
    for ax in list(axes.flat)[: len(sizes) + 1]:
        low, high = ax.get_xlim()
        if high / low > 10:  # minor labels collide over several decades
            ax.xaxis.set_minor_formatter(NullFormatter())
    for ax in list(axes.flat)[len(sizes) + 1 :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_size(ax, at_n: list[dict]) -> None:
    # One curve per built tree and reorder, traced by leaves searched.
    tree = [e for e in at_n if e["method"] == "scann" and not e["chosen"]]
    groups = sorted(
        {(e["config"]["num_leaves"], e["config"]["reorder"]) for e in tree}
    )
    for leaves, reorder in groups:
        points = sorted(
            (e["config"]["num_leaves_to_search"], e["qps"], e["recall_at_10"])
            for e in tree
            if (e["config"]["num_leaves"], e["config"]["reorder"])
            == (leaves, reorder)
        )
        ax.plot(
            [p[1] for p in points],
            [p[2] for p in points],
            marker="o",
            markersize=4,
            label=f"leaves={leaves} reorder={reorder}",
        )
    for e in at_n:
        if e["chosen"]:
            ax.plot(
                e["qps"],
                e["recall_at_10"],
                marker="*" if e["method"] == "brute_force" else "D",
                markersize=12,
                color="red",
                linestyle="none",
                label=f"chosen: {e['method']}",
            )
        elif e["method"] == "brute_force":
            ax.plot(
                e["qps"],
                e["recall_at_10"],
                marker="*",
                markersize=12,
                color="black",
                linestyle="none",
                label="brute_force",
            )
    ax.axhline(TARGET_RECALL, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("single-query QPS (log)")
    ax.set_ylabel("recall@10 vs exact")
    ax.legend(fontsize=6)


def _plot_scaling(ax, entries: list[dict]) -> None:
    sizes = sorted({e["n"] for e in entries})
    brute = [
        next(
            e["qps"]
            for e in entries
            if e["n"] == n and e["method"] == "brute_force"
        )
        for n in sizes
    ]
    best = []
    for n in sizes:
        good = [
            e["qps"]
            for e in entries
            if e["n"] == n
            and e["method"] == "scann"
            and e["recall_at_10"] >= TARGET_RECALL
        ]
        best.append(max(good) if good else float("nan"))
    chosen = [
        next(e["qps"] for e in entries if e["n"] == n and e["chosen"])
        for n in sizes
    ]
    ax.plot(sizes, brute, marker="*", color="black", label="brute_force")
    ax.plot(
        sizes,
        best,
        marker="o",
        label=f"fastest scann at recall@10 >= {TARGET_RECALL}",
    )
    ax.plot(sizes, chosen, marker="D", color="red", label="chosen config")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title("single-query QPS by catalogue size")
    ax.set_xlabel("candidates n (log)")
    ax.set_ylabel("single-query QPS (log)")
    ax.legend(fontsize=7)


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
        prog="python -m bench.index_bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=DEFAULT_SIZES,  # argparse parses a string default too
        help="catalogue sizes as N:DIM, comma separated",
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
        default=0.15,
        help="time per single-query QPS measurement",
    )
    parser.add_argument(
        "--batched-seconds",
        type=float,
        default=0.05,
        help="time per batched QPS measurement (at least one batch)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the synthetic data"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="JSON results; the plot goes beside it as "
        "index_recall_vs_qps.png",
    )
    parser.add_argument(
        "--replot",
        action="store_true",
        help="only redraw the plot from the results already in --out",
    )
    parser.add_argument("--rss-of", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_of:
        _measure_rss_of(args.rss_of)
        return
    if args.replot:
        results = json.loads(args.out.read_text(encoding="utf-8"))
        plot(results["index"], args.out.with_name(PLOT_NAME))
        return
    if args.repeats < 1 or args.queries < 1:
        parser.error("--repeats and --queries must be >= 1")

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    # Exit through the with-blocks on SIGTERM too, so the saved indices
    # (over a GiB at 1M candidates) are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
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
                args.batched_seconds,
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
            "batched_seconds": args.batched_seconds,
            "seed": args.seed,
            "k_for_qps": 10,
            "data": "synthetic clustered low-rank embeddings, see "
            "synthetic_embeddings()",
            "notes": [
                "qps: one query per CandidateIndex.search call, one thread, "
                "per second of wall time; qps_cpu: the same per second of "
                "the process's CPU time, less sensitive to other jobs on "
                "the machine; speedup: median over repeats of qps over "
                "brute force's qps in the same repeat; "
                "qps_two_threads: the same from two threads at once; "
                "qps_batched: all queries in one call (ScaNN's parallel "
                "entry point from 512 queries); the _serial/_parallel "
                "fields call ScaNN's two entry points directly",
                "recall_at_100 of a config whose searched leaves hold fewer "
                "than 100 candidates includes CandidateIndex's fall back to "
                "searching every leaf, so it can exceed recall_at_10",
                "build_s is one build; configs differing only in "
                "num_leaves_to_search or reorder share it, those being "
                "query-time settings",
                "bytes: files of the saved index; rss_bytes: RSS growth of a "
                "fresh process loading it",
            ],
        },
        "load_average_at_end": os.getloadavg(),
        "total_s": time.perf_counter() - started,
        "command": " ".join(
            ["TF_USE_LEGACY_KERAS=1 python -m bench.index_bench"]
            + (sys.argv[1:] if argv is None else argv)
        ),
    }
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    plot(entries, out.with_name(PLOT_NAME))

    print(format_table(entries))
    print(json.dumps(result["summary"], indent=1))
    print(f"total {result['total_s']:.0f}s; wrote {out}")


if __name__ == "__main__":
    main()
