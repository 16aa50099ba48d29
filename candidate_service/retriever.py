"""Retrieval itself: one model version end to end, no gRPC types."""

import dataclasses
import logging

import numpy as np

from candidate_service.query_client import QueryClient
from candidate_service.versions import ServingVersion
from serving_common.errors import NotFound, Unavailable

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Query:
    """One user's request, already validated.

    Attributes:
      user_id: a non-empty user id.
      k: how many movies, from 1 to the catalogue size.
      exclude_seen: leave out the movies the user has rated.
      strict: an unknown user is an error rather than a cold start.
    """

    user_id: str
    k: int
    exclude_seen: bool = False
    strict: bool = False


@dataclasses.dataclass(frozen=True)
class Retrieval:
    """Ranked movies for one user, best first.

    Attributes:
      version: the model version that produced them.
      movie_ids: int64 `[n]`, n <= k.
      titles: `[n]` titles.
      scores: float32 `[n]` dot products, or popularity for a cold start.
      cold_start: the user is unknown to the version; these are the most
        popular movies.
    """

    version: int
    movie_ids: np.ndarray
    titles: list[str]
    scores: np.ndarray
    cold_start: bool = False


def _result(serving, movie_ids, scores, cold_start=False) -> Retrieval:
    return Retrieval(
        version=serving.version,
        movie_ids=movie_ids,
        titles=[serving.titles_by_id[m] for m in movie_ids.tolist()],
        scores=scores,
        cold_start=cold_start,
    )


class Retriever:
    """Embeds users with the query server and searches the index of the
    same version.

    The serving version is swapped as a whole; a request reads it once (see
    `current`) and uses that one object to the end, so it never mixes one
    version's embedding with another's index.
    """

    def __init__(self, query_client: QueryClient):
        self._query = query_client
        self._serving: ServingVersion | None = None
        # Why nothing serves yet, for the caller; set by the server while
        # it brings a version up.
        self.not_ready_reason = "no model version is published yet"

    @property
    def serving(self) -> ServingVersion | None:
        return self._serving

    def swap(self, version: ServingVersion) -> None:
        """Makes `version` the one new requests use. Requests already
        running finish with the version they started with."""
        # A single reference assignment: atomic under the GIL.
        self._serving = version

    def current(self) -> ServingVersion:
        """The version a new request should use.

        Raises:
          Unavailable: none is loaded yet.
        """
        serving = self._serving
        if serving is None:
            raise Unavailable(
                f"not serving yet: {self.not_ready_reason}; retry shortly"
            )
        return serving

    def retrieve(
        self, serving: ServingVersion, queries: list[Query], timeout_s: float
    ) -> list[Retrieval]:
        """Top movies for each query, with one query-server call for all.

        Args:
          serving: the version to use, from `current()`.
          queries: validated queries; each k at most the catalogue size.
          timeout_s: deadline of the call to the query server, in seconds.

        Returns:
          One `Retrieval` per query, in order.

        Raises:
          NotFound: a strict query names a user the version does not know.
          Unavailable: the query server cannot be reached.
          DeadlineExceeded: the query server did not answer in time.
        """
        history = serving.history
        seen = [history.seen(q.user_id) for q in queries]
        for q, s in zip(queries, seen):
            if s is None and q.strict:
                raise NotFound(
                    f"user_id {q.user_id!r} is unknown to model version "
                    f"{serving.version}"
                )
        known = [i for i, s in enumerate(seen) if s is not None]

        results: list[Retrieval | None] = [None] * len(queries)
        if known:
            embeddings = self._query.embed(
                [queries[i].user_id for i in known], serving.version, timeout_s
            )
            # Search deep enough that k remain after dropping seen movies.
            depth = min(
                serving.index.size,
                max(
                    queries[i].k
                    + (len(seen[i]) if queries[i].exclude_seen else 0)
                    for i in known
                ),
            )
            movie_ids, scores = serving.index.search(embeddings, depth)

            for row, i in enumerate(known):
                keep = np.ones(depth, dtype=bool)
                if queries[i].exclude_seen:
                    keep = ~np.isin(movie_ids[row], seen[i])
                chosen = np.flatnonzero(keep)[: queries[i].k]
                results[i] = _result(
                    serving, movie_ids[row][chosen], scores[row][chosen]
                )

        for i, result in enumerate(results):
            if result is None:
                k = queries[i].k
                results[i] = _result(
                    serving,
                    history.popular_movie_ids[:k],
                    history.popular_share[:k],
                    cold_start=True,
                )
        return results
