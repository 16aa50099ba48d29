"""What each user has already rated, and what is popular, for one version.

The trainer saves it beside the index; the candidate service reads it to
leave seen movies out of a user's results and to tell unknown users (cold
start) from known ones. Stored as one `.npz` of plain arrays, loaded without
pickle.
"""

import dataclasses
from pathlib import Path

import numpy as np

HISTORY_FILE = "history.npz"


class HistoryLoadError(ValueError):
    """The history file is missing or malformed; the message says which."""


@dataclasses.dataclass(frozen=True)
class UserHistory:
    """Users' rated movies in CSR form, plus the popularity ranking.

    Attributes:
      user_ids: `[users]` unicode user ids, sorted.
      offsets: int64 `[users + 1]`; user i rated
        `seen_movie_ids[offsets[i]:offsets[i + 1]]`.
      seen_movie_ids: int64 `[ratings]`.
      popular_movie_ids: int64 `[movies]`, most rated first.
      popular_share: float32 `[movies]`, share of users who rated each.
    """

    user_ids: np.ndarray
    offsets: np.ndarray
    seen_movie_ids: np.ndarray
    popular_movie_ids: np.ndarray
    popular_share: np.ndarray

    @classmethod
    def build(
        cls,
        user_ids: np.ndarray,
        movie_ids: np.ndarray,
        catalogue: np.ndarray,
    ) -> "UserHistory":
        """Builds the history from ratings.

        Args:
          user_ids: int or str `[ratings]`, the rater of each rating.
          movie_ids: int64 `[ratings]`, the rated movie.
          catalogue: int64 `[movies]`, every movie id; unrated ones rank
            last in popularity.
        """
        users = np.asarray(user_ids).astype(str)
        movies = np.asarray(movie_ids, dtype=np.int64)
        order = np.lexsort((movies, users))
        users, movies = users[order], movies[order]
        # A user who rated a movie twice has seen it once.
        first = np.ones(len(users), dtype=bool)
        first[1:] = (users[1:] != users[:-1]) | (movies[1:] != movies[:-1])
        users, movies = users[first], movies[first]
        unique_users, starts = np.unique(users, return_index=True)

        catalogue = np.asarray(catalogue, dtype=np.int64)
        by_id = np.argsort(catalogue)
        positions = by_id[np.searchsorted(catalogue, movies, sorter=by_id)]
        raters = np.bincount(positions, minlength=len(catalogue))
        # Stable, so ties keep catalogue order and the ranking is repeatable.
        ranking = np.argsort(-raters, kind="stable")
        return cls(
            user_ids=unique_users,
            offsets=np.append(starts, len(users)).astype(np.int64),
            seen_movie_ids=movies,
            popular_movie_ids=catalogue[ranking],
            popular_share=(
                raters[ranking] / max(len(unique_users), 1)
            ).astype(np.float32),
        )

    def seen(self, user_id: str) -> np.ndarray | None:
        """The movies a user rated, or None for a user not in the data."""
        i = int(np.searchsorted(self.user_ids, user_id))
        if i == len(self.user_ids) or self.user_ids[i] != user_id:
            return None
        return self.seen_movie_ids[self.offsets[i] : self.offsets[i + 1]]

    def save(self, directory: Path) -> None:
        np.savez(
            Path(directory) / HISTORY_FILE,
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
        )

    @classmethod
    def load(cls, directory: Path) -> "UserHistory":
        """Reads a saved history.

        Raises:
          HistoryLoadError: the file is missing, unreadable or inconsistent.
        """
        path = Path(directory) / HISTORY_FILE
        try:
            with np.load(path, allow_pickle=False) as arrays:
                history = cls(
                    **{
                        f.name: arrays[f.name]
                        for f in dataclasses.fields(cls)
                    }
                )
        except (OSError, KeyError, ValueError) as e:
            raise HistoryLoadError(f"cannot read {path}: {e}") from e
        if (
            len(history.offsets) != len(history.user_ids) + 1
            or history.offsets[-1] != len(history.seen_movie_ids)
            or len(history.popular_movie_ids) != len(history.popular_share)
        ):
            raise HistoryLoadError(f"{path}: arrays have inconsistent sizes")
        return history
