"""Movie content tables and user history tables, row 0 for unknown ids."""

import numpy as np
import pytest

from trainer import features, movielens
from trainer.evaluation import UserMovies


@pytest.mark.parametrize(
    "title, year",
    [
        ("Toy Story (1995)", 1995),
        ("Café Society (1995) ", 1995),
        ("Star Wars: Episode IV (1977)", 1977),
        ("Prime Suspect (1991-)", 1991),
        ("Unknown", None),
        ("1984 (no year)", None),
    ],
)
def test_release_year_reads_the_trailing_parentheses(title, year):
    assert features.release_year(title) == year


def test_title_words_are_lower_cased_without_the_year():
    assert features.title_words("Café Society (1995)") == ["café", "society"]
    assert features.title_words("Twelve Monkeys, The (1995)") == [
        "twelve",
        "monkeys",
        "the",
    ]


def _dataset():
    movies = {
        10: movielens.Movie(10, "Night of the Comet (1984)", ("Sci-Fi",)),
        20: movielens.Movie(20, "Night Moves (1975)", ("Crime", "Thriller")),
        30: movielens.Movie(30, "Untitled", ()),
    }
    ratings = movielens.Ratings(
        np.array([1]), np.array([10]), np.ones(1), np.zeros(1, np.int64)
    )
    return movielens.Dataset("toy", movies, ratings, "0" * 64)


def test_movie_features_tables_have_an_unknown_row_of_zeros():
    table = features.movie_features(_dataset(), np.array([10, 20, 30]))

    assert table.genre_names == ("Crime", "Sci-Fi", "Thriller")
    np.testing.assert_allclose(
        table.genres,
        [[0, 0, 0], [0, 1, 0], [0.5, 0, 0.5], [0, 0, 0]],
    )
    assert table.years == (1975, 1984)
    np.testing.assert_array_equal(table.year, [0, 2, 1, 0])
    # Only "night" is in two titles; the rest are dropped.
    assert table.words == ("night",)
    np.testing.assert_array_equal(table.title_words, [[0], [1], [1], [0]])


def test_history_table_shifts_rows_for_the_unknown_user():
    seen = UserMovies.build(np.array([0, 1, 1]), np.array([2, 0, 1]), 2, 3)

    table = features.HistoryTable.from_matrix(seen)

    np.testing.assert_array_equal(table.row_splits, [0, 0, 1, 3])
    np.testing.assert_array_equal(table.movies, [3, 1, 2])
