"""Loads query-tower versions from the models directory and keeps the newest.

Mirrors TF Serving's file-system source with a "latest N" version policy: it
loads the newest complete versions, keeps a few so that callers pinned to the
previous one are not cut off mid-swap, and unloads the rest.
"""

import dataclasses
import logging
import threading
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from model_store import contract, layout
from serving_common.errors import NotFound

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoadedVersion:
    """One loaded query-tower version.

    Attributes:
      version: its number.
      path: the SavedModel directory.
      signature_defs: the SavedModel's signatures, as TF Serving reports them.
    """

    version: int
    path: Path
    signature_defs: dict
    _signature: object

    def embed(self, user_ids: list[bytes]) -> np.ndarray:
        """Runs the serving signature.

        Args:
          user_ids: user ids as UTF-8 bytes, `[batch]`.

        Returns:
          float32 `[batch, dim]`.
        """
        outputs = self._signature(
            **{contract.USER_ID_KEY: tf.constant(user_ids, dtype=tf.string)}
        )
        return outputs[contract.EMBEDDING_KEY].numpy()


def _load(path: Path, version: int) -> LoadedVersion:
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((path / "saved_model.pb").read_bytes())
    signature = tf.saved_model.load(str(path)).signatures[
        contract.SERVING_SIGNATURE
    ]
    return LoadedVersion(
        version=version,
        path=path,
        signature_defs=dict(saved.meta_graphs[0].signature_def),
        _signature=signature,
    )


class ModelRegistry:
    """The loaded versions of the query model, safe to use from any thread.

    Args:
      models_dir: the models directory (the model's versions are under
        `<models_dir>/query/`).
      keep_versions: how many of the newest complete versions stay loaded.
    """

    def __init__(self, models_dir: Path, keep_versions: int = 2):
        if keep_versions < 1:
            raise ValueError(
                f"keep_versions must be at least 1, got {keep_versions}"
            )
        self._models_dir = Path(models_dir)
        self._keep = keep_versions
        self._lock = threading.Lock()
        self._loaded: dict[int, LoadedVersion] = {}
        self._failed: set[int] = set()

    def refresh(self) -> None:
        """Loads new complete versions and unloads those past the policy.

        A version that fails to load is logged once and skipped; the versions
        already loaded keep serving.
        """
        wanted = [
            v
            for v in layout.complete_versions(self._models_dir)
            if v not in self._failed
        ][-self._keep :]
        for version in wanted:
            if version in self._loaded:
                continue
            path = layout.VersionPaths(self._models_dir, version).query
            try:
                loaded = _load(path, version)
            except Exception as e:  # noqa: BLE001 - any bad file refuses it
                self._failed.add(version)
                _log.error(
                    "refusing query model version %d from %s: %s",
                    version,
                    path,
                    e,
                )
                continue
            with self._lock:
                self._loaded[version] = loaded
            _log.info("loaded query model version %d from %s", version, path)
        with self._lock:
            # Never unload everything: with no wanted version loaded, the old
            # ones keep serving until a new one loads.
            if any(v in self._loaded for v in wanted):
                for version in sorted(set(self._loaded) - set(wanted)):
                    del self._loaded[version]
                    _log.info("unloaded query model version %d", version)

    def get(self, version: int | None = None) -> LoadedVersion:
        """Returns a loaded version, the newest when `version` is None.

        Raises:
          NotFound: that version is not loaded (TF Serving's wording).
        """
        with self._lock:
            if version is None and self._loaded:
                return self._loaded[max(self._loaded)]
            if version in self._loaded:
                return self._loaded[version]
        spec = "Latest" if version is None else "Specific"
        which = "" if version is None else f", {version}"
        raise NotFound(
            f"Servable not found for request: {spec}"
            f"({contract.QUERY_MODEL_NAME}{which})"
        )

    def versions(self) -> list[int]:
        """The loaded version numbers, oldest first."""
        with self._lock:
            return sorted(self._loaded)
