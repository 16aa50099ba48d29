"""Offline retrieval quality under the protocols the project reports.

Every system, whatever it is (the towers, a popularity count, a matrix
factorisation), is evaluated through a `Scorer`: a function from a batch of
user rows to a score per catalogue movie. Two protocols read those scores:

* The tutorial protocol (`top_k_accuracy`), as in the TensorFlow
  Recommenders retrieval tutorial: each held-out rating is one query, and it
  is a hit at k when its movie ranks in the top k of the whole catalogue.
  Movies the user rated in training stay in the ranking.
* The serving protocol (`ranking_quality`), which matches what the service
  returns: each user is one query, the movies they rated in training are
  removed from the ranking, and Recall@k (hits divided by min(k, the user's
  held-out movies)) and NDCG@k are averaged over users.

Ratings are addressed by dense rows: `Interactions` numbers users and movies
0..n-1 once, so that every system indexes the same arrays.
"""

import dataclasses
from collections.abc import Callable

import numpy as np

from trainer import movielens

TUTORIAL_KS = (1, 5, 10, 50, 100)
SERVING_KS = (10, 50, 100)
NDCG_K = 10
# Each user's recall at this cut-off (the headline Recall@10) is kept for
# `recall_by_history`.
PER_USER_K = 10

Scorer = Callable[[np.ndarray], np.ndarray]
"""Maps int64 user rows `[batch]` to float scores `[batch, num_movies]`;
higher is better."""

# Users scored per call of a Scorer: bounds the dense score block to
# batch x catalogue floats (1 GiB at 62,000 movies in float32 is too much;
# 512 x 62,000 is 127 MB).
_USER_BATCH = 512
# Held-out ratings compared against the whole catalogue at once in
# `top_k_accuracy`, for the same reason.
_RATING_BATCH = 2048


@dataclasses.dataclass(frozen=True, eq=False)
class Interactions:
    """Ratings of one dataset with users and movies numbered densely.

    Attributes:
      user_ids: int64 [num_users], sorted; row r is user `user_ids[r]`.
      movie_ids: int64 [num_movies], sorted: the whole catalogue, rated or
        not; row r is movie `movie_ids[r]`.
      user_rows: int64 [n], the user row of each rating, in file order.
      movie_rows: int64 [n], the movie row of each rating.
      timestamp: int64 [n], seconds since the epoch.
    """

    user_ids: np.ndarray
    movie_ids: np.ndarray
    user_rows: np.ndarray
    movie_rows: np.ndarray
    timestamp: np.ndarray

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_movies(self) -> int:
        return len(self.movie_ids)

    @classmethod
    def from_dataset(cls, dataset: movielens.Dataset) -> "Interactions":
        """Numbers the users who rated and every movie of the catalogue.

        Raises:
          ValueError: a rating names a movie the catalogue lacks.
        """
        ratings = dataset.ratings
        movie_ids = np.array(sorted(dataset.movies), dtype=np.int64)
        user_ids, user_rows = np.unique(ratings.user_id, return_inverse=True)
        movie_rows = np.searchsorted(movie_ids, ratings.movie_id)
        known = movie_rows < len(movie_ids)
        known[known] = movie_ids[movie_rows[known]] == ratings.movie_id[known]
        if not known.all():
            missing = ratings.movie_id[~known][:5].tolist()
            raise ValueError(
                f"{dataset.name}: ratings name movies missing from the "
                f"catalogue, e.g. {missing}; load the movies file of the "
                "same release"
            )
        return cls(
            user_ids=user_ids.astype(np.int64),
            movie_ids=movie_ids,
            user_rows=user_rows.astype(np.int64),
            movie_rows=movie_rows.astype(np.int64),
            timestamp=np.asarray(ratings.timestamp, dtype=np.int64),
        )

    def matrix(self, positions: np.ndarray) -> "UserMovies":
        """The user-movie pairs of some ratings, grouped by user."""
        return UserMovies.build(
            self.user_rows[positions],
            self.movie_rows[positions],
            self.num_users,
            self.num_movies,
        )


