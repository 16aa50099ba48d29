"""MovieLens ratings and movies, read into one shape whatever the release.

`load` reads a folder of any published layout: ml-100k (`u.data`, `u.item`),
ml-1m (`ratings.dat`, `movies.dat`) and the CSV releases such as
ml-latest-small, ml-25m and ml-32m (`ratings.csv`, `movies.csv`). `fetch`
downloads and verifies a release from GroupLens; `resolve_data_dir` picks a
folder the way the command-line tools do.
"""

import csv
import dataclasses
import hashlib
import http.client
import io
import logging
import os
import re
import shutil
import stat
import tempfile
import types
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import tqdm

_log = logging.getLogger(__name__)

DATA_DIR_ENV = "MOVIELENS_DATA_DIR"
DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens"

# sha256 of data files inside published archives, by release: for ml-100k,
# u.data and u.item as GroupLens publishes them (the byte-identical copy that
# most public mirrors carry). Releases missing here are checked only by the
# md5 GroupLens publishes next to each zip.
KNOWN_SHA256: Mapping[str, Mapping[str, str]] = types.MappingProxyType(
    {
        "ml-100k": types.MappingProxyType(
            {
                "u.data": "06416e597f82b7342361e41163890c81"
                "036900f418ad91315590814211dca490",
                "u.item": "553841ebc7de3a0fd0d6b62a204ea30c"
                "1e651aacfb2814c7a6584ac52f2c5701",
            }
        ),
    }
)

# The genre columns of u.item, in order, for folders without u.genre.
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)

# Genre labels that mean "no genre": a movie carrying only these gets ().
_NO_GENRE = frozenset({"unknown", "(no genres listed)"})

# Bytes of the ratings file parsed at a time (rounded up to a whole line).
# Large enough that NumPy's parser dominates the cost, small enough that a
# block's temporary copies stay a few tens of megabytes on ml-32m.
_BLOCK_BYTES = 16 << 20

# Same shape for both parsers, so a block parsed either way fills the output
# arrays the same way. Ratings are parsed as float64 and range-checked before
# they are narrowed to float32.
_ROW_DTYPE = np.dtype(
    [
        ("user_id", np.int64),
        ("movie_id", np.int64),
        ("rating", np.float64),
        ("timestamp", np.int64),
    ]
)

# What the per-line parser accepts, kept as close as practical to what
# np.loadtxt accepts, so that a file's acceptance does not depend on which
# parser a block went through: ASCII digits, optional sign, surrounding
# spaces; no "1_000", no "nan", no non-ASCII digits.
_INT_PATTERN = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)
_FLOAT_PATTERN = re.compile(
    r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*", re.ASCII
)
_INT64 = np.iinfo(np.int64)
# Every release rates in stars: whole ones from 1 to 5 (ml-100k, ml-1m) or
# halves from 0.5 (the CSV releases). A value outside that is a corrupt or
# foreign file, even though retrieval only uses that a rating exists.
MIN_RATING, MAX_RATING = 0.5, 5.0

_RELEASE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_MARKER = ".movie-retrieval-verified"
# Far above any release (ml-32m unpacks to about 1 GB) but stops an archive
# whose headers promise an absurd size from filling the disk.
_MAX_UNPACKED_BYTES = 16 << 30


