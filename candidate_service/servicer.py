"""RetrievalService: validates requests and turns retrievals into protos.

The limits here are the ones documented in the .proto.
"""

import logging

import grpc

from candidate_service.batching import Coalescer
from candidate_service.retriever import Query, Retrieval, Retriever
from movie_retrieval.v1 import retrieval_service_pb2 as pb
from movie_retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc
from serving_common.errors import DeadlineExceeded, InvalidArgument

_log = logging.getLogger(__name__)

MAX_USER_ID_BYTES = 128
MAX_K = 1000
MAX_BATCH = 256


def _query(request: pb.RetrieveRequest, catalogue: int, field: str) -> Query:
    """Checks one request against the documented limits.

    Args:
      request: the request.
      catalogue: how many movies the serving version has.
      field: how the request is named in errors ("" or "requests[3].").
    """
    if not request.user_id:
        raise InvalidArgument(f"{field}user_id is required")
    if len(request.user_id.encode("utf-8")) > MAX_USER_ID_BYTES:
        raise InvalidArgument(
            f"{field}user_id must be at most {MAX_USER_ID_BYTES} bytes"
        )
    limit = min(MAX_K, catalogue)
    if not 1 <= request.k <= limit:
        raise InvalidArgument(
            f"{field}k must be between 1 and {limit} (at most {MAX_K}, and "
            f"at most the catalogue's {catalogue} movies), got {request.k}"
        )
    return Query(
        user_id=request.user_id,
        k=request.k,
        exclude_seen=request.exclude_seen,
        strict=request.strict,
    )


def _response(result: Retrieval) -> pb.RetrieveResponse:
    return pb.RetrieveResponse(
        movies=[
            pb.ScoredMovie(movie_id=m, title=t, score=s)
            for m, t, s in zip(
                result.movie_ids.tolist(),
                result.titles,
                result.scores.tolist(),
            )
        ],
        model_version=result.version,
        cold_start=result.cold_start,
    )


class RetrievalServiceServicer(pb_grpc.RetrievalServiceServicer):
    """Serves Retrieve and BatchRetrieve from a `Retriever`.

    Single Retrieve calls that arrive together are coalesced into one
    query-server call (see `batching`).

    Args:
      retriever: does the work.
      query_timeout_s: the deadline of the call to the query server when
        the caller's own deadline is later or unset.
      max_batch: most Retrieve calls coalesced into one batch.
    """

    def __init__(
        self, retriever: Retriever, query_timeout_s: float, max_batch: int
    ):
        self._retriever = retriever
        self._coalescer = Coalescer(retriever, max_batch)
        self._query_timeout_s = query_timeout_s

    def _outbound_timeout(self, context: grpc.ServicerContext) -> float:
        # The caller's remaining budget bounds the outbound call, so the
        # answer (or the error) arrives before the caller gives up.
        remaining = context.time_remaining()
        if remaining is None:
            return self._query_timeout_s
        if remaining <= 0:
            raise DeadlineExceeded("the request's deadline has passed")
        return min(self._query_timeout_s, remaining)

    def Retrieve(self, request, context):
        serving = self._retriever.current()
        query = _query(request, serving.index.size, "")
        result = self._coalescer.retrieve(
            serving, query, self._outbound_timeout(context)
        )
        return _response(result)

    def BatchRetrieve(self, request, context):
        if not 1 <= len(request.requests) <= MAX_BATCH:
            raise InvalidArgument(
                f"requests must hold between 1 and {MAX_BATCH} requests, got "
                f"{len(request.requests)}"
            )
        serving = self._retriever.current()
        queries = [
            _query(r, serving.index.size, f"requests[{i}].")
            for i, r in enumerate(request.requests)
        ]
        results = self._retriever.retrieve(
            serving, queries, self._outbound_timeout(context)
        )
        return pb.BatchRetrieveResponse(
            responses=[_response(r) for r in results]
        )
