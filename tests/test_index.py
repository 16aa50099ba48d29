"""Specification of the candidate index: exactness, round trips, errors."""

import json

import numpy as np
import pytest

from bench.index_bench import synthetic_embeddings
from candidate_service import index as index_lib
from candidate_service.index import (
    CandidateIndex,
    IndexConfig,
    IndexLoadError,
    choose_config,
    exact_search,
    recall_at_k,
)
from model_store import digest

# MovieLens 100K's catalogue at the towers' width.
MOVIELENS_SIZE = 1682
DIM = 32
# ScaNN and NumPy sum the 32 products of a dot product in different orders;
# for values of order 1 that moves float32 results by ~1e-6, far below this.
SCORE_ATOL = 1e-4

BRUTE_FORCE = IndexConfig(method="brute_force")
# Deliberately coarse (few leaves searched, small reorder) so that the tests
# exercise the fallbacks for k beyond what the searched leaves hold.
SMALL_TREE = IndexConfig(
    method="scann", num_leaves=40, num_leaves_to_search=4, reorder=20
)


def _catalogue(n, dim, seed):
    rng = np.random.default_rng(seed)
    embeddings = rng.standard_normal((n, dim)).astype(np.float32)
    # MovieLens ids start at 1 and are not positions; offsetting them
    # catches any position/id mix-up.
    movie_ids = np.arange(1, n + 1, dtype=np.int64) * 10
    titles = [f"Movie {i} (1995)" for i in range(n)]
    return movie_ids, titles, embeddings


def _queries(count, dim, seed):
    return np.random.default_rng(seed).standard_normal((count, dim)).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def catalogue():
    return _catalogue(MOVIELENS_SIZE, DIM, seed=0)


@pytest.fixture(scope="module", params=["brute_force", "scann"])
def built(request, catalogue):
    config = BRUTE_FORCE if request.param == "brute_force" else SMALL_TREE
    movie_ids, titles, embeddings = catalogue
    return CandidateIndex.build(movie_ids, titles, embeddings, config)


def _dot_products(index_ids, movie_ids, embeddings, queries):
    position = {m: i for i, m in enumerate(movie_ids.tolist())}
    rows = np.vectorize(position.get)(index_ids)
    return np.einsum("bkd,bd->bk", embeddings[rows], queries)


def _saved(tmp_path, catalogue, config=BRUTE_FORCE):
    movie_ids, titles, embeddings = catalogue
    index = CandidateIndex.build(movie_ids, titles, embeddings, config)
    index.save(tmp_path / "index")
    return tmp_path / "index"


# --- exactness ---------------------------------------------------------------


def test_brute_force_returns_exact_top_10(catalogue):
    movie_ids, titles, embeddings = catalogue
    queries = _queries(50, DIM, seed=1)
    index = CandidateIndex.build(movie_ids, titles, embeddings, BRUTE_FORCE)

    found, scores = index.search(queries, 10)
    exact, exact_scores = exact_search(embeddings, queries, 10)

    np.testing.assert_array_equal(found, movie_ids[exact])
    np.testing.assert_allclose(scores, exact_scores, atol=SCORE_ATOL)


@pytest.mark.parametrize("k", [1, 10, 100])
def test_every_score_is_the_exact_dot_product(built, catalogue, k):
    movie_ids, _, embeddings = catalogue
    queries = _queries(20, DIM, seed=2)

    found, scores = built.search(queries, k)

    assert found.dtype == np.int64 and scores.dtype == np.float32
    assert found.shape == scores.shape == (20, k)
    np.testing.assert_allclose(
        scores,
        _dot_products(found, movie_ids, embeddings, queries),
        atol=SCORE_ATOL,
    )
    assert (np.diff(scores, axis=1) <= 0).all(), "best first"