@dataclasses.dataclass(frozen=True)
class Movie:
    """One movie of the catalogue.

    Attributes:
      movie_id: the release's movie id.
      title: the title exactly as published, decoded from Latin-1 (ml-100k,
        ml-1m) or UTF-8 (CSV releases).
      genres: genre names in file order, e.g. ("Animation", "Children's",
        "Comedy"); () when the release lists none or only "unknown".
    """

    movie_id: int
    title: str
    genres: tuple[str, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class Ratings:
    """Parallel arrays, one element per rating, in file order.

    The arrays are converted to the dtypes below without copying when they
    already have them, and exposed read-only.

    Attributes:
      user_id: int64 [n].
      movie_id: int64 [n].
      rating: float32 [n], in the release's stars (1-5, or 0.5-5 in halves).
      timestamp: int64 [n], seconds since the epoch.

    Raises:
      TypeError: a column holds values of the wrong kind (floats as ids).
      ValueError: a column is not 1-D, or the columns differ in length.
    """

    user_id: np.ndarray
    movie_id: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray

    def __post_init__(self):
        for name, kinds, dtype in (
            ("user_id", "iu", np.int64),
            ("movie_id", "iu", np.int64),
            ("rating", "iuf", np.float32),
            ("timestamp", "iu", np.int64),
        ):
            column = _as_column(getattr(self, name), name, kinds, dtype)
            object.__setattr__(self, name, column)

        lengths = {
            name: len(getattr(self, name))
            for name in ("user_id", "movie_id", "rating", "timestamp")
        }
        if len(set(lengths.values())) > 1:
            raise ValueError(f"Ratings columns differ in length: {lengths}")

    def __len__(self) -> int:
        return len(self.user_id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ratings):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, name), getattr(other, name))
            for name in ("user_id", "movie_id", "rating", "timestamp")
        )

    # Arrays are unhashable, and equal Ratings must hash alike.
    __hash__ = None


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A MovieLens release as loaded.

    Attributes:
      name: "ml-100k", "ml-1m", or the folder's name for CSV releases
        ("ml-latest-small", "ml-25m", "ml-32m").
      movies: every movie of the movies file keyed by id, in file order.
        Movies sharing a title stay separate entries.
      ratings: every rating of the ratings file, in file order.
      sha256: hex sha256 over the bytes of the ratings file followed by the
        bytes of the movies file; identifies the data a model was trained on.
    """

    name: str
    movies: dict[int, Movie]
    ratings: Ratings
    sha256: str


class DataFormatError(ValueError):
    """A row of a data file could not be read.

    Attributes:
      path: the file.
      line: 1-based line number of the row.
      row: the raw line, decoded, without its line ending.
      reason: what is wrong with it.
    """

    def __init__(
        self, path: str | os.PathLike, line: int, row: str, reason: str
    ):
        self.path = Path(path)
        self.line = line
        self.row = row
        self.reason = reason
        super().__init__(f"{self.path} line {line}: {reason}: {row!r}")

    def __reduce__(self):
        # The default reduction would call __init__ with the message alone.
        return type(self), (self.path, self.line, self.row, self.reason)


class DownloadError(RuntimeError):
    """A release could not be downloaded or failed verification.

    The message is one line naming the release, the URL, the reason and how
    to use a local copy instead.
    """


class _RowError(Exception):
    """Why one row is malformed; the line loop adds path and line number."""


@dataclasses.dataclass(frozen=True)
class _Layout:
    """The files of one family of releases and how to read them.

    Attributes:
      release: the dataset name, or None to name it after the folder.
      ratings_file: name of the ratings file.
      movies_file: name of the movies file.
      delimiter: field separator of the ratings file.
      encoding: text encoding of both files.
      ratings_header: header row of the ratings file, if it has one.
      read_movies: reads the movies file from (path, bytes, encoding).
    """

    release: str | None
    ratings_file: str
    movies_file: str
    delimiter: str
    encoding: str
    ratings_header: tuple[str, ...] | None
    read_movies: Callable[[Path, bytes, str], dict[int, Movie]]

    def describe(self) -> str:
        return f"{self.ratings_file} + {self.movies_file}"


def load(data_dir: str | os.PathLike) -> Dataset:
    """Loads a MovieLens release from a folder.

    The release is recognised by the files present: u.data and u.item
    (ml-100k), ratings.dat and movies.dat (ml-1m), or ratings.csv and
    movies.csv (CSV releases). Blank lines are skipped.

    Args:
      data_dir: the folder holding the release's files.

    Returns:
      The movies and ratings, with the sha256 identifying them.

    Raises:
      FileNotFoundError: the folder is missing or holds none of the
        recognised file pairs.
      DataFormatError: a row is malformed: wrong field count, an id that is
        not an integer, a rating or timestamp that is not a number, a
        rating outside 0.5 to 5 stars, a duplicate movie id, a rating of a
        movie the movies file lacks, or bytes that are not valid in the
        release's encoding.
    """
    folder = Path(data_dir)
    layout = _detect_layout(folder)
    if layout is None:
        raise FileNotFoundError(_missing_files_message(folder))
    ratings_path = folder / layout.ratings_file
    movies_path = folder / layout.movies_file

    movies_bytes = movies_path.read_bytes()
    movies = layout.read_movies(movies_path, movies_bytes, layout.encoding)

    digest = hashlib.sha256()
    num_lines = _hash_and_count_lines(ratings_path, digest)
    digest.update(movies_bytes)

    ratings = _read_ratings(ratings_path, layout, movies, num_lines)

    name = layout.release or Path(os.path.abspath(folder)).name
    _log.info(
        "loaded MovieLens %s from %s: %d ratings, %d users, %d movies",
        name,
        folder,
        len(ratings),
        _count_distinct(ratings.user_id),
        len(movies),
    )
    return Dataset(name, movies, ratings, digest.hexdigest())


def fetch(
    release: str = "ml-100k",
    cache_dir: str | os.PathLike | None = None,
    *,
    base_url: str = DEFAULT_BASE_URL,
    expected_sha256: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Path:
    """Downloads, verifies and unpacks a release, or reuses an earlier one.

    The archive `<base_url>/<release>.zip` is checked against the md5
    GroupLens publishes beside it (`<release>.zip.md5`) when that file
    exists, and the unpacked data files against `expected_sha256`. Only a
    fully verified folder is ever placed at `<cache_dir>/<release>`; a later
    call returns it without touching the network.

    Args:
      release: archive name, e.g. "ml-100k", "ml-1m", "ml-latest-small".
      cache_dir: where releases are kept. None means
        $XDG_CACHE_HOME/movie-retrieval, or ~/.cache/movie-retrieval.
      base_url: folder URL the archives are fetched from.
      expected_sha256: sha256 by file name of data files in the archive.
        None means the published checksums of the release from
        `KNOWN_SHA256` (none for releases it does not list).
      timeout: seconds to wait on each network operation.

    Returns:
      The folder holding the release's data files, ready for `load`.

    Raises:
      ValueError: `release` is not a plain archive name, or `base_url` is
        not a URL urllib can open.
      DownloadError: the download failed, an archive member would land
        outside the cache, or a checksum did not match (whatever was
        downloaded has then been deleted); or `<cache_dir>/<release>`
        exists but fetch did not make it (it is left alone).
    """
    if not _RELEASE_PATTERN.fullmatch(release):
        raise ValueError(
            f"release {release!r} is not an archive name like 'ml-100k'"
        )
    cache = _default_cache_dir() if cache_dir is None else Path(cache_dir)
    checksums = (
        KNOWN_SHA256.get(release, {})
        if expected_sha256 is None
        else expected_sha256
    )
    url = f"{base_url.rstrip('/')}/{release}.zip"
    target = cache / release

    try:
        if _reuse_verified(target, checksums):
            _log.info("using verified MovieLens %s at %s", release, target)
            return target

        staging = _make_staging_dir(cache, release)
        try:
            _download_verified(url, staging, target, checksums, timeout)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except _FetchFailure as e:
        reason = " ".join(str(e).split())  # One line, whatever the cause.
        raise DownloadError(
            f"could not download {release} from {url}: {reason}. Point "
            f"--data-dir or {DATA_DIR_ENV} at a local copy of the "
            f"{release} folder."
        ) from e

    _log.info("downloaded and verified MovieLens %s into %s", release, target)
    return target


def resolve_data_dir(
    data_dir: str | os.PathLike | None,
    release: str = "ml-100k",
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Chooses the MovieLens folder: the flag, then the environment, then
    a download.

    Args:
      data_dir: folder given on the command line; None or "" when unset.
      release: release to fetch when neither the flag nor MOVIELENS_DATA_DIR
        names a folder.
      cache_dir: passed to `fetch`.

    Returns:
      The folder to `load`. A given folder is returned as is, unchecked.

    Raises:
      DownloadError: from `fetch`, when it is reached and fails.
    """
    if data_dir:
        _log.info("using MovieLens data from %s (given)", data_dir)
        return Path(data_dir)
    from_env = os.environ.get(DATA_DIR_ENV)
    if from_env:
        _log.info("using MovieLens data from %s (%s)", from_env, DATA_DIR_ENV)
        return Path(from_env)
    return fetch(release, cache_dir)


