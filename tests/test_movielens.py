"""MovieLens loading: every release layout reads into the same Dataset, bad
rows are reported by file and line, downloads are verified before use."""

import csv
import dataclasses
import hashlib
import http.server
import io
import os
import pickle
import socket
import threading
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from trainer import movielens

REPO = Path(__file__).resolve().parent.parent
SEED = 20240611


# ------------------------------------------------------------ real data


def _real_ml100k_dir() -> Path | None:
    for candidate in (
        os.environ.get("MOVIELENS_DATA_DIR"),
        REPO.parent / "shared" / "data" / "ml-100k",
    ):
        if candidate and (Path(candidate) / "u.data").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="module")
def real_dir() -> Path:
    folder = _real_ml100k_dir()
    if folder is None:
        pytest.skip(
            "MovieLens 100K not found: set MOVIELENS_DATA_DIR or place it "
            "at ../shared/data/ml-100k next to the repository"
        )
    return folder


@pytest.fixture(scope="module")
def real(real_dir) -> movielens.Dataset:
    return movielens.load(real_dir)


def test_real_ml100k_has_the_published_counts(real):
    assert real.name == "ml-100k"
    assert len(real.ratings) == 100_000
    assert len(np.unique(real.ratings.user_id)) == 943
    assert len(real.movies) == 1682
    assert real.ratings.user_id.dtype == np.int64
    assert real.ratings.movie_id.dtype == np.int64
    assert real.ratings.rating.dtype == np.float32
    assert real.ratings.timestamp.dtype == np.int64
    assert set(np.unique(real.ratings.rating)) == {1, 2, 3, 4, 5}


def test_real_ml100k_first_rating_matches_the_file(real):
    # u.data starts with "196\t242\t3\t881250949".
    first = tuple(
        column[0].item()
        for column in (
            real.ratings.user_id,
            real.ratings.movie_id,
            real.ratings.rating,
            real.ratings.timestamp,
        )
    )
    assert first == (196, 242, 3.0, 881250949)


def test_real_ml100k_decodes_latin1_titles_exactly(real, real_dir):
    # u.item stores "Mis\xe9rables" as one Latin-1 byte.
    assert b"Mis\xe9rables, Les (1995)" in (real_dir / "u.item").read_bytes()
    assert real.movies[543].title == "Misérables, Les (1995)"
    assert real.movies[1633].title == "Á köldum klaka (Cold Fever) (1994)"


def test_real_ml100k_titles_round_trip_to_the_file_bytes(real, real_dir):
    lines = (real_dir / "u.item").read_bytes().splitlines()
    raw_titles = {
        int(line.split(b"|")[0]): line.split(b"|")[1] for line in lines
    }

    assert {
        m.movie_id: m.title.encode("latin-1") for m in real.movies.values()
    } == raw_titles


def test_real_ml100k_has_no_replacement_characters(real):
    for movie in real.movies.values():
        assert "\ufffd" not in movie.title
        assert all("\ufffd" not in genre for genre in movie.genres)


def test_real_ml100k_keeps_duplicate_titles_as_distinct_movies(real):
    assert real.movies[246].title == real.movies[268].title
    assert real.movies[246].title == "Chasing Amy (1997)"
    ids_by_title = {}
    for movie in real.movies.values():
        ids_by_title.setdefault(movie.title, []).append(movie.movie_id)
    shared = {t: ids for t, ids in ids_by_title.items() if len(ids) > 1}
    assert len(shared) == 18
    assert sum(len(ids) for ids in ids_by_title.values()) == 1682


def test_real_ml100k_genres_and_unknown_movie(real):
    assert real.movies[1].genres == ("Animation", "Children's", "Comedy")
    # Movie 267 is published with title "unknown", no dates and only the
    # "unknown" genre flag.
    assert real.movies[267] == movielens.Movie(267, "unknown", ())


def test_real_ml100k_sha256_is_stable(real, real_dir):
    by_hand = hashlib.sha256(
        (real_dir / "u.data").read_bytes() + (real_dir / "u.item").read_bytes()
    ).hexdigest()
    # Pinned: `cat u.data u.item | sha256sum` on the published files.
    assert real.sha256 == (
        "2d6ed32c725333630b5811ea90a2c89812918438a3b0d4a320e22d97d159e4d5"
    )
    assert real.sha256 == by_hand
    assert movielens.load(real_dir).sha256 == real.sha256


def test_real_ml100k_matches_the_published_file_checksums(real_dir):
    for name, expected in movielens.KNOWN_SHA256["ml-100k"].items():
        digest = hashlib.sha256((real_dir / name).read_bytes()).hexdigest()
        assert digest == expected


