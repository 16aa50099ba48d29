"""Loads a published version's index and checks it before it may serve."""

import dataclasses
import logging
from pathlib import Path

from candidate_service.history import HistoryLoadError, UserHistory
from candidate_service.index import CandidateIndex
from model_store import digest, layout

_log = logging.getLogger(__name__)


class VersionRefused(Exception):
    """A published version cannot serve; the message says why."""


@dataclasses.dataclass(frozen=True)
class ServingVersion:
    """An index together with the model version it came from.

    Attributes:
      version: the model version; queries must be embedded by its tower.
      index: the candidate index.
      manifest: the version's manifest as published.
      history: users' rated movies and the popularity ranking.
      titles_by_id: each movie id's title.
    """

    version: int
    index: CandidateIndex
    manifest: dict
    history: UserHistory
    titles_by_id: dict[int, str]

    @property
    def warmup_user_ids(self) -> list[str]:
        return list(self.manifest.get("warmup_user_ids", []))


def _verify_checksums(index_dir: Path, checksums: dict) -> None:
    for name, expected in checksums.items():
        path = index_dir / name
        try:
            actual = digest.file_sha256(path)
        except OSError as e:
            raise VersionRefused(f"cannot read {path}: {e}") from e
        if actual != expected:
            raise VersionRefused(
                f"{path} does not match its checksum in the manifest"
            )


def _covers_every_file(index_dir: Path, checksums: dict) -> bool:
    files = {
        path.relative_to(index_dir).as_posix()
        for path in index_dir.rglob("*")
        if path.is_file() and path != index_dir / layout.MANIFEST
    }
    return files <= checksums.keys()


def load_version(models_dir: Path, version: int) -> ServingVersion:
    """Loads and checks one version's index.

    Raises:
      VersionRefused: the version is incomplete, a file does not match the
        manifest's checksum, or the index disagrees with the manifest.
    """
    paths = layout.VersionPaths(Path(models_dir), version)
    try:
        manifest = layout.read_manifest(models_dir, version)
    except (OSError, ValueError) as e:
        raise VersionRefused(f"bad manifest: {e}") from e
    checksums = manifest.get("checksums", {})
    _verify_checksums(paths.index, checksums)
    try:
        # When the manifest's digests cover every file of the index
        # directory (as the publisher writes them), the index need not hash
        # its files a second time.
        index = CandidateIndex.load(
            paths.index,
            verify_checksums=not _covers_every_file(paths.index, checksums),
        )
        history = UserHistory.load(paths.index)
    except (OSError, ValueError, HistoryLoadError) as e:
        raise VersionRefused(str(e)) from e
    if index.dimension != manifest.get("dimension"):
        raise VersionRefused(
            f"index dimension {index.dimension} differs "
            f"from the manifest's {manifest.get('dimension')}"
        )
    if index.size != manifest.get("num_candidates"):
        raise VersionRefused(
            f"index holds {index.size} candidates, the "
            f"manifest says {manifest.get('num_candidates')}"
        )
    return ServingVersion(
        version=version,
        index=index,
        manifest=manifest,
        history=history,
        titles_by_id=dict(zip(index.movie_ids.tolist(), index.titles)),
    )