# ---------------------------------------------------------------- movies


def _read_100k_movies(path: Path, data: bytes, encoding: str):
    """Reads u.item: id|title|release date|video date|url|19 genre flags.

    Genre names come from u.genre beside it, when there is one.
    """
    names = _read_100k_genres(path.parent / "u.genre", encoding)
    movies: dict[int, Movie] = {}

    def parse(text: str) -> None:
        fields = _expect_fields(text.split("|"), 5 + len(ML100K_GENRES), "|")
        movie_id = _parse_int(fields[0], "movie id")
        genres = []
        for index, flag in enumerate(fields[5:]):
            if flag not in ("0", "1"):
                raise _RowError(f"genre flag {index} is {flag!r}, not 0 or 1")
            if flag == "0":
                continue
            if index not in names:
                raise _RowError(
                    f"genre flag {index} is set but u.genre does not name "
                    f"genre {index}"
                )
            genres.append(names[index])
        _add_movie(movies, movie_id, fields[1], genres)

    _parse_lines(path, io.BytesIO(data), 1, encoding, parse)
    return movies


def _read_100k_genres(path: Path, encoding: str) -> dict[int, str]:
    """Reads u.genre ("name|index" rows) into names by column index.

    Without the file, the published column order applies.
    """
    if not path.is_file():
        return dict(enumerate(ML100K_GENRES))
    names: dict[int, str] = {}

    def parse(text: str) -> None:
        name, index_text = _expect_fields(text.split("|"), 2, "|")
        index = _parse_int(index_text, "genre index")
        if not 0 <= index < len(ML100K_GENRES):
            raise _RowError(
                f"genre index {index} is outside 0-{len(ML100K_GENRES) - 1}"
            )
        if index in names:
            raise _RowError(f"duplicate genre index {index}")
        names[index] = name

    with path.open("rb") as lines:
        _parse_lines(path, lines, 1, encoding, parse)
    return names


