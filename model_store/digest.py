"""sha256 digests of published files, shared by the publisher and the
services that check what they load against them."""

import hashlib
import os
from pathlib import Path


def file_sha256(path: os.PathLike | str) -> str:
    """Hex sha256 of a file's bytes, read in chunks: index files of the
    largest releases run to hundreds of megabytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(directory: os.PathLike | str) -> dict[str, str]:
    """Hex sha256 of every file under `directory`, keyed by its path
    relative to it (with "/" separators)."""
    directory = Path(directory)
    return {
        path.relative_to(directory).as_posix(): file_sha256(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }
