"""Where a published model version lives on disk, and which ones are complete.

    <models>/query/<version>/      query tower SavedModel (TF Serving's layout)
    <models>/candidate/<version>/  candidate tower SavedModel
    <models>/index/<version>/      search index, candidates and manifest.json

Versions are positive integers because TF Serving only loads numeric version
directories. A version is complete when all three parts exist and its manifest
is in place. The publisher builds a version in a staging folder under
`<models>/.staging/` and renames the parts into place with the query tower
last, so anything that watches `query/` (TF Serving does) never sees a version
whose index is missing.
"""

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

_log = logging.getLogger(__name__)

QUERY = "query"
CANDIDATE = "candidate"
INDEX = "index"
PARTS = (CANDIDATE, INDEX, QUERY)  # rename order: query last
MANIFEST = "manifest.json"
_STAGING = ".staging"
_RETIRED = ".retired"


def default_models_dir() -> str:
    """The models directory every entry point uses unless given one:
    $MODELS_DIR, or build/models (under build/, so `make clean` and
    .gitignore cover it like every other generated file)."""
    return os.environ.get("MODELS_DIR", "build/models")


class PublishError(RuntimeError):
    """A version could not be published; nothing already published changed."""


@dataclasses.dataclass(frozen=True)
class VersionPaths:
    """The three directories of one version under a models directory."""

    models_dir: Path
    version: int

    def part(self, name: str) -> Path:
        return self.models_dir / name / str(self.version)

    @property
    def query(self) -> Path:
        return self.part(QUERY)

    @property
    def candidate(self) -> Path:
        return self.part(CANDIDATE)

    @property
    def index(self) -> Path:
        return self.part(INDEX)

    @property
    def manifest(self) -> Path:
        return self.index / MANIFEST


def _numeric_dirs(parent: Path) -> set[int]:
    if not parent.is_dir():
        return set()
    return {
        int(p.name)
        for p in parent.iterdir()
        if p.is_dir() and p.name.isdigit() and int(p.name) > 0
    }


def complete_versions(models_dir: Path) -> list[int]:
    """Returns the complete versions under `models_dir`, oldest first."""
    models_dir = Path(models_dir)
    versions = _numeric_dirs(models_dir / QUERY)
    versions &= _numeric_dirs(models_dir / CANDIDATE)
    versions &= _numeric_dirs(models_dir / INDEX)
    return sorted(
        v for v in versions if VersionPaths(models_dir, v).manifest.is_file()
    )


def latest_version(models_dir: Path) -> int | None:
    """Returns the newest complete version, or None when there is none."""
    versions = complete_versions(models_dir)
    return versions[-1] if versions else None


def next_version(models_dir: Path) -> int:
    """Returns one more than any version present, complete, partial or
    retired: a number is never reused, so no server mistakes a new model
    for one it has cached."""
    models_dir = Path(models_dir)
    seen = _numeric_dirs(models_dir / _RETIRED)
    for part in PARTS:
        seen |= _numeric_dirs(models_dir / part)
    return max(seen, default=0) + 1


def read_manifest(models_dir: Path, version: int) -> dict:
    """Reads a version's manifest.

    Raises:
      FileNotFoundError: the version has no manifest.
      ValueError: the manifest is not a JSON object.
    """
    path = VersionPaths(Path(models_dir), version).manifest
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: manifest is not a JSON object")
    return manifest


def staging_dir(models_dir: Path) -> Path:
    """Creates an empty folder to build a version in.

    It lives inside `models_dir` so that publishing is a rename on one file
    system, never a copy.
    """
    root = Path(models_dir) / _STAGING
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="build-", dir=root))


def publish(staged: Path, models_dir: Path, version: int) -> VersionPaths:
    """Moves a staged version into place.

    `staged` must hold `query/`, `candidate/` and `index/` (with the
    manifest). Each part is renamed into place, the query tower last; if any
    rename fails, the parts already moved are taken back out, so a failed
    publish leaves the published versions exactly as they were.

    Raises:
      PublishError: a part is missing, or the version already exists.
    """
    staged, models_dir = Path(staged), Path(models_dir)
    target = VersionPaths(models_dir, version)
    missing = [p for p in PARTS if not (staged / p).is_dir()]
    if missing or not (staged / INDEX / MANIFEST).is_file():
        raise PublishError(
            f"staged version {staged} is incomplete: missing "
            f"{', '.join(missing) or INDEX + '/' + MANIFEST}"
        )

    moved: list[Path] = []
    try:
        for part in PARTS:
            dest = target.part(part)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                raise PublishError(
                    f"version {version} already exists at {dest}; versions "
                    "are immutable, publish a new one"
                )
            os.rename(staged / part, dest)
            moved.append(dest)
    except (OSError, PublishError) as e:
        for dest in reversed(moved):
            shutil.rmtree(dest, ignore_errors=True)
        if isinstance(e, PublishError):
            raise
        raise PublishError(f"could not publish version {version}: {e}") from e
    finally:
        shutil.rmtree(staged, ignore_errors=True)

    _log.info("published version %d under %s", version, models_dir)
    return target


def retire(models_dir: Path, version: int) -> Path:
    """Takes a version out of service, keeping its files.

    Its parts move under `<models>/.retired/<version>/`, query tower first
    so TF Serving stops serving it before the rest goes. The services then
    fall back to the newest version left: this is how a rollback is done.

    Returns:
      Where the version's files now are.

    Raises:
      PublishError: the version does not exist.
    """
    models_dir = Path(models_dir)
    source = VersionPaths(models_dir, version)
    if not any(source.part(p).exists() for p in PARTS):
        raise PublishError(f"version {version} does not exist in {models_dir}")
    dest = models_dir / _RETIRED / str(version)
    dest.mkdir(parents=True, exist_ok=True)
    for part in reversed(PARTS):
        if source.part(part).exists():
            os.rename(source.part(part), dest / part)
    _log.info("retired version %d to %s", version, dest)
    return dest


def prune(models_dir: Path, keep: int) -> list[int]:
    """Deletes all but the newest `keep` complete versions, and the retired
    ones.

    Returns:
      The versions deleted.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    models_dir = Path(models_dir)
    doomed = complete_versions(models_dir)[:-keep]
    for version in doomed:
        for part in reversed(PARTS):
            shutil.rmtree(VersionPaths(models_dir, version).part(part))
    retired = sorted(_numeric_dirs(models_dir / _RETIRED))
    for version in retired:
        shutil.rmtree(models_dir / _RETIRED / str(version))
    if doomed or retired:
        _log.info(
            "pruned versions %s and retired versions %s", doomed, retired
        )
    return doomed + retired