# ------------------------------------------------------ small releases


@dataclasses.dataclass(frozen=True)
class Format:
    """How a test writes one release layout."""

    name: str
    folder: str
    ratings_file: str
    movies_file: str
    encoding: str
    header_lines: int
    separator: str
    movie_line: Callable[[str, str, Sequence[str]], str]
    half_stars: bool
    # A title only this format's encoding can hold, or None.
    extra_title: str | None = None

    def rating_line(self, fields: Sequence[str]) -> str:
        if self.separator == ",":
            return _csv_line(fields)
        return self.separator.join(fields)


def _csv_line(fields: Sequence[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    return out.getvalue()


def _100k_movie_line(movie_id: str, title: str, genres: Sequence[str]) -> str:
    flags = ["0"] * len(movielens.ML100K_GENRES)
    for genre in genres or ("unknown",):
        flags[movielens.ML100K_GENRES.index(genre)] = "1"
    url = f"http://example.invalid/{movie_id}"
    return "|".join([movie_id, title, "01-Jan-1995", "", url, *flags])


def _1m_movie_line(movie_id: str, title: str, genres: Sequence[str]) -> str:
    return "::".join([movie_id, title, "|".join(genres)])


def _csv_movie_line(movie_id: str, title: str, genres: Sequence[str]) -> str:
    return _csv_line(
        [movie_id, title, "|".join(genres) or "(no genres listed)"]
    )


ML100K = Format(
    name="ml-100k",
    folder="ml-100k",
    ratings_file="u.data",
    movies_file="u.item",
    encoding="latin-1",
    header_lines=0,
    separator="\t",
    movie_line=_100k_movie_line,
    half_stars=False,
)
ML1M = Format(
    name="ml-1m",
    folder="ml-1m",
    ratings_file="ratings.dat",
    movies_file="movies.dat",
    encoding="latin-1",
    header_lines=0,
    separator="::",
    movie_line=_1m_movie_line,
    half_stars=False,
)
CSV = Format(
    name="ml-latest-small",
    folder="ml-latest-small",
    ratings_file="ratings.csv",
    movies_file="movies.csv",
    encoding="utf-8",
    header_lines=1,
    separator=",",
    movie_line=_csv_movie_line,
    half_stars=True,
    extra_title="千と千尋の神隠し (2001)",
)
FORMATS = [ML100K, ML1M, CSV]
FORMAT_IDS = [f.name for f in FORMATS]
HEADERS = {
    "ratings.csv": "userId,movieId,rating,timestamp",
    "movies.csv": "movieId,title,genres",
}

# In file order, ids deliberately unsorted; two movies share a title, one has
# a Latin-1 title, one has commas and quotes, one has no genre.
MOVIES = (
    movielens.Movie(2, "Misérables, Les (1995)", ("Drama", "Musical")),
    movielens.Movie(
        1, "Toy Story (1995)", ("Animation", "Children's", "Comedy")
    ),
    movielens.Movie(3, '"Great, Big" Movie (1999)', ("Comedy",)),
    movielens.Movie(7, "Twin Title (1998)", ()),
    movielens.Movie(5, "Twin Title (1998)", ("Drama",)),
)
NUM_RATINGS = 30


@dataclasses.dataclass
class Release:
    """A small release written by a test, with what loading must give."""

    folder: Path
    fmt: Format
    movie_lines: list[str]
    rating_lines: list[str]
    movies: dict[int, movielens.Movie]
    ratings: dict[str, np.ndarray]

    def write(self, line_ending: str = "\n", trailer: str = "") -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, lines in (
            (self.fmt.ratings_file, self.rating_lines),
            (self.fmt.movies_file, self.movie_lines),
        ):
            header = [HEADERS[name]] if name in HEADERS else []
            text = "".join(f"{line}{line_ending}" for line in header + lines)
            (self.folder / name).write_bytes(
                (text + trailer).encode(self.fmt.encoding)
            )
        if self.fmt is ML100K:
            genres = "".join(
                f"{g}|{i}\n" for i, g in enumerate(movielens.ML100K_GENRES)
            )
            (self.folder / "u.genre").write_text(genres + "\n")

    def path(self, which: str) -> Path:
        name = {
            "ratings": self.fmt.ratings_file,
            "movies": self.fmt.movies_file,
        }
        return self.folder / name[which]


def make_release(fmt: Format, root: Path, seed: int = SEED) -> Release:
    """A seeded release in `fmt`, written under root/<fmt.folder>."""
    movies = list(MOVIES)
    if fmt.extra_title is not None:
        movies.append(movielens.Movie(9, fmt.extra_title, ("Animation",)))
    ids = np.array([m.movie_id for m in movies])

    rng = np.random.default_rng(seed)
    stars = rng.integers(1, 11, NUM_RATINGS) / 2 if fmt.half_stars else None
    ratings = {
        "user_id": rng.integers(1, 12, NUM_RATINGS),
        "movie_id": rng.choice(ids, NUM_RATINGS),
        "rating": (
            stars
            if stars is not None
            else rng.integers(1, 6, NUM_RATINGS).astype(float)
        ),
        "timestamp": rng.integers(874_000_000, 1_700_000_000, NUM_RATINGS),
    }

    def star_text(value: float) -> str:
        return str(value) if fmt.half_stars else str(int(value))

    rating_lines = [
        fmt.rating_line([str(u), str(m), star_text(r), str(t)])
        for u, m, r, t in zip(*ratings.values(), strict=True)
    ]
    movie_lines = [
        fmt.movie_line(str(m.movie_id), m.title, m.genres) for m in movies
    ]
    release = Release(
        folder=root / fmt.folder,
        fmt=fmt,
        movie_lines=movie_lines,
        rating_lines=rating_lines,
        movies={m.movie_id: m for m in movies},
        ratings=ratings,
    )
    release.write()
    return release


def assert_loads_as_written(dataset: movielens.Dataset, release: Release):
    assert dataset.name == release.fmt.name
    assert dataset.movies == release.movies
    assert list(dataset.movies) == list(release.movies)
    expected_dtypes = {
        "user_id": np.int64,
        "movie_id": np.int64,
        "rating": np.float32,
        "timestamp": np.int64,
    }
    for name, dtype in expected_dtypes.items():
        column = getattr(dataset.ratings, name)
        assert column.dtype == dtype, name
        # Half stars and small integers are exact in float32.
        np.testing.assert_array_equal(column, release.ratings[name])
    files = (
        release.path("ratings").read_bytes()
        + release.path("movies").read_bytes()
    )
    assert dataset.sha256 == hashlib.sha256(files).hexdigest()


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_small_release_loads_exactly_as_written(fmt, tmp_path):
    release = make_release(fmt, tmp_path)

    assert_loads_as_written(movielens.load(release.folder), release)


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_titles_decode_exactly_in_the_release_encoding(fmt, tmp_path):
    release = make_release(fmt, tmp_path)
    raw = release.path("movies").read_bytes()

    movies = movielens.load(release.folder).movies

    assert "Misérables, Les (1995)".encode(fmt.encoding) in raw
    assert movies[2].title == "Misérables, Les (1995)"
    assert movies[3].title == '"Great, Big" Movie (1999)'
    if fmt.extra_title is not None:
        assert movies[9].title == fmt.extra_title
    assert not any("\ufffd" in m.title for m in movies.values())


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_duplicate_titles_stay_distinct_movies(fmt, tmp_path):
    movies = movielens.load(make_release(fmt, tmp_path).folder).movies

    assert movies[7].title == movies[5].title == "Twin Title (1998)"
    assert movies[7].genres == ()
    assert movies[5].genres == ("Drama",)


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_crlf_line_endings_and_blank_trailing_lines_load_the_same(
    fmt, tmp_path
):
    release = make_release(fmt, tmp_path)
    release.write(line_ending="\r\n", trailer="\r\n\n  \n")

    assert_loads_as_written(movielens.load(release.folder), release)


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_small_blocks_load_the_same_as_one_block(fmt, tmp_path, monkeypatch):
    release = make_release(fmt, tmp_path)
    # Blank lines mid-file push some blocks through the line parser, others
    # through NumPy, so both must agree on values and order.
    release.rating_lines.insert(4, "")
    release.write()
    monkeypatch.setattr(movielens, "_BLOCK_BYTES", 40)

    assert_loads_as_written(movielens.load(release.folder), release)


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_clean_blocks_never_need_the_line_parser(fmt, tmp_path, monkeypatch):
    release = make_release(fmt, tmp_path)
    # The line parser exists for exact error lines; well-formed data that
    # reached it would make every large load several times slower.
    monkeypatch.setattr(movielens, "_BLOCK_BYTES", 40)
    monkeypatch.setattr(movielens, "_parse_block_slowly", _unexpected)

    assert_loads_as_written(movielens.load(release.folder), release)


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_line_parser_alone_reads_the_same_values(fmt, tmp_path, monkeypatch):
    release = make_release(fmt, tmp_path)
    monkeypatch.setattr(
        movielens, "_parse_block_fast", lambda *args, **kwargs: None
    )

    assert_loads_as_written(movielens.load(release.folder), release)


def _unexpected(*args, **kwargs):
    raise AssertionError("the line parser was used")


def test_csv_release_is_named_after_its_folder(tmp_path):
    release = make_release(dataclasses.replace(CSV, folder="ml-25m"), tmp_path)

    assert movielens.load(f"{release.folder}/").name == "ml-25m"


def test_quoted_csv_numbers_are_accepted(tmp_path):
    release = make_release(CSV, tmp_path)
    release.rating_lines = [
        ",".join(f'"{field}"' for field in line.split(","))
        for line in release.rating_lines
    ]
    release.write()

    assert_loads_as_written(movielens.load(release.folder), release)


def test_100k_without_u_genre_uses_the_published_genre_order(tmp_path):
    release = make_release(ML100K, tmp_path)
    (release.folder / "u.genre").unlink()

    movies = movielens.load(release.folder).movies

    assert movies[1].genres == ("Animation", "Children's", "Comedy")


def test_100k_genre_names_come_from_u_genre(tmp_path):
    release = make_release(ML100K, tmp_path)
    names = [f"G{i}" for i in range(len(movielens.ML100K_GENRES))]
    (release.folder / "u.genre").write_text(
        "".join(f"{name}|{i}\n" for i, name in enumerate(names))
    )

    movies = movielens.load(release.folder).movies

    # Animation, Children's and Comedy are columns 3, 4 and 5.
    assert movies[1].genres == ("G3", "G4", "G5")


def test_loaded_ratings_are_read_only(tmp_path):
    ratings = movielens.load(make_release(ML100K, tmp_path).folder).ratings

    with pytest.raises(ValueError, match="read-only"):
        ratings.rating[0] = 5.0


def test_load_logs_what_it_loaded(tmp_path, caplog):
    release = make_release(ML1M, tmp_path)
    caplog.set_level("INFO", logger="trainer.movielens")

    movielens.load(release.folder)

    users = len(np.unique(release.ratings["user_id"]))
    assert caplog.messages == [
        f"loaded MovieLens ml-1m from {release.folder}: {NUM_RATINGS} "
        f"ratings, {users} users, {len(MOVIES)} movies"
    ]


def test_load_lists_what_it_looked_for_when_no_release_matches(tmp_path):
    (tmp_path / "u.data").write_text("1\t1\t1\t1\n")  # u.item is missing

    with pytest.raises(FileNotFoundError) as caught:
        movielens.load(tmp_path)

    message = str(caught.value)
    for name in ("u.data + u.item", "ratings.dat + movies.dat"):
        assert name in message
    assert "ratings.csv + movies.csv" in message
    assert str(tmp_path) in message


def test_load_of_a_missing_folder_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        movielens.load(tmp_path / "nowhere")


# ------------------------------------------------------ malformed rows


@dataclasses.dataclass(frozen=True)
class Fault:
    """One way to break a row: which file, which row, what it becomes."""

    name: str
    file: str  # "ratings" or "movies"
    index: int  # 0-based data row (header excluded)
    make_line: Callable[[Format], str]
    reason: str  # a fragment of the message; {movies_file} is filled in


def _drop_last_movie_field(fmt: Format) -> str:
    line = fmt.movie_line("3", "Film (1990)", ("Drama",))
    separator = {"u.item": "|", "movies.dat": "::", "movies.csv": ","}
    return line.rsplit(separator[fmt.movies_file], 1)[0]


TS = "881250949"
FAULTS = [
    Fault(
        "too_few_rating_fields",
        "ratings",
        4,
        lambda f: f.rating_line(["1", "2", "3"]),
        "expected 4 ",
    ),
    Fault(
        "too_many_rating_fields",
        "ratings",
        4,
        lambda f: f.rating_line(["1", "2", "3", TS, "9"]),
        "got 5",
    ),
    Fault(
        "non_integer_user_id",
        "ratings",
        0,
        lambda f: f.rating_line(["u1", "2", "3", TS]),
        "user id 'u1' is not an integer",
    ),
    Fault(
        "fractional_movie_id",
        "ratings",
        7,
        lambda f: f.rating_line(["1", "2.5", "3", TS]),
        "movie id '2.5' is not an integer",
    ),
    Fault(
        "non_numeric_rating",
        "ratings",
        4,
        lambda f: f.rating_line(["1", "2", "good", TS]),
        "rating 'good' is not a number",
    ),
    Fault(
        "nan_rating",
        "ratings",
        4,
        lambda f: f.rating_line(["1", "2", "nan", TS]),
        "rating 'nan' is not a number",
    ),
    Fault(
        "rating_above_five_stars",
        "ratings",
        6,
        lambda f: f.rating_line(["1", "2", "7", TS]),
        "rating '7' is outside 0.5 to 5 stars",
    ),
    Fault(
        "zero_rating",
        "ratings",
        5,
        lambda f: f.rating_line(["1", "2", "0", TS]),
        "rating '0' is outside 0.5 to 5 stars",
    ),
    Fault(
        "non_numeric_timestamp",
        "ratings",
        NUM_RATINGS - 1,
        lambda f: f.rating_line(["1", "2", "3", "yesterday"]),
        "timestamp 'yesterday' is not an integer",
    ),
    Fault(
        "rating_of_unknown_movie",
        "ratings",
        4,
        lambda f: f.rating_line(["1", "999", "3", TS]),
        "movie id 999 is not in {movies_file}",
    ),
    Fault(
        "duplicate_movie_id",
        "movies",
        3,
        lambda f: f.movie_line("1", "Another Movie (2000)", ("Drama",)),
        "duplicate movie id 1",
    ),
    Fault(
        "non_integer_movie_id",
        "movies",
        1,
        lambda f: f.movie_line("x1", "Toy Story (1995)", ("Comedy",)),
        "movie id 'x1' is not an integer",
    ),
    Fault(
        "too_few_movie_fields",
        "movies",
        2,
        _drop_last_movie_field,
        "-separated fields, got",
    ),
]


@pytest.mark.parametrize("block_bytes", [None, 40], ids=["one_block", "blocks"])
@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_IDS)
def test_malformed_row_names_file_line_and_row(
    fmt, fault, block_bytes, tmp_path, monkeypatch
):
    release = make_release(fmt, tmp_path)
    bad_line = fault.make_line(fmt)
    lines = {"ratings": release.rating_lines, "movies": release.movie_lines}
    lines[fault.file][fault.index] = bad_line
    release.write()
    if block_bytes is not None:
        monkeypatch.setattr(movielens, "_BLOCK_BYTES", block_bytes)

    with pytest.raises(movielens.DataFormatError) as caught:
        movielens.load(release.folder)

    error = caught.value
    line = fmt.header_lines + fault.index + 1
    assert error.path == release.path(fault.file)
    assert error.line == line
    assert error.row == bad_line
    assert str(error).startswith(f"{error.path} line {line}: ")
    assert fault.reason.format(movies_file=fmt.movies_file) in str(error)
    assert str(error).endswith(f": {bad_line!r}")


def test_field_count_error_reads_as_documented(tmp_path):
    release = make_release(ML100K, tmp_path)
    release.rating_lines[16] = "1\t2\t3"
    release.write()
    path = release.path("ratings")

    with pytest.raises(movielens.DataFormatError) as caught:
        movielens.load(release.folder)

    assert str(caught.value) == (
        f"{path} line 17: expected 4 tab-separated fields, got 3: '1\\t2\\t3'"
    )


def test_first_of_several_bad_rows_is_reported(tmp_path):
    release = make_release(ML1M, tmp_path)
    release.rating_lines[9] = "1::2::3"
    release.rating_lines[3] = "1::2::x::4"
    release.write()

    with pytest.raises(movielens.DataFormatError) as caught:
        movielens.load(release.folder)

    assert caught.value.line == 4


@pytest.mark.parametrize("which", ["ratings", "movies"])
def test_invalid_utf8_in_a_csv_release_names_the_line(which, tmp_path):
    release = make_release(CSV, tmp_path)
    path = release.path(which)
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b",", b"\xff,", 1)
    path.write_bytes(b"\n".join(lines))

    with pytest.raises(movielens.DataFormatError) as caught:
        movielens.load(release.folder)

    assert caught.value.path == path
    assert caught.value.line == 4
    assert "byte 0xff" in str(caught.value)
    assert "not valid UTF-8" in str(caught.value)