def _read_1m_movies(path: Path, data: bytes, encoding: str):
    """Reads movies.dat: id::title::genre|genre|..."""
    return _read_movie_rows(path, io.BytesIO(data), 1, encoding, "::")


def _read_csv_movies(path: Path, data: bytes, encoding: str):
    """Reads movies.csv: a header, then id,title,genre|genre|..."""
    lines = io.BytesIO(data)
    _check_header(path, lines, ("movieId", "title", "genres"))
    return _read_movie_rows(path, lines, 2, encoding, ",")


def _read_movie_rows(
    path: Path,
    lines: Iterable[bytes],
    first_line: int,
    encoding: str,
    delimiter: str,
) -> dict[int, Movie]:
    """Reads rows of movie id, title, and genre names joined by "|"."""
    movies: dict[int, Movie] = {}

    def parse(text: str) -> None:
        fields = _split(text, delimiter)
        movie_id, title, genres = _expect_fields(fields, 3, delimiter)
        _add_movie(
            movies,
            _parse_int(movie_id, "movie id"),
            title,
            genres.split("|"),
        )

    _parse_lines(path, lines, first_line, encoding, parse)
    return movies


def _add_movie(
    movies: dict[int, Movie],
    movie_id: int,
    title: str,
    genres: Iterable[str],
) -> None:
    """Adds a movie, dropping empty and "no genre" labels.

    Raises:
      _RowError: the id is already taken.
    """
    if movie_id in movies:
        raise _RowError(f"duplicate movie id {movie_id}")
    kept = tuple(g for g in genres if g and g not in _NO_GENRE)
    movies[movie_id] = Movie(movie_id, title, kept)


_LAYOUTS = (
    _Layout(
        release="ml-100k",
        ratings_file="u.data",
        movies_file="u.item",
        delimiter="\t",
        encoding="latin-1",
        ratings_header=None,
        read_movies=_read_100k_movies,
    ),
    _Layout(
        release="ml-1m",
        ratings_file="ratings.dat",
        movies_file="movies.dat",
        delimiter="::",
        encoding="latin-1",
        ratings_header=None,
        read_movies=_read_1m_movies,
    ),
    _Layout(
        release=None,
        ratings_file="ratings.csv",
        movies_file="movies.csv",
        delimiter=",",
        # utf-8-sig: a byte-order mark, if an editor added one, is not part
        # of the header's first column name.
        encoding="utf-8-sig",
        ratings_header=("userId", "movieId", "rating", "timestamp"),
        read_movies=_read_csv_movies,
    ),
)


def _detect_layout(folder: Path) -> _Layout | None:
    """The layout whose two files are both in the folder, if any."""
    for layout in _LAYOUTS:
        if (folder / layout.ratings_file).is_file() and (
            folder / layout.movies_file
        ).is_file():
            return layout
    return None


def _missing_files_message(folder: Path) -> str:
    if not folder.exists():
        return f"MovieLens folder {folder} does not exist"
    if not folder.is_dir():
        return f"MovieLens folder {folder} is not a folder"
    looked_for = "; ".join(
        f"{layout.describe()} ({layout.release or 'CSV releases'})"
        for layout in _LAYOUTS
    )
    return f"no MovieLens files in {folder}: looked for {looked_for}"


# --------------------------------------------------------------- ratings


