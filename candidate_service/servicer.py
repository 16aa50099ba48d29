"""RetrievalService: validates requests and turns retrievals into protos."""

import logging

import grpc

from candidate_service.retriever import Retriever
from movie_retrieval.v1 import retrieval_service_pb2 as pb
from movie_retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc
from serving_common.errors import DeadlineExceeded, InvalidArgument

_log = logging.getLogger(__name__)

MAX_USER_ID_BYTES = 128


def _validate(request: pb.RetrieveRequest) -> None:
    if not request.user_id:
        raise InvalidArgument("user_id is required")
    if len(request.user_id.encode("utf-8")) > MAX_USER_ID_BYTES:
        raise InvalidArgument(
            f"user_id must be at most {MAX_USER_ID_BYTES} bytes"
        )
    if request.k < 1:
        raise InvalidArgument(f"k must be at least 1, got {request.k}")


class RetrievalServiceServicer(pb_grpc.RetrievalServiceServicer):
    """Serves Retrieve from a `Retriever`.

    Args:
      retriever: does the work.
      query_timeout_s: the deadline of the call to the query server when
        the caller set none, or a longer one.
    """

    def __init__(self, retriever: Retriever, query_timeout_s: float):
        self._retriever = retriever
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
        _validate(request)
        result = self._retriever.retrieve(
            request.user_id, request.k, self._outbound_timeout(context)
        )
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
        )