@pytest.mark.parametrize("which", ["ratings", "movies"])
def test_csv_with_the_wrong_header_is_rejected_at_line_1(which, tmp_path):
    release = make_release(CSV, tmp_path)
    path = release.path(which)
    text = path.read_text(encoding="utf-8")
    path.write_text("a,b,c,d\n" + text.split("\n", 1)[1], encoding="utf-8")

    with pytest.raises(movielens.DataFormatError) as caught:
        movielens.load(release.folder)

    assert caught.value.line == 1
    assert caught.value.row == "a,b,c,d"
    assert HEADERS[path.name] in str(caught.value)


def test_csv_title_with_unbalanced_quotes_is_rejected(tmp_path):
    release = make_release(CSV, tmp_path)
    release.movie_lines[2] = '3,"Great, Big Movie (1999),Comedy'
    release.write()

    with pytest.raises(movielens.DataFormatError, match="malformed CSV"):
        movielens.load(release.folder)


@pytest.mark.parametrize(
    "flags, reason",
    [
        (["2"] + ["0"] * 18, "genre flag 0 is '2', not 0 or 1"),
        (["0", "1"] + ["0"] * 17, "u.genre does not name genre 1"),
    ],
    ids=["flag_not_binary", "flag_without_genre_name"],
)
def test_bad_100k_genre_flags_are_rejected(flags, reason, tmp_path):
    release = make_release(ML100K, tmp_path)
    release.movie_lines[1] = "|".join(["1", "T", "", "", "u", *flags])
    release.write()
    # Every genre but "Action" (column 1), which no other movie uses.
    (release.folder / "u.genre").write_text(
        "".join(
            f"{name}|{i}\n"
            for i, name in enumerate(movielens.ML100K_GENRES)
            if i != 1
        )
    )

    with pytest.raises(movielens.DataFormatError) as caught:
        movielens.load(release.folder)

    assert caught.value.line == 2
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    "genre_file, line",
    [("unknown|0\nDrama|x\n", 2), ("unknown|0\nDrama|0\n", 2), ("A|19\n", 1)],
    ids=["non_integer_index", "duplicate_index", "index_out_of_range"],
)
def test_bad_u_genre_rows_are_rejected(genre_file, line, tmp_path):
    release = make_release(ML100K, tmp_path)
    (release.folder / "u.genre").write_text(genre_file)

    with pytest.raises(movielens.DataFormatError) as caught:
        movielens.load(release.folder)

    assert caught.value.path == release.folder / "u.genre"
    assert caught.value.line == line


