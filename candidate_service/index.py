"""Nearest-neighbour search over candidate embeddings with ScaNN.

This is the search layer of the candidate service: it knows embeddings, movie
ids and titles, and nothing of gRPC. An index is built from the candidate
tower's output, saved next to the model version and loaded by the server.

On disk an index is a directory holding

    scann/               ScaNN's own serialization of the searcher
    candidates.json      movie ids and titles, in database order
    index_config.json    the IndexConfig, the dimension and file checksums

No pickle is involved, so loading an index never executes code from disk.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from scann import scann_ops_pybind

from model_store import digest

METHODS = ("brute_force", "scann")

SCANN_DIR = "scann"
CANDIDATES_FILE = "candidates.json"
CONFIG_FILE = "index_config.json"
# The float32 embeddings inside ScaNN's serialization: brute force scores
# them and reordering re-scores with them, so every index has it.
_DATASET_FILE = "dataset.npy"
_FORMAT_VERSION = 1

# The thresholds and parameters below come from bench/index_bench.py; the
# figures they rest on are in bench/results/index.json (synthetic clustered
# embeddings, 2 cores; rerun and revisit when hardware, ScaNN or the towers
# change).
#
# ScaNN's tree pays from the catalogue size where, at recall@10 >= 0.95, it
# answers single queries at least twice as fast as exact brute force: 10,000
# candidates (2.8x at best, 2.0x for the config below). At 3,706 (MovieLens
# 1M) no tree config in the grid reached 0.95 recall, and brute force costs
# ~20 us a query anyway; both MovieLens catalogues are searched exactly.
_SCANN_MIN_CANDIDATES = 10_000
# num_leaves = sqrt(n); searching max(16, 2% of the leaves) and re-scoring
# the best 300 exactly gave recall@10 0.985 / 0.989 / 0.981 / 0.982 / 0.967 at
# 10k / 20k / 50k / 100k / 1M candidates, 2x / 5x / 11x / 32x / 160x brute
# force's single-query QPS. At 1M the limit is the AH ranking, not the
# leaves: reorder 1000 lifts recall to 0.987 at 0.7x the QPS.
_LEAVES_PER_SQRT_N = 1.0
_LEAVES_SEARCHED_FRACTION = 0.02
_MIN_LEAVES_SEARCHED = 16
_REORDER = 300
# k-means and the AH codebooks train on a sample of at most this many
# candidates, which bounds a 1M-candidate build at ~12 s on 2 cores.
_TRAINING_SAMPLE_SIZE = 100_000
# From two chunks of this many queries up, search_batched_parallel runs one
# chunk per thread; on 1,000-query batches it nearly doubles throughput on
# 2 cores at large catalogues (1M x 64: 21.6k -> 40.6k QPS). Smaller batches
# have nothing to split and run on the calling thread.
_PARALLEL_CHUNK = 256
# exact_search scores blocks of up to _EXACT_QUERY_BLOCK queries against
# chunks of candidates, at most _EXACT_BLOCK_SCORES float32 scores (64 MiB)
# at a time whatever the catalogue size. Many queries per chunk keep the
# matmul compute-bound: with few, each pass re-reads the embeddings.
_EXACT_BLOCK_SCORES = 1 << 24
_EXACT_QUERY_BLOCK = 1024


class IndexLoadError(ValueError):
    """A saved index cannot be loaded.

    Attributes:
      path: the file or directory at fault.
      reason: what is wrong with it.
      message: the full message, naming both.
    """

    def __init__(self, path: os.PathLike | str, reason: str):
        self.path = Path(path)
        self.reason = reason
        self.message = f"cannot load candidate index from {self.path}: {reason}"
        super().__init__(self.message)


def _check_int(name: str, value: Any, minimum: int) -> None:
    # bool is an int subclass; True leaves is a bug, not 1 leaf.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"{name} must be an integer >= {minimum}, got {value!r}"
        )
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    """How to search: exactly, or with a ScaNN tree and quantized scoring.

    Attributes:
      method: "brute_force" scores every candidate exactly; "scann"
        partitions candidates into leaves with k-means, scores the searched
        leaves with asymmetric hashing (AH) and re-scores the best ones
        exactly.
      num_leaves: k-means partitions ("scann" only).
      num_leaves_to_search: partitions visited per query ("scann" only).
      dims_per_block: dimensions per AH codebook block ("scann" only).
      anisotropic_quantization_threshold: ScaNN's anisotropic loss threshold
        for the AH codebooks ("scann" only).
      reorder: candidates re-scored with exact dot products, so that returned
        scores are exact ("scann" only, required there).

    Raises:
      ValueError: on construction, naming the bad value and what is allowed.
    """

    method: str
    num_leaves: int | None = None
    num_leaves_to_search: int | None = None
    dims_per_block: int = 2
    anisotropic_quantization_threshold: float = 0.2
    reorder: int | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(
                f"method must be one of {', '.join(METHODS)}, got "
                f"{self.method!r}"
            )
        # Checked for brute force too, though unused there: a bad value is
        # a bug wherever it appears.
        _check_int("dims_per_block", self.dims_per_block, 1)
        threshold = self.anisotropic_quantization_threshold
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float))
            or not math.isfinite(threshold)
            or threshold <= 0
        ):
            raise ValueError(
                "anisotropic_quantization_threshold must be a positive finite "
                f"number, got {threshold!r}"
            )
        if self.method == "brute_force":
            tree_fields = ("num_leaves", "num_leaves_to_search", "reorder")
            given = [f for f in tree_fields if getattr(self, f) is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} only apply to method 'scann'; leave "
                    "them None for 'brute_force'"
                )
            return

        if self.num_leaves is None or self.num_leaves_to_search is None:
            raise ValueError(
                "method 'scann' needs num_leaves and num_leaves_to_search, "
                f"got {self.num_leaves!r} and {self.num_leaves_to_search!r}"
            )
        _check_int("num_leaves", self.num_leaves, 1)
        _check_int("num_leaves_to_search", self.num_leaves_to_search, 1)
        if self.num_leaves_to_search > self.num_leaves:
            raise ValueError(
                f"num_leaves_to_search must be in [1, num_leaves="
                f"{self.num_leaves}], got {self.num_leaves_to_search}"
            )
        # Without reordering, scores are AH approximations; callers are
        # promised exact dot products.
        if self.reorder is None:
            raise ValueError(
                "method 'scann' needs reorder (an integer >= 1) so that "
                "returned scores are exact dot products, got None"
            )
        _check_int("reorder", self.reorder, 1)

    def to_dict(self) -> dict[str, Any]:
        """Returns the config as a JSON-ready dict (for manifests)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexConfig:
        """Rebuilds a config written by `to_dict`.

        Raises:
          ValueError: `data` is not a dict, has unknown or missing keys, or
            holds a bad value.
        """
        if not isinstance(data, dict):
            raise ValueError(
                f"an index config must be a dict, got {type(data).__name__}"
            )
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown index config keys {unknown}; allowed keys are "
                f"{allowed}"
            )
        if "method" not in data:
            raise ValueError(
                f"index config has no 'method' (one of {', '.join(METHODS)})"
            )
        return cls(**data)