def _hash_and_count_lines(path: Path, digest) -> int:
    """Feeds the file to `digest` (a hashlib object) and returns how many
    lines it has."""
    count = 0
    last = b"\n"
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
            count += block.count(b"\n")
            last = block[-1:]
    # A last line without a newline still counts.
    return count + (last != b"\n")


def _read_ratings(
    path: Path,
    layout: _Layout,
    movies: Mapping[int, Movie],
    num_lines: int,
) -> Ratings:
    """Streams the ratings file into preallocated arrays, block by block.

    Each block goes through np.loadtxt; a block it rejects, or whose values
    fail a check, is parsed again line by line, which either finds the bad
    line and raises or accepts what loadtxt was stricter about.

    Args:
      path: the ratings file.
      layout: its release layout.
      movies: the movies file's movies, which every rating must refer to.
      num_lines: lines in the file, an upper bound on the ratings.

    Raises:
      DataFormatError: a row is malformed.
      RuntimeError: the file grew after its lines were counted.
    """
    columns = {
        name: np.empty(num_lines, dtype)
        for name, dtype in (
            ("user_id", np.int64),
            ("movie_id", np.int64),
            ("rating", np.float32),
            ("timestamp", np.int64),
        )
    }
    known = np.fromiter(movies, np.int64, len(movies))
    filled = 0

    with path.open("rb") as f:
        first_line = 1
        if layout.ratings_header is not None:
            _check_header(path, f, layout.ratings_header)
            first_line = 2
        for block in _blocks(f, _BLOCK_BYTES):
            num_block_lines = block.count(b"\n") + (not block.endswith(b"\n"))
            rows = _parse_block_fast(block, num_block_lines, layout, known)
            if rows is None:
                rows = _parse_block_slowly(
                    path, block, first_line, layout, movies
                )
            end = filled + len(rows)
            if end > num_lines:
                raise RuntimeError(f"{path} grew while it was being read")
            for name, column in columns.items():
                column[filled:end] = rows[name]
            filled = end
            first_line += num_block_lines

    return Ratings(**{name: c[:filled] for name, c in columns.items()})


def _blocks(f, size: int) -> Iterator[bytes]:
    """Reads a binary file in blocks of about `size` bytes that end at a
    line end (or at the end of the file)."""
    while block := f.read(size):
        if not block.endswith(b"\n"):
            block += f.readline()
        yield block


def _parse_block_fast(
    block: bytes,
    num_lines: int,
    layout: _Layout,
    known_movies: np.ndarray,
) -> np.ndarray | None:
    """Parses a block with NumPy, or returns None if anything is off.

    Args:
      block: whole lines of the ratings file.
      num_lines: how many lines `block` holds.
      layout: the release layout.
      known_movies: int64 [m], ids of the movies file.

    Returns:
      `_ROW_DTYPE` [num_lines], or None when a line would not parse or
      decode, a value fails a check, or there are blank lines (whose
      skipping is left to the line parser, which counts lines exactly).
    """
    if block.isspace():
        return None
    delimiter = layout.delimiter
    if len(delimiter) > 1:
        # loadtxt splits on one character only. A tab inside a "::" row
        # then makes a wrong field count, which the line parser reports.
        block = block.replace(delimiter.encode("ascii"), b"\t")
        delimiter = "\t"

    try:
        rows = np.loadtxt(
            io.TextIOWrapper(io.BytesIO(block), encoding=layout.encoding),
            dtype=_ROW_DTYPE,
            delimiter=delimiter,
            comments=None,
            quotechar=None,
            ndmin=1,
        )
    except (ValueError, OverflowError):  # UnicodeDecodeError included.
        return None

    if len(rows) != num_lines:
        return None
    ratings = rows["rating"]
    if not np.all((ratings >= MIN_RATING) & (ratings <= MAX_RATING)):
        return None  # NaN fails this too.
    if not np.all(np.isin(rows["movie_id"], known_movies)):
        return None
    return rows


