"""Retrieval itself: one model version end to end, no gRPC types."""

import dataclasses
import logging
import threading

import numpy as np

from candidate_service.query_client import QueryClient
from candidate_service.versions import ServingVersion
from serving_common.errors import InvalidArgument, Unavailable

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Retrieval:
    """Ranked movies for one user, best first.

    Attributes:
      version: the model version that produced them.
      movie_ids: int64 `[k]`.
      titles: `[k]` titles.
      scores: float32 `[k]` dot products.
    """

    version: int
    movie_ids: np.ndarray
    titles: list[str]
    scores: np.ndarray


class Retriever:
    """Embeds a user with the query server and searches the index of the
    same version.

    The serving version is swapped as a whole; a request reads it once, so
    it never mixes one version's embedding with another's index.
    """

    def __init__(self, query_client: QueryClient):
        self._query = query_client
        self._serving: ServingVersion | None = None
        self._lock = threading.Lock()

    @property
    def serving(self) -> ServingVersion | None:
        return self._serving

    def swap(self, version: ServingVersion) -> None:
        """Makes `version` the one new requests use."""
        with self._lock:
            self._serving = version

    def retrieve(self, user_id: str, k: int, timeout_s: float) -> Retrieval:
        """Top k movies for a user.

        Args:
          user_id: a non-empty user id.
          k: how many, from 1 to the catalogue size (checked by the caller).
          timeout_s: the deadline of the call to the query server.

        Raises:
          Unavailable: no version is loaded yet, or the query server cannot
            be reached.
          DeadlineExceeded: the query server did not answer in time.
          InvalidArgument: k exceeds the catalogue.
        """
        serving = self._serving
        if serving is None:
            raise Unavailable("no model version is loaded yet; retry shortly")
        if k > serving.index.size:
            raise InvalidArgument(
                f"k must be between 1 and {serving.index.size} (the "
                f"catalogue size of model version {serving.version}), got {k}"
            )

        query = self._query.embed([user_id], serving.version, timeout_s)
        movie_ids, scores = serving.index.search(query, k)

        titles = [serving.titles_by_id[m] for m in movie_ids[0].tolist()]
        return Retrieval(
            version=serving.version,
            movie_ids=movie_ids[0],
            titles=titles,
            scores=scores[0],
        )