def test_chosen_scann_config_reaches_recall_on_20000_candidates():
    # The benchmark's clustered data: isotropic noise has no neighbourhoods
    # for a tree to find, unlike learned embeddings.
    n = 20_000
    embeddings, queries = synthetic_embeddings(n, 300, DIM, seed=3)
    movie_ids = np.arange(1, n + 1, dtype=np.int64)
    config = choose_config(n, DIM)
    index = CandidateIndex.build(
        movie_ids, [str(i) for i in movie_ids], embeddings, config
    )

    found, scores = index.search(queries, 10)
    exact, _ = exact_search(embeddings, queries, 10)

    assert config.method == "scann"
    assert recall_at_k(found, movie_ids[exact], 10) >= 0.9
    np.testing.assert_allclose(
        scores,
        _dot_products(found, movie_ids, embeddings, queries),
        atol=SCORE_ATOL,
    )


def test_k_above_reorder_still_returns_k_exact_scores(catalogue):
    movie_ids, titles, embeddings = catalogue
    index = CandidateIndex.build(movie_ids, titles, embeddings, SMALL_TREE)
    queries = _queries(5, DIM, seed=4)
    k = SMALL_TREE.reorder * 3

    found, scores = index.search(queries, k)

    assert found.shape == (5, k)
    np.testing.assert_allclose(
        scores,
        _dot_products(found, movie_ids, embeddings, queries),
        atol=SCORE_ATOL,
    )


# --- k and query shapes -----------------------------------------------------


def test_k_of_one_returns_the_best_candidate(built, catalogue):
    movie_ids, _, embeddings = catalogue
    queries = _queries(20, DIM, seed=5)

    found, scores = built.search(queries, 1)
    exact, _ = exact_search(embeddings, queries, 1)

    assert found.shape == scores.shape == (20, 1)
    if built.config.method == "brute_force":
        np.testing.assert_array_equal(found, movie_ids[exact])


def test_k_of_size_returns_every_candidate_ranked(built, catalogue):
    movie_ids, _, embeddings = catalogue
    queries = _queries(3, DIM, seed=6)

    found, scores = built.search(queries, built.size)
    exact, exact_scores = exact_search(embeddings, queries, built.size)

    for row in found:
        assert sorted(row.tolist()) == sorted(movie_ids.tolist())
    # Every candidate scored exactly and sorted is the exact ranking.
    np.testing.assert_allclose(scores, exact_scores, atol=SCORE_ATOL)


@pytest.mark.parametrize("k", [0, MOVIELENS_SIZE + 1, -3])
def test_k_outside_one_to_size_raises_naming_the_limit(built, k):
    with pytest.raises(ValueError, match=rf"\[1, {MOVIELENS_SIZE}\]"):
        built.search(_queries(1, DIM, seed=7), k)


def test_one_vector_query_is_a_batch_of_one(built):
    query = _queries(1, DIM, seed=8)

    single = built.search(query[0], 5)
    batch = built.search(query, 5)

    np.testing.assert_array_equal(single[0], batch[0])
    np.testing.assert_array_equal(single[1], batch[1])


@pytest.mark.parametrize(
    "queries",
    [np.zeros((2, DIM + 1)), np.zeros((2, 3, DIM)), np.full((1, DIM), np.nan)],
    ids=["wrong-dimension", "three-dimensional", "nan"],
)
def test_malformed_queries_raise(built, queries):
    with pytest.raises(ValueError, match="queries"):
        built.search(queries, 5)


def test_large_batches_match_small_ones(catalogue):
    # Batches from 512 queries up go through ScaNN's parallel entry point.
    movie_ids, titles, embeddings = catalogue
    index = CandidateIndex.build(movie_ids, titles, embeddings, SMALL_TREE)
    queries = _queries(600, DIM, seed=9)

    whole = index.search(queries, 10)
    pieces = [
        index.search(queries[start : start + 100], 10)
        for start in range(0, 600, 100)
    ]
    ids, scores = (np.concatenate(part) for part in zip(*pieces))

    np.testing.assert_array_equal(whole[0], ids)
    np.testing.assert_allclose(whole[1], scores, atol=SCORE_ATOL)


# --- save and load ----------------------------------------------------------