def _parse_block_slowly(
    path: Path,
    block: bytes,
    first_line: int,
    layout: _Layout,
    movies: Mapping[int, Movie],
) -> np.ndarray:
    """Parses a block line by line, raising on the first bad line.

    Returns:
      `_ROW_DTYPE` [rows], blank lines left out.

    Raises:
      DataFormatError: a row is malformed.
    """

    def parse(text: str) -> tuple[int, int, float, int]:
        user_id, movie_id, rating, timestamp = _expect_fields(
            _split(text, layout.delimiter), 4, layout.delimiter
        )
        parsed = (
            _parse_int(user_id, "user id"),
            _parse_int(movie_id, "movie id"),
            _parse_rating(rating),
            _parse_int(timestamp, "timestamp"),
        )
        if parsed[1] not in movies:
            raise _RowError(
                f"movie id {parsed[1]} is not in {layout.movies_file}"
            )
        return parsed

    lines = block.split(b"\n")
    if block.endswith(b"\n"):
        lines.pop()  # The empty piece after the last line end.
    rows = _parse_lines(path, lines, first_line, layout.encoding, parse)
    return np.array(rows, dtype=_ROW_DTYPE)


def _count_distinct(ids: np.ndarray) -> int:
    """Number of distinct values of an int64 array."""
    if len(ids) and ids.min() >= 0 and ids.max() < 4 * len(ids) + 1024:
        # Ids are small and dense in every release: a presence table is
        # several times faster than np.unique's sort on 25M ratings.
        seen = np.zeros(int(ids.max()) + 1, dtype=bool)
        seen[ids] = True
        return int(np.count_nonzero(seen))
    return len(np.unique(ids))


# ----------------------------------------------------------------- lines


def _parse_lines(
    path: Path,
    lines: Iterable[bytes],
    first_line: int,
    encoding: str,
    parse: Callable[[str], object],
) -> list:
    """Decodes and parses lines, skipping blank ones.

    Args:
      path: the file, for error messages.
      lines: raw lines, line endings included or not.
      first_line: 1-based number of the first of `lines` in the file.
      encoding: text encoding of the file.
      parse: turns one line's text into a value; raises `_RowError`.

    Returns:
      The values `parse` returned, in line order.

    Raises:
      DataFormatError: a line is not valid in `encoding`, or `parse`
        rejected it.
    """
    values = []
    for line_number, raw in enumerate(lines, start=first_line):
        raw = raw.rstrip(b"\r\n")
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as e:
            raise DataFormatError(
                path,
                line_number,
                raw.decode(encoding, errors="backslashreplace"),
                f"byte {raw[e.start]:#04x} at column {e.start + 1} is not "
                f"valid {encoding.removesuffix('-sig').upper()}",
            ) from None
        if not text or text.isspace():
            continue
        try:
            values.append(parse(text))
        except _RowError as e:
            raise DataFormatError(path, line_number, text, str(e)) from None
    return values


def _check_header(
    path: Path, lines: Iterator[bytes], expected: tuple[str, ...]
) -> None:
    """Consumes the first line of `lines` and checks it is `expected`.

    Raises:
      DataFormatError: the header differs (reported as line 1).
    """

    def parse(text: str) -> None:
        if tuple(_split_csv(text)) != expected:
            raise _RowError(f"expected the header {','.join(expected)}")

    header = next(lines, b"")
    if not header.strip():
        raise DataFormatError(
            path, 1, "", f"expected the header {','.join(expected)}"
        )
    _parse_lines(path, [header], 1, "utf-8-sig", parse)


def _split(text: str, delimiter: str) -> list[str]:
    """Splits one line into fields; "," means CSV with quoting."""
    if delimiter == ",":
        return _split_csv(text)
    return text.split(delimiter)


def _split_csv(text: str) -> list[str]:
    """Splits one CSV line, honouring quotes and doubled quotes.

    Records spanning lines are not supported: no MovieLens release has
    them, and line-at-a-time parsing keeps line numbers exact.
    """
    try:
        return next(csv.reader([text], strict=True))
    except csv.Error as e:
        raise _RowError(f"malformed CSV ({e})") from None


def _expect_fields(
    fields: Sequence[str], count: int, delimiter: str
) -> Sequence[str]:
    """Returns `fields`, or raises `_RowError` unless there are `count`."""
    if len(fields) != count:
        kind = {"\t": "tab", ",": "comma"}.get(delimiter, repr(delimiter))
        raise _RowError(
            f"expected {count} {kind}-separated fields, got {len(fields)}"
        )
    return fields


def _parse_int(text: str, what: str) -> int:
    """Parses a decimal int64 field named `what`; raises `_RowError`."""
    if not _INT_PATTERN.fullmatch(text):
        raise _RowError(f"{what} {text!r} is not an integer")
    value = int(text)
    if not _INT64.min <= value <= _INT64.max:
        raise _RowError(f"{what} {text!r} does not fit in 64 bits")
    return value