def test_data_format_error_survives_pickling():
    error = movielens.DataFormatError(Path("/x/u.data"), 3, "1\t2", "bad")

    copy = pickle.loads(pickle.dumps(error))

    assert (copy.path, copy.line, copy.row, copy.reason) == (
        Path("/x/u.data"),
        3,
        "1\t2",
        "bad",
    )
    assert str(copy) == str(error)


# ------------------------------------------------------------- Ratings


def test_ratings_converts_columns_to_the_documented_dtypes():
    ratings = movielens.Ratings(
        user_id=[1, 2],
        movie_id=np.array([3, 4], np.int32),
        rating=[4, 5],
        timestamp=[10, 20],
    )

    assert [ratings.user_id.dtype, ratings.movie_id.dtype] == [np.int64] * 2
    assert ratings.rating.dtype == np.float32
    assert ratings.timestamp.dtype == np.int64
    assert len(ratings) == 2


def test_ratings_leaves_the_callers_array_writable():
    user_id = np.array([1, 2], np.int64)

    movielens.Ratings(user_id, [1, 1], [1.0, 1.0], [0, 0])

    user_id[0] = 7  # Would raise if Ratings had frozen the caller's array.
    assert user_id[0] == 7


def test_ratings_rejects_columns_of_different_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        movielens.Ratings([1, 2], [1], [1.0, 2.0], [0, 0])