def test_save_load_round_trip_gives_identical_answers(built, tmp_path):
    queries = _queries(30, DIM, seed=10)
    built.save(tmp_path / "index")

    loaded = CandidateIndex.load(tmp_path / "index")

    assert loaded.config == built.config
    assert (loaded.size, loaded.dimension) == (built.size, built.dimension)
    np.testing.assert_array_equal(loaded.movie_ids, built.movie_ids)
    assert loaded.titles == built.titles
    for k in (1, 10, 200):
        before, after = built.search(queries, k), loaded.search(queries, k)
        np.testing.assert_array_equal(after[0], before[0])
        np.testing.assert_array_equal(after[1], before[1])


def test_saved_index_survives_being_moved(catalogue, tmp_path):
    saved = _saved(tmp_path, catalogue, SMALL_TREE)
    moved = saved.rename(tmp_path / "elsewhere")

    loaded = CandidateIndex.load(moved)

    assert loaded.search(_queries(1, DIM, seed=11), 3)[0].shape == (1, 3)


def test_non_ascii_and_duplicate_titles_round_trip(tmp_path):
    titles = [
        "Amélie (2001)",
        "Léon: The Professional (1994)",
        "千と千尋の神隠し (2001)",
        "Hamlet (1996)",
        "Hamlet (1996)",
        'Say "Anything" \\ (1989)',
    ]
    movie_ids, _, embeddings = _catalogue(len(titles), DIM, seed=12)
    index = CandidateIndex.build(movie_ids, titles, embeddings, BRUTE_FORCE)
    index.save(tmp_path / "index")

    loaded = CandidateIndex.load(tmp_path / "index")

    assert loaded.titles == titles
    raw = (tmp_path / "index" / index_lib.CANDIDATES_FILE).read_bytes()
    assert "千と千尋の神隠し".encode() in raw, "written as UTF-8, not escaped"


def _corrupt(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle:][:8])
    path.write_bytes(bytes(data))


def _rewrite_candidates(directory, edit):
    """Edits candidates.json and re-signs it, as a buggy writer would."""
    path = directory / index_lib.CANDIDATES_FILE
    candidates = edit(json.loads(path.read_text(encoding="utf-8")))
    path.write_text(json.dumps(candidates), encoding="utf-8")
    meta_path = directory / index_lib.CONFIG_FILE
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["checksums"][index_lib.CANDIDATES_FILE] = digest.file_sha256(path)
    meta["size"] = len(candidates["movie_ids"])
    meta_path.write_text(json.dumps(meta), encoding="utf-8")


def _claim_dimension(directory, dimension):
    path = directory / index_lib.CONFIG_FILE
    meta = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**meta, "dimension": dimension}))


def _drop_last_candidate(candidates):
    return {key: values[:-1] for key, values in candidates.items()}


def _drop_last_title(candidates):
    return {**candidates, "titles": candidates["titles"][:-1]}