def _parse_rating(text: str) -> float:
    """Parses a rating of MIN_RATING to MAX_RATING stars; raises
    `_RowError`."""
    if not _FLOAT_PATTERN.fullmatch(text):
        raise _RowError(f"rating {text!r} is not a number")
    value = float(text)
    if not MIN_RATING <= value <= MAX_RATING:
        raise _RowError(
            f"rating {text!r} is outside {MIN_RATING:g} to {MAX_RATING:g} stars"
        )
    return value


def _as_column(
    values, name: str, kinds: str, dtype: type[np.generic]
) -> np.ndarray:
    """A read-only 1-D view of `values` as `dtype`, copied only to convert.

    Raises:
      TypeError: the values' dtype kind is not one of `kinds`.
      ValueError: the values are not 1-D.
    """
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size and array.dtype.kind not in kinds:
        raise TypeError(
            f"{name} has dtype {array.dtype}; expected "
            f"{np.dtype(dtype).name} values"
        )
    # A view, so that marking it read-only leaves the caller's array alone.
    column = array.astype(dtype, copy=False).view()
    column.flags.writeable = False
    return column


# -------------------------------------------------------------- download


class _FetchFailure(Exception):
    """Why a fetch failed; `fetch` turns it into a one-line DownloadError."""


def _default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/movie-retrieval, or ~/.cache/movie-retrieval."""
    base = os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base else Path.home() / ".cache"
    return root / "movie-retrieval"


def _make_staging_dir(cache: Path, release: str) -> Path:
    """A fresh folder inside the cache, so the final rename stays on one
    file system.

    Shortcoming: a process killed mid-download leaves its `.<release>-*`
    folder behind. Nothing ever trusts it, but nothing removes it either,
    since a live fetch in another process may own a folder of that name.

    Raises:
      _FetchFailure: the cache is not writable.
    """
    try:
        cache.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{release}-", dir=cache))
    except OSError as e:
        raise _FetchFailure(f"cannot write to {cache} ({e})") from e


def _reuse_verified(target: Path, checksums: Mapping[str, str]) -> bool:
    """Whether `target` is a folder an earlier fetch verified and that
    still matches `checksums`; a stale one is deleted.

    Raises:
      _FetchFailure: `target` exists but fetch did not make it, so it is
        neither trusted nor deleted.
    """
    if not target.exists():
        return False
    if not (target / _MARKER).is_file():
        raise _FetchFailure(
            f"{target} exists but was not unpacked by fetch; move it away or "
            "choose another cache directory"
        )
    try:
        _verify_files(target, checksums)
    except _FetchFailure as e:
        _log.warning("discarding cached %s (%s); downloading again", target, e)
        shutil.rmtree(target)
        return False
    return True


def _download_verified(
    url: str,
    staging: Path,
    target: Path,
    checksums: Mapping[str, str],
    timeout: float,
) -> None:
    """Downloads and checks the archive in `staging`, then moves the data
    folder to `target` in one rename.

    Raises:
      _FetchFailure: any step failed; `target` is left untouched.
    """
    archive = staging / "archive.zip"
    md5 = _download(url, archive, timeout)

    published = _published_md5(f"{url}.md5", timeout)
    if published is not None and md5 != published:
        raise _FetchFailure(
            f"the archive's md5 is {md5}, but {url}.md5 says {published}"
        )
    if published is None and not checksums:
        _log.warning("%s has no published checksum; it is unverified", url)

    unpacked = staging / "unpacked"
    _unpack(archive, unpacked)
    data_dir = _find_data_dir(unpacked)
    _verify_files(data_dir, checksums)

    # The marker goes in before the rename, so the folder appears at
    # `target` complete and already marked as verified.
    (data_dir / _MARKER).write_text(f"verified download of {url}\n")
    try:
        data_dir.rename(target)
    except OSError as e:
        # Another fetch of the same release may have finished first.
        if not (target / _MARKER).is_file():
            raise _FetchFailure(f"could not move it to {target} ({e})") from e


def _download(url: str, destination: Path, timeout: float) -> str:
    """Downloads `url` to a temporary file renamed to `destination`.

    Returns:
      The hex md5 of the bytes received.

    Raises:
      _FetchFailure: the request failed or the body was cut short.
    """
    partial = destination.with_name(destination.name + ".part")
    md5 = hashlib.md5(usedforsecurity=False)
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            expected = int(response.headers.get("Content-Length") or 0)
            with (
                partial.open("wb") as out,
                tqdm.tqdm(
                    total=expected or None,
                    unit="B",
                    unit_scale=True,
                    desc=url.rsplit("/", 1)[-1],
                    disable=None,  # Shown on terminals only.
                    leave=False,
                ) as progress,
            ):
                while block := response.read(1 << 20):
                    out.write(block)
                    md5.update(block)
                    received += len(block)
                    progress.update(len(block))
    except (OSError, http.client.HTTPException) as e:
        raise _FetchFailure(_describe_network_error(e)) from e
    if expected and received != expected:
        raise _FetchFailure(f"received {received} of {expected} bytes")
    partial.rename(destination)
    return md5.hexdigest()


def _published_md5(url: str, timeout: float) -> str | None:
    """The md5 in a GroupLens `.md5` file, or None if there is none.

    Raises:
      _FetchFailure: the file exists but could not be read or holds no md5.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read(4096).decode("ascii", errors="replace")
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise _FetchFailure(_describe_network_error(e)) from e
    except urllib.error.URLError as e:
        # file:// base URLs report a missing file this way.
        if isinstance(e.reason, FileNotFoundError):
            return None
        raise _FetchFailure(_describe_network_error(e)) from e
    except (OSError, http.client.HTTPException) as e:
        raise _FetchFailure(_describe_network_error(e)) from e

    # Either "<md5>" or md5sum's "<md5>  <file>", or "MD5 (<file>) = <md5>".
    match = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    if match is None:
        raise _FetchFailure(f"{url} holds no md5 checksum")
    return match.group(0).lower()


