"""Per-movie and per-user features, as arrays the towers embed as constants.

The towers must be servable from ids alone, so every feature here is a table
indexed by a tower's lookup index: row 0 is the out-of-vocabulary row (an
unknown id) and row i + 1 belongs to the i-th known id. Tables are built from
the training ratings only, so no held-out rating leaks into a feature.
"""

import dataclasses
import re

import numpy as np

from trainer import movielens
from trainer.evaluation import UserMovies

# A title ends in its release year, e.g. "Toy Story (1995)"; some carry a
# range or nothing at all.
_YEAR = re.compile(r"\((\d{4})(?:[-–]\d{0,4})?\)\s*$")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# Title words seen in fewer movies than this are dropped: a word of a single
# title says nothing its id embedding does not already say.
MIN_WORD_MOVIES = 2


@dataclasses.dataclass(frozen=True, eq=False)
class MovieFeatures:
    """Content features of the catalogue, row 0 for an unknown movie.

    Attributes:
      genres: float32 [num_movies + 1, num_genres], multi-hot, each row
        divided by its genre count so that a movie weighs the same however
        many genres it lists.
      genre_names: the genres' names, in column order.
      year: int64 [num_movies + 1], index into `years` plus one; 0 when the
        title carries no year.
      years: the distinct release years, ascending.
      title_words: int64 [num_movies + 1, max_words], word indices plus one
        into `words`, padded with 0.
      words: the title vocabulary.
    """

    genres: np.ndarray
    genre_names: tuple[str, ...]
    year: np.ndarray
    years: tuple[int, ...]
    title_words: np.ndarray
    words: tuple[str, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class HistoryTable:
    """Each user's training movies, as one flat array and offsets.

    Attributes:
      row_splits: int64 [num_users + 2]; row 0 is the empty history of an
        unknown user, row u + 1 belongs to user row u.
      movies: int64 [nnz], movie lookup indices (movie row plus one).
    """

    row_splits: np.ndarray
    movies: np.ndarray

    @classmethod
    def from_matrix(cls, seen: UserMovies) -> "HistoryTable":
        """The table of a user x movie matrix (users and movies numbered
        as in `evaluation.Interactions`)."""
        return cls(
            row_splits=np.r_[0, seen.row_splits].astype(np.int64),
            movies=(seen.movie_rows + 1).astype(np.int64),
        )


def release_year(title: str) -> int | None:
    """The year in a title's trailing parentheses, e.g. 1995 for
    "Toy Story (1995)"; None when there is none."""
    found = _YEAR.search(title)
    return int(found.group(1)) if found else None


def title_words(title: str) -> list[str]:
    """A title's lower-cased words without its trailing year."""
    return _WORD.findall(_YEAR.sub("", title).lower())


def movie_features(
    dataset: movielens.Dataset, movie_ids: np.ndarray
) -> MovieFeatures:
    """Builds the content tables for a catalogue.

    Args:
      dataset: the release, for titles and genres.
      movie_ids: int64 [num_movies], the catalogue in row order.

    Returns:
      Tables with num_movies + 1 rows, row 0 all zeros.
    """
    movies = [dataset.movies[int(m)] for m in movie_ids]

    genre_names = tuple(sorted({g for m in movies for g in m.genres}))
    genre_column = {g: i for i, g in enumerate(genre_names)}
    genres = np.zeros((len(movies) + 1, len(genre_names)), np.float32)
    for row, movie in enumerate(movies, start=1):
        for g in movie.genres:
            genres[row, genre_column[g]] = 1.0 / len(movie.genres)

    found_years = [release_year(m.title) for m in movies]
    years = tuple(sorted({y for y in found_years if y is not None}))
    year_index = {y: i + 1 for i, y in enumerate(years)}
    year = np.array(
        [0] + [year_index.get(y, 0) for y in found_years], dtype=np.int64
    )

    words_of = [sorted(set(title_words(m.title))) for m in movies]
    word_movies: dict[str, int] = {}
    for ws in words_of:
        for w in ws:
            word_movies[w] = word_movies.get(w, 0) + 1
    words = tuple(
        sorted(w for w, n in word_movies.items() if n >= MIN_WORD_MOVIES)
    )
    word_index = {w: i + 1 for i, w in enumerate(words)}
    kept = [[word_index[w] for w in ws if w in word_index] for ws in words_of]
    width = max([1] + [len(k) for k in kept])
    padded = np.zeros((len(movies) + 1, width), np.int64)
    for row, ks in enumerate(kept, start=1):
        padded[row, : len(ks)] = ks

    return MovieFeatures(
        genres=genres,
        genre_names=genre_names,
        year=year,
        years=years,
        title_words=padded,
        words=words,
    )
