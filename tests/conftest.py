"""Shared fixtures: small MovieLens files, a trained and published version,
and both servers running in process on free ports."""

import os
import socket
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parent.parent
GENRES = ["unknown", "Action", "Comedy", "Drama"]

# Small enough to train in seconds, shaped like MovieLens: Latin-1 titles and
# two movies sharing a title.
SMALL_USERS = 40
SMALL_MOVIES = 60


def shared_ml100k() -> Path | None:
    """The real MovieLens 100K folder, or None when this machine lacks it."""
    candidates = [
        os.environ.get("MOVIELENS_DATA_DIR"),
        str(REPO.parent / "shared" / "data" / "ml-100k"),
    ]
    for c in candidates:
        if c and (Path(c) / "u.data").is_file():
            return Path(c)
    return None


def small_title(movie_id: int) -> str:
    if movie_id == 3:
        return "Café Society (1995)"
    if movie_id in (4, 5):
        return "Twin Title (1998)"
    return f"Movie {movie_id} (19{50 + movie_id % 50})"


def write_small_ml100k(directory: Path, seed: int = 7) -> Path:
    """Writes a tiny MovieLens-100K-format folder (u.data, u.item, u.genre).

    Users have tastes (a preferred third of the catalogue) so the model has
    something to learn.
    """
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with open(directory / "u.genre", "w", encoding="latin-1") as f:
        for i, g in enumerate(GENRES):
            f.write(f"{g}|{i}\n")
    with open(directory / "u.item", "wb") as f:
        for m in range(1, SMALL_MOVIES + 1):
            flags = ["0"] * 19
            flags[m % len(GENRES)] = "1"
            fields = [str(m), small_title(m), "01-Jan-1995", "", "http://x"]
            f.write(("|".join(fields + flags) + "\n").encode("latin-1"))
    lines = []
    for u in range(1, SMALL_USERS + 1):
        taste = u % 3
        liked = [m for m in range(1, SMALL_MOVIES + 1) if m % 3 == taste]
        for m in rng.choice(liked, size=12, replace=False):
            ts = 880000000 + int(rng.integers(0, 10**6))
            lines.append(f"{u}\t{m}\t{int(rng.integers(1, 6))}\t{ts}\n")
    (directory / "u.data").write_text("".join(lines), encoding="latin-1")
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SMALL_CONFIG = dict(
    embedding_dim=8, epochs=5, batch_size=64, learning_rate=0.5, seed=42
)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    return write_small_ml100k(tmp_path_factory.mktemp("ml-small"))


@pytest.fixture(scope="session")
def small_published(small_data, tmp_path_factory):
    """A version trained on the small data and published; shared by tests
    that only read it."""
    from trainer import movielens
    from trainer.config import TrainConfig
    from trainer.train import train_and_publish

    models = tmp_path_factory.mktemp("models")
    result = train_and_publish(
        movielens.load(small_data), models, TrainConfig(**SMALL_CONFIG)
    )
    return models, result


@pytest.fixture(scope="session")
def query_server(small_published):
    from query_service.server import create_server

    models, _ = small_published
    server = create_server("127.0.0.1:0", models, poll_s=0.2)
    yield server
    server.stop(0)


@pytest.fixture(scope="session")
def candidate_server(small_published, query_server):
    import grpc

    from candidate_service.client import wait_until_serving
    from candidate_service.server import Settings, create_server

    models, _ = small_published
    server = create_server(
        Settings(
            address="127.0.0.1:0",
            models_dir=models,
            query_server=f"127.0.0.1:{query_server.port}",
            poll_s=0.2,
        )
    )
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert wait_until_serving(channel, 30), "candidate service not ready"
    yield server
    server.stop(0)


# Figures the lifecycle tests report (requests sent, failed, by status code),
# printed at the end of the run and written to build/test-figures.json so
# runs can be compared.
FIGURES: dict = {}


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    import json

    terminalreporter.section("traffic figures")
    for name, figures in FIGURES.items():
        terminalreporter.write_line(f"{name}: {json.dumps(figures)}")
    out = REPO / "build" / "test-figures.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(FIGURES, indent=2) + "\n")