def _describe_network_error(error: BaseException) -> str:
    """One line saying why a request failed."""
    if isinstance(error, urllib.error.HTTPError):
        reason = f"HTTP {error.code} {error.reason}"
    elif isinstance(error, urllib.error.URLError):
        reason = str(error.reason)
    else:
        reason = str(error) or type(error).__name__
    return " ".join(reason.split())


def _unpack(archive: Path, destination: Path) -> None:
    """Unpacks a zip after checking every member stays inside `destination`.

    Raises:
      _FetchFailure: the archive is corrupt, too large, or has a member
        that is absolute, climbs out with "..", or is a symbolic link.
    """
    destination.mkdir()
    root = destination.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for member in members:
                _check_member(member, root)
            total = sum(member.file_size for member in members)
            if total > _MAX_UNPACKED_BYTES:
                raise _FetchFailure(
                    f"the archive would unpack to {total} bytes"
                )
            zf.extractall(destination)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise _FetchFailure(f"the archive is corrupt ({e})") from e
    except OSError as e:
        raise _FetchFailure(f"could not unpack the archive ({e})") from e


def _check_member(member: zipfile.ZipInfo, root: Path) -> None:
    """Raises `_FetchFailure` unless `member` unpacks to a plain file or
    folder inside `root`."""
    name = member.filename
    parts = PurePosixPath(name.replace("\\", "/"))
    if (
        parts.is_absolute()
        or ".." in parts.parts
        or re.match(r"[A-Za-z]:", name)
        or not (root / parts).resolve().is_relative_to(root)
    ):
        raise _FetchFailure(
            f"refusing to unpack member {name!r}: it would land outside "
            "the release folder"
        )
    if stat.S_ISLNK(member.external_attr >> 16):
        raise _FetchFailure(
            f"refusing to unpack member {name!r}: it is a symbolic link"
        )


def _find_data_dir(unpacked: Path) -> Path:
    """The unpacked folder holding a release's files: the archive root or
    one of its top-level folders (archives usually wrap everything in one).

    Raises:
      _FetchFailure: no such folder.
    """
    candidates = [unpacked] + sorted(
        p for p in unpacked.iterdir() if p.is_dir()
    )
    for candidate in candidates:
        if _detect_layout(candidate) is not None:
            return candidate
    raise _FetchFailure(
        "the archive holds none of "
        + ", ".join(layout.describe() for layout in _LAYOUTS)
    )


def _verify_files(folder: Path, checksums: Mapping[str, str]) -> None:
    """Checks files of `folder` against sha256 checksums by file name.

    Raises:
      _FetchFailure: a file is missing or its sha256 differs.
    """
    for name, expected in checksums.items():
        path = folder / name
        if not path.is_file():
            raise _FetchFailure(f"{name} is missing from the archive")
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
        if digest.hexdigest() != expected.lower():
            raise _FetchFailure(
                f"{name} has sha256 {digest.hexdigest()}, expected {expected}"
            )