@dataclasses.dataclass(frozen=True, eq=False)
class UserMovies:
    """A binary user x movie matrix in compressed rows (CSR without values).

    Attributes:
      row_splits: int64 [num_users + 1]; user u's movies are
        `movie_rows[row_splits[u]:row_splits[u + 1]]`.
      movie_rows: int64 [nnz], each user's movies in ascending order,
        repeats removed.
      num_movies: the catalogue size (the matrix's width).
    """

    row_splits: np.ndarray
    movie_rows: np.ndarray
    num_movies: int

    @classmethod
    def build(
        cls,
        user_rows: np.ndarray,
        movie_rows: np.ndarray,
        num_users: int,
        num_movies: int,
    ) -> "UserMovies":
        """Groups pairs by user.

        Args:
          user_rows: int64 [n], in [0, num_users).
          movie_rows: int64 [n], in [0, num_movies).
          num_users: the matrix's height.
          num_movies: the matrix's width.
        """
        pairs = np.unique(
            np.asarray(user_rows, np.int64) * num_movies
            + np.asarray(movie_rows, np.int64)
        )
        users, movies = np.divmod(pairs, num_movies)
        counts = np.bincount(users, minlength=num_users)
        return cls(
            row_splits=np.r_[0, np.cumsum(counts)].astype(np.int64),
            movie_rows=movies.astype(np.int64),
            num_movies=num_movies,
        )

    @property
    def num_users(self) -> int:
        return len(self.row_splits) - 1

    def counts(self) -> np.ndarray:
        """int64 [num_users]: how many movies each user has."""
        return np.diff(self.row_splits)

    def dense(self, users: np.ndarray) -> np.ndarray:
        """bool [len(users), num_movies]: the rows of some users."""
        out = np.zeros((len(users), self.num_movies), dtype=bool)
        rows, cols = self._pairs(users)
        out[rows, cols] = True
        return out

    def _pairs(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in `users`, movie row) of every entry of those users."""
        starts = self.row_splits[users]
        counts = self.row_splits[users + 1] - starts
        rows = np.repeat(np.arange(len(users)), counts)
        offsets = np.arange(counts.sum()) - np.repeat(
            np.cumsum(counts) - counts, counts
        )
        return rows, self.movie_rows[np.repeat(starts, counts) + offsets]


@dataclasses.dataclass(frozen=True)
class RankingQuality:
    """Per-user ranking metrics of the serving protocol, averaged.

    Attributes:
      recall: float64 [max_k]; `recall[k - 1]` is the mean Recall@k.
      ndcg: mean NDCG@ndcg_k.
      ndcg_k: the cut-off of `ndcg`.
      num_users: users averaged over (those with a held-out movie).
      users: int64 [num_users], those users' rows, ascending.
      user_recall: float64 [num_users], each one's Recall@`user_recall_k`.
      user_recall_k: the cut-off of `user_recall`.
    """

    recall: np.ndarray
    ndcg: float
    ndcg_k: int
    num_users: int
    users: np.ndarray
    user_recall: np.ndarray
    user_recall_k: int

    def metrics(self, ks=SERVING_KS) -> dict[str, float]:
        """{"recall_10": ..., "recall_50": ..., "ndcg_10": ...}.

        Raises:
          ValueError: a k beyond the largest computed.
        """
        if max(ks) > len(self.recall):
            raise ValueError(
                f"recall was computed up to k={len(self.recall)}, not "
                f"{max(ks)}; pass a larger max_k to ranking_quality"
            )
        out = {f"recall_{k}": float(self.recall[k - 1]) for k in ks}
        out[f"ndcg_{self.ndcg_k}"] = float(self.ndcg)
        return out


def recall_by_history(
    quality: RankingQuality, seen: UserMovies, bands: int = 4
) -> list[dict[str, float]]:
    """Mean per-user recall within bands of history length.

    A single average hides which users a system serves well: one that
    ranks light users' movies better can match another that is better for
    heavy users. The bands are quantiles of the evaluated users' numbers of
    seen movies, so they depend only on the split, and two systems scored
    on one split share them.

    Args:
      quality: the result of `ranking_quality` on `seen`.
      seen: the movies each user's query was built from.
      bands: how many quantile bands.

    Returns:
      One dict per band, lightest first: `min_history` and `max_history`
      (inclusive), `users`, and `recall` (mean Recall@`quality.user_recall_k`
      of the band's users). Users on a shared edge count in the lower band.

    Raises:
      ValueError: bands is not positive.
    """
    if bands < 1:
        raise ValueError(f"bands must be at least 1, got {bands}")
    lengths = seen.counts()[quality.users]
    edges = np.quantile(lengths, np.linspace(0.0, 1.0, bands + 1))
    out, taken = [], np.zeros(len(lengths), dtype=bool)
    for high in edges[1:]:
        members = (lengths <= high) & ~taken
        taken |= members
        if not members.any():
            continue
        out.append(
            {
                "min_history": int(lengths[members].min()),
                "max_history": int(lengths[members].max()),
                "users": int(members.sum()),
                "recall": float(quality.user_recall[members].mean()),
            }
        )
    return out


def top_k_accuracy(
    scorer: Scorer,
    user_rows: np.ndarray,
    movie_rows: np.ndarray,
    ks=TUTORIAL_KS,
) -> dict[str, float]:
    """The tutorial protocol: top-k accuracy over the whole catalogue.

    Each rating (user, movie) counts once: it is a hit at k when fewer than
    k movies outrank its movie in the user's scores. Movies the user rated
    in training are not removed. This is what TensorFlow Recommenders'
    `FactorizedTopK` metric measures, except on exact ties: there a tie
    goes to the movie earlier in the catalogue, where `FactorizedTopK`
    gives it to the held-out movie, so that a constant scorer would hit
    every time. With continuous scores the two agree.

    Args:
      scorer: scores of user rows against the catalogue.
      user_rows: int64 [n], the held-out ratings' users.
      movie_rows: int64 [n], their movies.
      ks: cut-offs.

    Returns:
      {"top_1": ..., "top_100": ...}: the share of the n ratings that hit.

    Raises:
      ValueError: no ratings, or columns of different lengths.
    """
    user_rows = np.asarray(user_rows, np.int64)
    movie_rows = np.asarray(movie_rows, np.int64)
    if len(user_rows) == 0 or user_rows.shape != movie_rows.shape:
        raise ValueError(
            "top_k_accuracy needs equal, non-empty user and movie rows, got "
            f"{len(user_rows)} and {len(movie_rows)}"
        )

    ranks = np.empty(len(user_rows), dtype=np.int64)
    order = np.argsort(user_rows, kind="stable")
    users, firsts = np.unique(user_rows[order], return_index=True)
    bounds = np.r_[firsts, len(order)]
    for start in range(0, len(users), _USER_BATCH):
        batch_users = users[start : start + _USER_BATCH]
        scores = np.asarray(scorer(batch_users))
        _check_scores(scores, len(batch_users))
        chosen = order[bounds[start] : bounds[start + len(batch_users)]]
        # Row of each chosen rating's user inside `scores`.
        local = np.searchsorted(batch_users, user_rows[chosen])
        for part in range(0, len(chosen), _RATING_BATCH):
            rows = local[part : part + _RATING_BATCH]
            movies = movie_rows[chosen[part : part + _RATING_BATCH]]
            ranks[chosen[part : part + _RATING_BATCH]] = _ranks(
                scores[rows], movies
            )
    return {f"top_{k}": float(np.mean(ranks < k)) for k in ks}


def ranking_quality(
    scorer: Scorer,
    seen: UserMovies,
    held_out: UserMovies,
    max_k: int = max(SERVING_KS),
    ndcg_k: int = NDCG_K,
) -> RankingQuality:
    """The serving protocol: per-user Recall@k and NDCG with seen removed.

    For each user with at least one held-out movie that is not also among
    their seen movies, the catalogue minus their seen movies is ranked by
    score (ties to the movie earlier in the catalogue). Recall@k is the
    number of held-out movies in the top k divided by min(k, number of
    held-out movies), so a perfect ranking scores 1 at every k. NDCG@k uses
    binary relevance, divided by the DCG of a perfect ranking.

    Args:
      scorer: scores of user rows against the catalogue.
      seen: each user's training movies, removed from their ranking.
      held_out: each user's test (or validation) movies.
      max_k: the longest cut-off for recall.
      ndcg_k: the cut-off of NDCG.

    Returns:
      Recall at every k from 1 to max_k and NDCG@ndcg_k, averaged over
      users, and each user's Recall@min(PER_USER_K, max_k).

    Raises:
      ValueError: the two matrices have different shapes, a cut-off is not
        positive, or no user has a held-out movie.
    """
    if (seen.num_users, seen.num_movies) != (
        held_out.num_users,
        held_out.num_movies,
    ):
        raise ValueError(
            "seen and held_out must cover the same users and movies, got "
            f"{seen.num_users}x{seen.num_movies} and "
            f"{held_out.num_users}x{held_out.num_movies}"
        )
    if min(max_k, ndcg_k) < 1:
        raise ValueError(f"cut-offs must be positive, got {max_k}, {ndcg_k}")
    depth = min(max(max_k, ndcg_k), seen.num_movies)
    discounts = 1.0 / np.log2(np.arange(2, depth + 2))

    recall_sum = np.zeros(max_k)
    ndcg_sum = 0.0
    num_users = 0
    user_k = min(PER_USER_K, max_k)
    evaluated, user_recall = [], []
    users = np.flatnonzero(held_out.counts() > 0)
    for start in range(0, len(users), _USER_BATCH):
        batch = users[start : start + _USER_BATCH]
        excluded = seen.dense(batch)
        relevant = held_out.dense(batch) & ~excluded
        num_relevant = relevant.sum(axis=1)
        keep = num_relevant > 0
        if not keep.any():
            continue
        batch, excluded = batch[keep], excluded[keep]
        relevant, num_relevant = relevant[keep], num_relevant[keep]

        scores = np.asarray(scorer(batch), dtype=np.float64)
        _check_scores(scores, len(batch))
        scores[excluded] = -np.inf
        # A stable sort of the negated scores breaks ties by catalogue
        # position, so results do not depend on the sort's internals.
        top = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
        hits = np.take_along_axis(relevant, top, axis=1)

        cumulative = np.cumsum(hits[:, :max_k], axis=1)
        if cumulative.shape[1] < max_k:
            # A catalogue smaller than max_k: recall stays where it ended.
            cumulative = np.pad(
                cumulative,
                ((0, 0), (0, max_k - cumulative.shape[1])),
                mode="edge",
            )
        ks = np.arange(1, max_k + 1)
        recall = cumulative / np.minimum(ks[None, :], num_relevant[:, None])
        recall_sum += recall.sum(axis=0)
        evaluated.append(batch)
        user_recall.append(recall[:, user_k - 1])

        cut = min(ndcg_k, depth)
        dcg = hits[:, :cut] @ discounts[:cut]
        ideal = np.cumsum(discounts[:cut])[np.minimum(num_relevant, cut) - 1]
        ndcg_sum += float((dcg / ideal).sum())
        num_users += len(batch)

    if num_users == 0:
        raise ValueError(
            "no user has a held-out movie outside their seen movies"
        )
    return RankingQuality(
        recall=recall_sum / num_users,
        ndcg=ndcg_sum / num_users,
        ndcg_k=ndcg_k,
        num_users=num_users,
        users=np.concatenate(evaluated).astype(np.int64),
        user_recall=np.concatenate(user_recall),
        user_recall_k=user_k,
    )


def embedding_scorer(
    user_embeddings: np.ndarray, movie_embeddings: np.ndarray
) -> Scorer:
    """Scores by dot product, as the served index does.

    Args:
      user_embeddings: float32 [num_users, dim], row r for user row r.
      movie_embeddings: float32 [num_movies, dim], row r for movie row r.
    """
    movies_t = np.ascontiguousarray(movie_embeddings.T)

    def score(users: np.ndarray) -> np.ndarray:
        return user_embeddings[users] @ movies_t

    return score


def _ranks(scores: np.ndarray, movies: np.ndarray) -> np.ndarray:
    """How many movies outrank each target: higher scores, and equal scores
    earlier in the catalogue.

    Args:
      scores: float [n, num_movies], row i the scores of rating i's user.
      movies: int64 [n], rating i's movie.

    Returns:
      int64 [n], 0 for a movie ranked first.
    """
    target = np.take_along_axis(scores, movies[:, None], axis=1)
    above = (scores > target).sum(axis=1)
    earlier = np.arange(scores.shape[1])[None, :] < movies[:, None]
    tied = ((scores == target) & earlier).sum(axis=1)
    return above + tied


def _check_scores(scores: np.ndarray, num_users: int) -> None:
    if scores.ndim != 2 or scores.shape[0] != num_users:
        raise ValueError(
            f"a scorer must return [{num_users}, num_movies] scores for "
            f"{num_users} users, got shape {scores.shape}"
        )