def test_ratings_rejects_fractional_ids():
    with pytest.raises(TypeError, match="movie_id"):
        movielens.Ratings([1], [1.5], [1.0], [0])


def test_ratings_compare_by_value():
    a = movielens.Ratings([1, 2], [3, 4], [1.0, 2.0], [5, 6])
    b = movielens.Ratings([1, 2], [3, 4], [1.0, 2.0], [5, 6])
    c = movielens.Ratings([1, 2], [3, 4], [1.0, 2.5], [5, 6])

    assert a == b
    assert a != c


# --------------------------------------------------------------- fetch


@dataclasses.dataclass
class Served:
    """A local HTTP server over a folder, and the paths it was asked for."""

    url: str
    root: Path
    requests: list[str]


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_request(self, code="-", size="-"):
            requests.append(self.path)

        def log_message(self, format, *args):
            pass  # Keeps test output clean; requests are recorded above.

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # A short poll interval so shutdown() returns promptly at teardown.
    thread = threading.Thread(
        target=httpd.serve_forever, args=(0.05,), daemon=True
    )
    thread.start()
    yield Served(f"http://127.0.0.1:{httpd.server_port}", root, requests)
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def closed_url() -> str:
    """A URL nothing listens on: a port bound, then released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def zip_folder(folder: Path, destination: Path, extra=()) -> None:
    """Zips `folder` under its own name, the way GroupLens archives are."""
    with zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, f"{folder.name}/{path.name}")
        for name, data in extra:
            zf.writestr(name, data)


def checksums(folder: Path, names=("u.data", "u.item")) -> dict[str, str]:
    return {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
        for name in names
    }


@pytest.fixture
def source(tmp_path) -> Release:
    """A small ml-100k release to publish."""
    return make_release(ML100K, tmp_path / "source")


def fetch(server_url: str, cache: Path, **kwargs) -> Path:
    kwargs.setdefault("release", "ml-100k")
    return movielens.fetch(
        cache_dir=cache, base_url=server_url, timeout=5, **kwargs
    )


def test_fetch_unpacks_and_verifies_a_good_archive(server, source, tmp_path):
    zip_folder(source.folder, server.root / "ml-100k.zip")
    cache = tmp_path / "cache"

    folder = fetch(server.url, cache, expected_sha256=checksums(source.folder))

    assert folder == cache / "ml-100k"
    assert_loads_as_written(movielens.load(folder), source)
    assert "/ml-100k.zip" in server.requests


def test_fetch_reuses_a_verified_folder_without_network(
    server, source, closed_url, tmp_path
):
    zip_folder(source.folder, server.root / "ml-100k.zip")
    cache = tmp_path / "cache"
    expected = checksums(source.folder)
    first = fetch(server.url, cache, expected_sha256=expected)

    again = fetch(closed_url, cache, expected_sha256=expected)

    assert again == first


def test_fetch_downloads_again_when_a_cached_file_changed(
    server, source, tmp_path
):
    zip_folder(source.folder, server.root / "ml-100k.zip")
    cache = tmp_path / "cache"
    expected = checksums(source.folder)
    folder = fetch(server.url, cache, expected_sha256=expected)
    (folder / "u.data").write_text("1\t1\t1\t1\n")

    folder = fetch(server.url, cache, expected_sha256=expected)

    assert server.requests.count("/ml-100k.zip") == 2
    assert checksums(folder) == expected


def test_fetch_rejects_corrupted_content_and_keeps_nothing(
    server, source, closed_url, tmp_path
):
    expected = checksums(source.folder)
    (source.folder / "u.data").write_text("1\t1\t5\t0\n")  # tampered
    zip_folder(source.folder, server.root / "ml-100k.zip")
    cache = tmp_path / "cache"

    with pytest.raises(movielens.DownloadError, match="u.data has sha256"):
        fetch(server.url, cache, expected_sha256=expected)

    assert list(cache.iterdir()) == []
    # Nothing was kept that a later call could trust.
    with pytest.raises(movielens.DownloadError):
        fetch(closed_url, cache, expected_sha256=expected)


def test_fetch_checks_the_published_ml100k_checksums_by_default(
    server, source, tmp_path
):
    # The small release is not the published one, so the built-in
    # checksums of the real u.data and u.item must reject it.
    zip_folder(source.folder, server.root / "ml-100k.zip")
    cache = tmp_path / "cache"

    with pytest.raises(movielens.DownloadError) as caught:
        fetch(server.url, cache)

    assert movielens.KNOWN_SHA256["ml-100k"]["u.data"] in str(caught.value)
    assert list(cache.iterdir()) == []


def test_fetch_accepts_the_real_ml100k_with_default_checksums(
    server, real_dir, tmp_path
):
    with zipfile.ZipFile(server.root / "ml-100k.zip", "w") as zf:
        for name in ("u.data", "u.item", "u.genre"):
            zf.write(real_dir / name, f"ml-100k/{name}")

    folder = fetch(server.url, tmp_path / "cache")

    assert movielens.load(folder).sha256 == movielens.load(real_dir).sha256


def test_fetch_rejects_bytes_that_are_not_a_zip(server, tmp_path):
    (server.root / "ml-100k.zip").write_bytes(b"PK\x03\x04 truncated")
    cache = tmp_path / "cache"

    with pytest.raises(movielens.DownloadError, match="corrupt"):
        fetch(server.url, cache, expected_sha256={})

    assert list(cache.iterdir()) == []


@pytest.mark.parametrize(
    "member", ["../evil", "ml-100k/../../evil", "/tmp/evil"]
)
def test_fetch_refuses_members_outside_the_folder(
    member, server, source, tmp_path
):
    zip_folder(
        source.folder, server.root / "ml-100k.zip", extra=[(member, b"x")]
    )
    cache = tmp_path / "cache"

    with pytest.raises(movielens.DownloadError, match="refusing to unpack"):
        fetch(server.url, cache, expected_sha256=checksums(source.folder))

    assert list(cache.iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_fetch_reports_an_unreachable_server_in_one_line(closed_url, tmp_path):
    with pytest.raises(movielens.DownloadError) as caught:
        fetch(closed_url, tmp_path / "cache")

    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        f"could not download ml-100k from {closed_url}/ml-100k.zip: "
    )
    assert message.endswith(
        "Point --data-dir or MOVIELENS_DATA_DIR at a local copy of the "
        "ml-100k folder."
    )
    assert isinstance(caught.value.__cause__, Exception)


def test_fetch_reports_a_missing_archive(server, tmp_path):
    with pytest.raises(movielens.DownloadError, match="HTTP 404"):
        fetch(server.url, tmp_path / "cache")


@pytest.fixture
def csv_archive(server, tmp_path) -> tuple[Release, bytes]:
    release = make_release(CSV, tmp_path / "source")
    archive = server.root / "ml-latest-small.zip"
    zip_folder(release.folder, archive)
    return release, archive.read_bytes()


def test_fetch_accepts_an_archive_matching_its_published_md5(
    server, csv_archive, tmp_path
):
    release, archive = csv_archive
    md5 = hashlib.md5(archive).hexdigest()
    (server.root / "ml-latest-small.zip.md5").write_text(
        f"{md5}  ml-latest-small.zip\n"
    )

    folder = fetch(server.url, tmp_path / "cache", release="ml-latest-small")

    assert "/ml-latest-small.zip.md5" in server.requests
    assert_loads_as_written(movielens.load(folder), release)


def test_fetch_rejects_an_archive_not_matching_its_published_md5(
    server, csv_archive, tmp_path
):
    (server.root / "ml-latest-small.zip.md5").write_text("0" * 32 + "\n")
    cache = tmp_path / "cache"

    with pytest.raises(movielens.DownloadError, match="md5"):
        fetch(server.url, cache, release="ml-latest-small")

    assert list(cache.iterdir()) == []


def test_fetch_leaves_a_folder_it_did_not_make_alone(server, source, tmp_path):
    zip_folder(source.folder, server.root / "ml-100k.zip")
    cache = tmp_path / "cache"
    mine = cache / "ml-100k"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")

    with pytest.raises(movielens.DownloadError, match="not unpacked by"):
        fetch(server.url, cache, expected_sha256=checksums(source.folder))

    assert (mine / "notes.txt").read_text() == "mine"


def test_fetch_defaults_to_the_xdg_cache(server, source, tmp_path, monkeypatch):
    zip_folder(source.folder, server.root / "ml-100k.zip")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    folder = movielens.fetch(
        base_url=server.url,
        expected_sha256=checksums(source.folder),
        timeout=5,
    )

    assert folder == tmp_path / "xdg" / "movie-retrieval" / "ml-100k"


@pytest.mark.parametrize("release", ["../ml-100k", "ml 100k", ""])
def test_fetch_rejects_release_names_that_are_not_archive_names(
    release, tmp_path
):
    with pytest.raises(ValueError, match="archive name"):
        movielens.fetch(release, tmp_path)


# ----------------------------------------------------- resolve_data_dir


@pytest.fixture
def no_fetch(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("fetch must not be called")

    monkeypatch.setattr(movielens, "fetch", fail)


def test_resolve_data_dir_prefers_the_flag(monkeypatch, no_fetch):
    monkeypatch.setenv("MOVIELENS_DATA_DIR", "/from/env")

    assert movielens.resolve_data_dir("/from/flag") == Path("/from/flag")


def test_resolve_data_dir_falls_back_to_the_environment(monkeypatch, no_fetch):
    monkeypatch.setenv("MOVIELENS_DATA_DIR", "/from/env")

    assert movielens.resolve_data_dir(None) == Path("/from/env")
    assert movielens.resolve_data_dir("") == Path("/from/env")


@pytest.mark.parametrize("env", [None, ""], ids=["unset", "empty"])
def test_resolve_data_dir_fetches_when_nothing_is_given(env, monkeypatch):
    if env is None:
        monkeypatch.delenv("MOVIELENS_DATA_DIR", raising=False)
    else:
        monkeypatch.setenv("MOVIELENS_DATA_DIR", env)
    calls = []

    def fake_fetch(release, cache_dir):
        calls.append((release, cache_dir))
        return Path("/fetched")

    monkeypatch.setattr(movielens, "fetch", fake_fetch)

    folder = movielens.resolve_data_dir(None, "ml-1m", "/cache")

    assert folder == Path("/fetched")
    assert calls == [("ml-1m", "/cache")]