@pytest.mark.parametrize(
    "damage, culprit",
    [
        (lambda d: (d / "candidates.json").unlink(), "candidates.json"),
        (lambda d: (d / "index_config.json").unlink(), "index_config.json"),
        (lambda d: (d / "scann/dataset.npy").unlink(), "scann/dataset.npy"),
        (lambda d: _corrupt(d / "scann/dataset.npy"), "scann/dataset.npy"),
        (
            lambda d: _corrupt(d / "scann/hashed_dataset.npy"),
            "scann/hashed_dataset.npy",
        ),
        (lambda d: _corrupt(d / "candidates.json"), "candidates.json"),
        (
            lambda d: (d / "index_config.json").write_text("{not json"),
            "index_config.json",
        ),
        (
            lambda d: _rewrite_candidates(d, _drop_last_candidate),
            "scann",
        ),
        (
            lambda d: _rewrite_candidates(d, _drop_last_title),
            "candidates.json",
        ),
        (lambda d: _claim_dimension(d, DIM // 2), "scann/dataset.npy"),
    ],
    ids=[
        "missing-candidates",
        "missing-config",
        "missing-embeddings",
        "corrupted-embeddings",
        "corrupted-hashes",
        "corrupted-candidates",
        "corrupted-config",
        "fewer-ids-than-embeddings",
        "fewer-titles-than-ids",
        "config-dimension-differs",
    ],
)
def test_load_of_a_damaged_index_raises_naming_the_path(
    catalogue, tmp_path, damage, culprit
):
    saved = _saved(tmp_path, catalogue, SMALL_TREE)
    damage(saved)

    with pytest.raises(IndexLoadError) as caught:
        CandidateIndex.load(saved)

    assert caught.value.path == saved / culprit
    assert str(saved / culprit) in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_load_of_a_missing_directory_raises(tmp_path):
    with pytest.raises(IndexLoadError, match="not a directory"):
        CandidateIndex.load(tmp_path / "absent")


# --- build validation -------------------------------------------------------


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda ids, t, e: (np.r_[ids[:-1], ids[0]], t, e), "distinct"),
        (lambda ids, t, e: (ids[:-1], t, e), "one id per embedding"),
        (lambda ids, t, e: (ids, t[:-1], e), "one title per embedding"),
        (lambda ids, t, e: (ids.astype(float), t, e), "integers"),
        (
            lambda ids, t, e: (ids, t, np.where(e > 2, np.inf, e)),
            "finite",
        ),
        (lambda ids, t, e: (ids, t, e[0]), r"shape \[n, d\]"),
    ],
    ids=[
        "duplicate-ids",
        "too-few-ids",
        "too-few-titles",
        "float-ids",
        "infinite-embedding",
        "one-dimensional-embeddings",
    ],
)
def test_build_rejects_inconsistent_inputs(catalogue, edit, message):
    movie_ids, titles, embeddings = edit(*catalogue)
    with pytest.raises(ValueError, match=message):
        CandidateIndex.build(movie_ids, titles, embeddings, BRUTE_FORCE)


def test_build_rejects_more_leaves_than_candidates():
    movie_ids, titles, embeddings = _catalogue(30, DIM, seed=13)
    config = IndexConfig(
        method="scann", num_leaves=31, num_leaves_to_search=2, reorder=10
    )
    with pytest.raises(ValueError, match="num_leaves=31 exceeds the 30"):
        CandidateIndex.build(movie_ids, titles, embeddings, config)


def test_search_params_change_without_rebuilding(catalogue):
    movie_ids, titles, embeddings = catalogue
    index = CandidateIndex.build(movie_ids, titles, embeddings, SMALL_TREE)
    queries = _queries(100, DIM, seed=14)
    exact, _ = exact_search(embeddings, queries, 10)

    wider = index.with_search_params(num_leaves_to_search=40, reorder=100)

    assert wider.config.num_leaves_to_search == 40
    assert wider.config.num_leaves == SMALL_TREE.num_leaves
    # Searching every leaf and re-scoring 100 finds the exact top 10.
    assert recall_at_k(wider.search(queries, 10)[0], movie_ids[exact], 10) > (
        recall_at_k(index.search(queries, 10)[0], movie_ids[exact], 10)
    )
    with pytest.raises(ValueError, match="only method 'scann'"):
        CandidateIndex.build(
            movie_ids, titles, embeddings, BRUTE_FORCE
        ).with_search_params(num_leaves_to_search=2)


# --- config -----------------------------------------------------------------


@pytest.mark.parametrize("config", [BRUTE_FORCE, SMALL_TREE])
def test_config_round_trips_through_a_dict(config):
    assert IndexConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == (
        config
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "exact"}, "brute_force, scann.*'exact'"),
        ({"method": "brute_force", "num_leaves": 10}, "only apply to"),
        ({"method": "scann", "reorder": 10}, "needs num_leaves"),
        (
            {
                "method": "scann",
                "num_leaves": 10,
                "num_leaves_to_search": 11,
                "reorder": 10,
            },
            r"\[1, num_leaves=10\], got 11",
        ),
        (
            {"method": "scann", "num_leaves": 10, "num_leaves_to_search": 2},
            "needs reorder",
        ),
        (
            {
                "method": "scann",
                "num_leaves": 10,
                "num_leaves_to_search": 2,
                "reorder": 0,
            },
            "reorder must be >= 1, got 0",
        ),
        (
            {
                "method": "scann",
                "num_leaves": 10,
                "num_leaves_to_search": 2,
                "reorder": 10,
                "anisotropic_quantization_threshold": float("nan"),
            },
            "positive finite number, got nan",
        ),
        (
            {"method": "brute_force", "dims_per_block": 0},
            "dims_per_block must be >= 1, got 0",
        ),
    ],
    ids=[
        "unknown-method",
        "tree-field-on-brute-force",
        "scann-without-leaves",
        "searching-more-leaves-than-exist",
        "scann-without-reorder",
        "zero-reorder",
        "nan-threshold",
        "zero-dims-per-block",
    ],
)
def test_invalid_config_raises_naming_value_and_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IndexConfig(**kwargs)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown index config keys.*leaves"):
        IndexConfig.from_dict({"method": "scann", "leaves": 10})