def choose_config(num_candidates: int, dimension: int) -> IndexConfig:
    """Picks the index config for a catalogue, from the benchmark's findings.

    Args:
      num_candidates: how many candidate embeddings the index will hold.
      dimension: the embedding dimension.

    Returns:
      Brute force below 10,000 candidates (MovieLens 100K's and 1M's
      catalogues among them), where ScaNN's tree gains too little to give
      up exactness; otherwise a ScaNN tree + AH + reorder config tuned for
      recall@10 >= 0.95.

    Raises:
      ValueError: num_candidates or dimension is below 1.
    """
    _check_int("num_candidates", num_candidates, 1)
    _check_int("dimension", dimension, 1)
    # The dimension does not enter: the benchmark ran at 32 and 64 only,
    # and both brute force's and AH's cost grow linearly with it, so the
    # crossover stays a catalogue size. Beyond 1M candidates the rule is
    # extrapolated, not measured.
    if num_candidates < _SCANN_MIN_CANDIDATES:
        return IndexConfig(method="brute_force")

    num_leaves = max(1, round(_LEAVES_PER_SQRT_N * math.sqrt(num_candidates)))
    to_search = max(
        _MIN_LEAVES_SEARCHED,
        math.ceil(_LEAVES_SEARCHED_FRACTION * num_leaves),
    )
    return IndexConfig(
        method="scann",
        num_leaves=num_leaves,
        num_leaves_to_search=min(num_leaves, to_search),
        reorder=_REORDER,
    )


