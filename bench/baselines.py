"""Non-neural baselines for the quality benchmark, as `evaluation.Scorer`s.

Each function fits on a binary user x movie matrix (every rating counts as
an interaction, whatever its stars, as in the two-tower training) and
returns a scorer over the whole catalogue:

* `popular`: the number of users who rated each movie, the same for
  everyone.
* `ease`: EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse
  Data", WWW 2019): an item-item weight matrix with a zero diagonal, in
  closed form; `ease_at_ranks` cuts its weights to fewer dimensions.
* `als`: implicit-feedback alternating least squares (Hu, Koren and
  Volinsky, ICDM 2008) from the `implicit` package.
"""

import numpy as np
import scipy.sparse
import threadpoolctl

from trainer.evaluation import Scorer, UserMovies

# Hyper-parameters tried on validation: EASE's lambda on both sides of the
# issue's reference of 1000, ALS from 16 to 128 factors with penalties from
# light to heavy (implicit's penalty is not scaled by the data, so the good
# range grows with the factors).
EASE_L2_GRID = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)
ALS_GRID = tuple(
    {"factors": f, "regularization": r, "alpha": a}
    for f in (16, 32, 64, 128)
    for r in (1.0, 10.0, 50.0)
    for a in (1.0, 5.0)
)
ALS_ITERATIONS = 15


def to_csr(matrix: UserMovies) -> scipy.sparse.csr_matrix:
    """The matrix as float32 CSR with ones for interactions."""
    return scipy.sparse.csr_matrix(
        (
            np.ones(len(matrix.movie_rows), dtype=np.float32),
            matrix.movie_rows,
            matrix.row_splits,
        ),
        shape=(matrix.num_users, matrix.num_movies),
    )


def popular(seen: UserMovies) -> Scorer:
    """Scores every movie by how many users have it in `seen`."""
    counts = np.bincount(seen.movie_rows, minlength=seen.num_movies)
    counts = counts.astype(np.float32)

    def score(users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(counts, (len(users), len(counts)))

    return score


def ease_weights(x: np.ndarray, l2: float) -> np.ndarray:
    """EASE's item-item weights for a dense interaction matrix.

    Minimises ||X - XB||^2 + l2 ||B||^2 subject to diag(B) = 0, whose
    solution is B = I - P diag(1 / diag(P)) with P = (X^T X + l2 I)^-1.

    Args:
      x: [num_users, num_movies] interactions (0/1 or weights).
      l2: the ridge penalty, positive.

    Returns:
      float64 [num_movies, num_movies], zero on the diagonal.

    Raises:
      ValueError: l2 is not positive.
    """
    if l2 <= 0:
        raise ValueError(f"EASE needs a positive l2 penalty, got {l2}")
    x = np.asarray(x, dtype=np.float64)
    gram = x.T @ x
    gram[np.diag_indices_from(gram)] += l2
    p = np.linalg.inv(gram)
    weights = -p / np.diag(p)[None, :]
    np.fill_diagonal(weights, 0.0)
    return weights


def ease(seen: UserMovies, l2: float) -> Scorer:
    """EASE fitted on `seen`; a user's scores are their row of X B.

    Memory is a dense movies x movies matrix: 23 MB for MovieLens 100K,
    far too much for the 62,000-movie releases.
    """
    x = to_csr(seen)
    weights = ease_weights(x.toarray(), l2).astype(np.float32)

    def score(users: np.ndarray) -> np.ndarray:
        return np.asarray(x[users] @ weights)

    return score


def ease_at_ranks(
    seen: UserMovies, l2: float, ranks: tuple[int, ...]
) -> dict[int, Scorer]:
    """EASE fitted on `seen` with its weights cut to each rank.

    The cut keeps the largest singular values of the weight matrix, so
    each rank's weights factor into a user side and a movie side of that
    width: what EASE would be as a two-tower model whose embeddings have
    that many dimensions. The benchmark sets them beside the full-rank
    EASE to show how much of its lead its rank buys.

    Raises:
      ValueError: a rank is not between 1 and the number of movies, or
        l2 is not positive.
    """
    bad = [r for r in ranks if not 1 <= r <= seen.num_movies]
    if bad:
        raise ValueError(
            f"ranks must be between 1 and {seen.num_movies}, got {bad}"
        )
    x = to_csr(seen)
    weights = ease_weights(x.toarray(), l2)
    u, s, vt = np.linalg.svd(weights)
    scorers = {}
    for rank in ranks:
        cut = ((u[:, :rank] * s[:rank]) @ vt[:rank]).astype(np.float32)

        def score(users: np.ndarray, cut=cut) -> np.ndarray:
            return np.asarray(x[users] @ cut)

        scorers[rank] = score
    return scorers


def als(
    seen: UserMovies,
    factors: int,
    regularization: float,
    alpha: float,
    seed: int,
    iterations: int = ALS_ITERATIONS,
) -> Scorer:
    """Implicit ALS fitted on `seen`; scores are user . item factors.

    Args:
      seen: the interactions to fit.
      factors: width of the user and item factors.
      regularization: L2 penalty on the factors.
      alpha: confidence weight of an interaction (confidence 1 + alpha).
      seed: seeds the factors' initialisation.
      iterations: alternating sweeps.
    """
    # Imported here: `implicit` probes for CUDA at import.
    from implicit.cpu.als import AlternatingLeastSquares

    # implicit parallelises over users itself; a multi-threaded BLAS inside
    # each of its threads only oversubscribes the cores (it warns so when
    # the model is built).
    with threadpoolctl.threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=factors,
            regularization=regularization,
            alpha=alpha,
            iterations=iterations,
            random_state=seed,
        )
        model.fit(to_csr(seen), show_progress=False)
    users = np.asarray(model.user_factors)
    items_t = np.ascontiguousarray(np.asarray(model.item_factors).T)

    def score(rows: np.ndarray) -> np.ndarray:
        return users[rows] @ items_t

    return score