@pytest.mark.parametrize("n", [1, 1682, 3706, 9_999])
def test_catalogues_below_10000_get_brute_force(n):
    assert choose_config(n, DIM).method == "brute_force"


@pytest.mark.parametrize("n", [10_000, 100_000, 1_000_000, 10_000_000])
def test_larger_catalogues_get_a_valid_scann_config(n):
    config = choose_config(n, 64)

    assert config.method == "scann"
    assert 1 <= config.num_leaves_to_search <= config.num_leaves <= n


def test_choose_config_rejects_an_empty_catalogue():
    with pytest.raises(ValueError, match="num_candidates must be >= 1"):
        choose_config(0, DIM)


# --- references -------------------------------------------------------------


def test_exact_search_matches_a_hand_worked_example():
    embeddings = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)

    # Scores of [2, 1]: 2, 1, 3.
    indices, scores = exact_search(embeddings, np.array([2, 1]), 3)

    np.testing.assert_array_equal(indices, [[2, 0, 1]])
    np.testing.assert_array_equal(scores, [[3, 2, 1]])


@pytest.mark.parametrize("k", [7, 300], ids=["k-below-chunk", "k-above-chunk"])
def test_exact_search_in_blocks_and_chunks_equals_one_matmul(monkeypatch, k):
    _, _, embeddings = _catalogue(500, 8, seed=15)
    queries = _queries(37, 8, seed=16)
    full = np.argsort(-(queries @ embeddings.T), axis=1)[:, :k]
    # 8 queries a block and 1,000 scores a chunk: for k=7, 5 query blocks
    # against 4 chunks of 125; for k=300, chunks of 300 then 200 (fewer
    # than k), 3 queries at a time.
    monkeypatch.setattr(index_lib, "_EXACT_BLOCK_SCORES", 1000)
    monkeypatch.setattr(index_lib, "_EXACT_QUERY_BLOCK", 8)

    indices, scores = exact_search(embeddings, queries, k)

    np.testing.assert_array_equal(indices, full)
    np.testing.assert_allclose(
        scores,
        np.take_along_axis(queries @ embeddings.T, full, axis=1),
        atol=SCORE_ATOL,
    )


def test_recall_at_k_matches_a_hand_worked_example():
    approx = np.array([[1, 2, 3, 9], [4, 5, 6, 9]])
    exact = np.array([[3, 2, 7, 9], [6, 5, 4, 9]])

    # Row 1 shares {2, 3} of 3, row 2 all 3: (2/3 + 1) / 2.
    assert recall_at_k(approx, exact, 3) == pytest.approx(5 / 6)


@pytest.mark.parametrize(
    "approx, exact, k, message",
    [
        (np.ones((2, 5)), np.ones((3, 5)), 5, "same non-zero batch"),
        (np.ones((2, 4)), np.ones((2, 5)), 5, "needs >= 5 ids"),
        (np.ones((2, 5)), np.ones((2, 5)), 0, "k must be >= 1"),
    ],
    ids=["batch-mismatch", "too-few-columns", "zero-k"],
)
def test_recall_at_k_rejects_mismatched_inputs(approx, exact, k, message):
    with pytest.raises(ValueError, match=message):
        recall_at_k(approx, exact, k)