def _as_embeddings(embeddings: Any, name: str) -> np.ndarray:
    array = np.ascontiguousarray(embeddings, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(
            f"{name} must be a non-empty float32 array of shape [n, d], got "
            f"shape {array.shape}"
        )
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite; found NaN or infinity")
    return array


def _as_queries(queries: Any, dimension: int) -> np.ndarray:
    array = np.asarray(queries, dtype=np.float32)
    if array.ndim == 1:
        array = array[np.newaxis, :]
    if array.ndim != 2 or array.shape[1] != dimension:
        raise ValueError(
            f"queries must have shape [batch, {dimension}] or [{dimension}], "
            f"got {np.shape(queries)}"
        )
    if not np.isfinite(array).all():
        raise ValueError("queries must be finite; found NaN or infinity")
    return np.ascontiguousarray(array)


def _check_k(k: Any, size: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer in [1, {size}], got {k!r}")
    if not 1 <= k <= size:
        raise ValueError(
            f"k must be in [1, {size}] (the number of candidates), got {k}"
        )


def exact_search(
    embeddings: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by dot product, in NumPy: the reference for every index.

    Args:
      embeddings: candidate embeddings, float32 [n, d].
      queries: query embeddings, float32 [batch, d] or [d].
      k: results per query, in [1, n].

    Returns:
      (indices, scores): int64 [batch, k] positions into `embeddings` and
      float32 [batch, k] dot products, best first.

    Raises:
      ValueError: bad shapes, non-finite values, or k outside [1, n].
    """
    embeddings = _as_embeddings(embeddings, "embeddings")
    queries = _as_queries(queries, embeddings.shape[1])
    n = embeddings.shape[0]
    _check_k(k, n)

    # A chunk holds at least k candidates, so one chunk's top k is defined.
    chunk = min(n, max(k, _EXACT_BLOCK_SCORES // _EXACT_QUERY_BLOCK))
    block = max(1, min(_EXACT_QUERY_BLOCK, _EXACT_BLOCK_SCORES // chunk))
    indices = np.empty((queries.shape[0], k), dtype=np.int64)
    scores = np.empty((queries.shape[0], k), dtype=np.float32)
    for start in range(0, queries.shape[0], block):
        rows = slice(start, start + block)
        top, top_scores = _exact_block(embeddings, queries[rows], k, chunk)

        order = np.argsort(-top_scores, axis=1, kind="stable")
        indices[rows] = np.take_along_axis(top, order, axis=1)
        scores[rows] = np.take_along_axis(top_scores, order, axis=1)
    return indices, scores


def _exact_block(
    embeddings: np.ndarray, queries: np.ndarray, k: int, chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """The unordered top k of a query block, merged chunk by chunk."""
    best = best_scores = None
    for first in range(0, embeddings.shape[0], chunk):
        chunk_scores = queries @ embeddings[first : first + chunk].T
        top = _largest_columns(chunk_scores, k)
        top_scores = np.take_along_axis(chunk_scores, top, axis=1)
        top += first
        if best is not None:
            top = np.concatenate([best, top], axis=1)
            top_scores = np.concatenate([best_scores, top_scores], axis=1)
            keep = _largest_columns(top_scores, k)
            top = np.take_along_axis(top, keep, axis=1)
            top_scores = np.take_along_axis(top_scores, keep, axis=1)
        best, best_scores = top, top_scores
    return best, best_scores


def _largest_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k largest scores, unordered; all
    columns when a row has no more than k."""
    width = scores.shape[1]
    if width <= k:
        return np.broadcast_to(np.arange(width), scores.shape).copy()
    # argpartition keeps the k best in O(width) without sorting them;
    # partitioning at width - k avoids negating (copying) the scores.
    return np.argpartition(scores, width - k, axis=1)[:, width - k :]


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Mean over queries of |approx top-k & exact top-k| / k.

    Args:
      approx_ids: ids found by the index, [batch, >= k], best first.
      exact_ids: the exact answer's ids, [batch, >= k], best first.
      k: the cut-off.

    Raises:
      ValueError: k < 1, the batches differ, or either has fewer than k
        columns.
    """
    approx_ids, exact_ids = np.asarray(approx_ids), np.asarray(exact_ids)
    if isinstance(k, np.integer):
        k = int(k)
    _check_int("k", k, 1)
    if approx_ids.ndim != 2 or exact_ids.ndim != 2:
        raise ValueError(
            f"ids must be 2-D [batch, k], got shapes {approx_ids.shape} and "
            f"{exact_ids.shape}"
        )
    if approx_ids.shape[0] != exact_ids.shape[0] or approx_ids.shape[0] == 0:
        raise ValueError(
            f"approx and exact ids need the same non-zero batch, got "
            f"{approx_ids.shape[0]} and {exact_ids.shape[0]}"
        )
    if min(approx_ids.shape[1], exact_ids.shape[1]) < k:
        raise ValueError(
            f"recall@{k} needs >= {k} ids per query, got "
            f"{approx_ids.shape[1]} and {exact_ids.shape[1]}"
        )

    hits = [
        np.intersect1d(found[:k], truth[:k]).size
        for found, truth in zip(approx_ids, exact_ids)
    ]
    return float(np.mean(hits)) / k


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise IndexLoadError(path, "file is missing") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexLoadError(path, f"not readable JSON ({e})") from e


class CandidateIndex:
    """ScaNN index over candidate embeddings, with their movie ids and titles.

    Build with `build` or `load`, not the constructor. Searching is safe
    from several threads at once.

    Attributes:
      movie_ids: int64 [n], the movie id of each database row.
      titles: the title of each database row (duplicates allowed).
      config: how the index searches.
    """

    def __init__(
        self,
        searcher: Any,
        movie_ids: np.ndarray,
        titles: list[str],
        config: IndexConfig,
        dimension: int,
    ):
        self._searcher = searcher
        self.movie_ids = movie_ids
        self.titles = titles
        self.config = config
        self._dimension = dimension

    @property
    def dimension(self) -> int:
        """The embedding dimension d."""
        return self._dimension

    @property
    def size(self) -> int:
        """The number of candidates n."""
        return int(self.movie_ids.shape[0])

    @classmethod
    def build(
        cls,
        movie_ids: Any,
        titles: list[str],
        embeddings: np.ndarray,
        config: IndexConfig | None = None,
    ) -> CandidateIndex:
        """Builds an index; for a tree config this trains k-means and AH.

        Args:
          movie_ids: n distinct integer ids, one per embedding row.
          titles: n titles, one per embedding row.
          embeddings: candidate embeddings, float32 [n, d].
          config: how to index; None picks `choose_config(n, d)`.

        Raises:
          ValueError: mismatched lengths, duplicate or non-integer ids,
            non-string titles, bad embeddings, a config that does not fit
            the catalogue (more leaves than candidates), or ScaNN refused to
            build.
        """
        embeddings = _as_embeddings(embeddings, "embeddings")
        n, dimension = embeddings.shape
        movie_ids = _as_movie_ids(movie_ids, n)
        titles = _as_titles(titles, n)
        config = config or choose_config(n, dimension)
        if config.method == "scann" and config.num_leaves > n:
            raise ValueError(
                f"num_leaves={config.num_leaves} exceeds the {n} candidates; "
                "use at most one leaf per candidate (about sqrt(n) is usual)"
            )

        try:
            searcher = _scann_builder(embeddings, config).build()
        except RuntimeError as e:
            raise ValueError(
                f"ScaNN could not build an index over {n} x {dimension} "
                f"embeddings with {config}: {e}"
            ) from e
        return cls(searcher, movie_ids, titles, config, dimension)

    def search(
        self, queries: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Finds the k candidates with the largest dot product per query.

        Args:
          queries: query embeddings, float32 [batch, d], or [d] for one.
          k: results per query, in [1, size].

        Returns:
          (movie_ids, scores): int64 [batch, k] and float32 [batch, k], best
          first; each score is the exact dot product of the query and that
          candidate's embedding.

        Raises:
          ValueError: queries of the wrong shape or not finite, or k outside
            [1, size].
        """
        queries = _as_queries(queries, self.dimension)
        _check_k(k, self.size)
        if queries.shape[0] == 0:
            return (
                np.empty((0, k), dtype=np.int64),
                np.empty((0, k), dtype=np.float32),
            )

        positions, scores = self._search_positions(
            queries, k, self.config.num_leaves_to_search
        )
        # A tree search sees only the candidates in the leaves it visits;
        # when those hold fewer than k, ScaNN pads the row with NaN scores.
        # Visiting every leaf always finds k (k <= size was checked).
        short = np.isnan(scores).any(axis=1)
        if short.any():
            positions[short], scores[short] = self._search_positions(
                queries[short], k, self.config.num_leaves
            )
        return self.movie_ids[positions], scores

    def _search_positions(
        self, queries: np.ndarray, k: int, leaves: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        kwargs = {"final_num_neighbors": k}
        if self.config.method == "scann":
            # Passed every time, not baked in at build, so a loaded index
            # searches as its saved config says. Re-scoring at least k
            # candidates keeps all k scores exact when k > reorder.
            kwargs["leaves_to_search"] = leaves
            kwargs["pre_reorder_num_neighbors"] = max(self.config.reorder, k)
        if queries.shape[0] >= 2 * _PARALLEL_CHUNK:
            positions, scores = self._searcher.search_batched_parallel(
                queries, batch_size=_PARALLEL_CHUNK, **kwargs
            )
        else:
            positions, scores = self._searcher.search_batched(
                queries, **kwargs
            )
        return (
            np.asarray(positions).astype(np.intp),
            np.asarray(scores, dtype=np.float32),
        )

    def with_search_params(
        self,
        num_leaves_to_search: int | None = None,
        reorder: int | None = None,
    ) -> CandidateIndex:
        """Returns this index with other query-time search settings.

        The leaves searched and the candidates re-scored are query-time
        settings in ScaNN, so the copy shares this index's trained tree and
        codebooks; nothing is rebuilt. None keeps the current value.

        Raises:
          ValueError: the index is not a "scann" one, or a value is invalid
            for its config.
        """
        if self.config.method != "scann":
            raise ValueError(
                "only method 'scann' has search parameters; this index is "
                f"{self.config.method!r}"
            )
        changes = {
            name: value
            for name, value in (
                ("num_leaves_to_search", num_leaves_to_search),
                ("reorder", reorder),
            )
            if value is not None
        }
        config = dataclasses.replace(self.config, **changes)
        return CandidateIndex(
            self._searcher, self.movie_ids, self.titles, config, self.dimension
        )

    def save(self, directory: os.PathLike | str) -> None:
        """Writes the index into `directory` (created if absent).

        Raises:
          OSError: the directory or a file cannot be written.
        """
        directory = Path(directory)
        scann_dir = directory / SCANN_DIR
        scann_dir.mkdir(parents=True, exist_ok=True)
        # Relative asset paths keep the directory movable (ScaNN writes
        # absolute ones by default).
        self._searcher.serialize(str(scann_dir), relative_path=True)

        candidates = {
            "movie_ids": self.movie_ids.tolist(),
            "titles": self.titles,
        }
        _write_json(directory / CANDIDATES_FILE, candidates)

        # ScaNN loads some corrupted files without complaint and then
        # answers wrongly, so loading checks these digests first.
        checksums = {
            path.name: digest.file_sha256(path)
            for path in sorted(scann_dir.iterdir())
            if path.is_file()
        }
        checksums[CANDIDATES_FILE] = digest.file_sha256(
            directory / CANDIDATES_FILE
        )
        _write_json(
            directory / CONFIG_FILE,
            {
                "format_version": _FORMAT_VERSION,
                "config": self.config.to_dict(),
                "dimension": self.dimension,
                "size": self.size,
                "checksums": checksums,
            },
        )

    @classmethod
    def load(
        cls, directory: os.PathLike | str, verify_checksums: bool = True
    ) -> CandidateIndex:
        """Loads an index written by `save`.

        Args:
          directory: where `save` wrote it.
          verify_checksums: hash the files against the digests `save`
            wrote; a caller that has just checked every file against a
            list of its own may skip it.

        Raises:
          IndexLoadError: a file is missing, unreadable, or fails its
            checksum; the config is invalid; or the counts of ids, titles
            and embeddings differ. The error names the path at fault.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise IndexLoadError(directory, "not a directory")

        meta_path = directory / CONFIG_FILE
        meta = _read_json(meta_path)
        config, dimension, size, checksums = _parse_meta(meta_path, meta)
        if verify_checksums:
            _verify_checksums(directory, checksums)

        candidates_path = directory / CANDIDATES_FILE
        candidates = _read_json(candidates_path)
        if not isinstance(candidates, dict):
            raise IndexLoadError(candidates_path, "not a JSON object")
        try:
            movie_ids = _as_movie_ids(candidates.get("movie_ids"), size)
            titles = _as_titles(candidates.get("titles"), size)
        except ValueError as e:
            raise IndexLoadError(candidates_path, str(e)) from e

        scann_dir = directory / SCANN_DIR
        try:
            searcher = scann_ops_pybind.load_searcher(
                str(scann_dir), assets_backcompat_shim=False
            )
        except (RuntimeError, ValueError, IndexError, UnicodeDecodeError) as e:
            raise IndexLoadError(
                scann_dir, f"ScaNN cannot load it ({e})"
            ) from e
        if searcher.size() != size:
            raise IndexLoadError(
                scann_dir,
                f"holds {searcher.size()} embeddings but {candidates_path} "
                f"lists {size} candidates",
            )
        _check_dataset_shape(scann_dir / _DATASET_FILE, size, dimension)
        return cls(searcher, movie_ids, titles, config, dimension)


def _scann_builder(embeddings: np.ndarray, config: IndexConfig) -> Any:
    n = embeddings.shape[0]
    # The builder's k is only a default; every search passes its own.
    builder = scann_ops_pybind.builder(embeddings, 10, "dot_product")
    if config.method == "brute_force":
        return builder.score_brute_force()

    sample = min(n, _TRAINING_SAMPLE_SIZE)
    return (
        builder.tree(
            num_leaves=config.num_leaves,
            num_leaves_to_search=config.num_leaves_to_search,
            training_sample_size=sample,
        )
        .score_ah(
            config.dims_per_block,
            anisotropic_quantization_threshold=(
                config.anisotropic_quantization_threshold
            ),
            training_sample_size=sample,
        )
        .reorder(config.reorder)
    )


def _as_movie_ids(movie_ids: Any, n: int) -> np.ndarray:
    if not isinstance(movie_ids, (list, tuple, np.ndarray)):
        raise ValueError(
            f"movie_ids must be a list or array of {n} integers, got "
            f"{type(movie_ids).__name__}"
        )
    array = np.asarray(movie_ids)
    if array.shape != (n,):
        raise ValueError(
            f"movie_ids must hold one id per embedding ({n}), got shape "
            f"{array.shape}"
        )
    if n and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"movie_ids must be integers, got {array.dtype}")
    array = array.astype(np.int64)
    if np.unique(array).size != n:
        raise ValueError("movie_ids must be distinct; found duplicates")
    return array


def _as_titles(titles: Any, n: int) -> list[str]:
    if not isinstance(titles, (list, tuple)) or len(titles) != n:
        raise ValueError(
            f"titles must be a list of one title per embedding ({n}), got "
            f"{type(titles).__name__} of length "
            f"{len(titles) if hasattr(titles, '__len__') else 'unknown'}"
        )
    if not all(isinstance(t, str) for t in titles):
        raise ValueError("titles must all be strings")
    return list(titles)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(
        json.dumps(value, ensure_ascii=False, indent=1) + "\n",
        encoding="utf-8",
    )


def _parse_meta(
    path: Path, meta: Any
) -> tuple[IndexConfig, int, int, dict[str, str]]:
    if not isinstance(meta, dict):
        raise IndexLoadError(path, "not a JSON object")
    if meta.get("format_version") != _FORMAT_VERSION:
        raise IndexLoadError(
            path,
            f"format_version is {meta.get('format_version')!r}, this code "
            f"reads {_FORMAT_VERSION}",
        )
    try:
        config = IndexConfig.from_dict(meta.get("config"))
        dimension, size = meta.get("dimension"), meta.get("size")
        _check_int("dimension", dimension, 1)
        _check_int("size", size, 1)
    except ValueError as e:
        raise IndexLoadError(path, str(e)) from e
    checksums = meta.get("checksums")
    if not isinstance(checksums, dict) or CANDIDATES_FILE not in checksums:
        raise IndexLoadError(path, "has no checksums for the index files")
    return config, dimension, size, checksums


def _check_dataset_shape(path: Path, size: int, dimension: int) -> None:
    # ScaNN does not report its dimension; the array header does, and a
    # query of another width must be refused here, not inside ScaNN.
    try:
        shape = np.load(path, mmap_mode="r").shape
    except (OSError, ValueError) as e:
        raise IndexLoadError(path, f"not a readable .npy array ({e})") from e
    if shape != (size, dimension):
        raise IndexLoadError(
            path,
            f"holds embeddings of shape {shape}, {CONFIG_FILE} says "
            f"{(size, dimension)}",
        )


def _verify_checksums(directory: Path, checksums: dict[str, str]) -> None:
    for name, expected in checksums.items():
        path = directory / (
            name if name == CANDIDATES_FILE else f"{SCANN_DIR}/{name}"
        )
        try:
            actual = digest.file_sha256(path)
        except FileNotFoundError as e:
            raise IndexLoadError(path, "file is missing") from e
        except OSError as e:
            raise IndexLoadError(path, f"cannot be read ({e})") from e
        if actual != expected:
            raise IndexLoadError(
                path, "contents do not match the checksum written at save"
            )
