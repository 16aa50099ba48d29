"""Every domain error maps to its status code; anything else is INTERNAL
with a generic message, never UNKNOWN."""

import grpc
import pytest

from serving_common import errors
from serving_common.server import start_server

_METHOD = "/test.Raiser/Raise"


def _raising_server(exception: BaseException):
    def raise_it(request, context):
        raise exception

    handler = grpc.method_handlers_generic_handler(
        "test.Raiser",
        {
            "Raise": grpc.unary_unary_rpc_method_handler(
                raise_it,
                request_deserializer=bytes,
                response_serializer=bytes,
            )
        },
    )
    return start_server(
        "127.0.0.1:0",
        lambda server: server.add_generic_rpc_handlers((handler,)),
        ["test.Raiser"],
    )


@pytest.mark.parametrize(
    "error, code",
    [
        (errors.InvalidArgument("bad k"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("no user"), grpc.StatusCode.NOT_FOUND),
        (errors.Unavailable("down"), grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceeded("slow"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.ResourceExhausted("busy"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.FailedPrecondition("no"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.ServiceError("broken"), grpc.StatusCode.INTERNAL),
    ],
)
def test_service_errors_reach_the_caller_with_their_code_and_message(
    error, code
):
    server = _raising_server(error)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.RpcError) as raised:
                channel.unary_unary(_METHOD)(b"", timeout=5)
    finally:
        server.stop(0)

    assert raised.value.code() == code
    assert raised.value.details() == error.message


def test_unexpected_exceptions_are_internal_with_a_generic_message(caplog):
    server = _raising_server(KeyError("secret detail"))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.RpcError) as raised:
                channel.unary_unary(_METHOD)(b"", timeout=5)
    finally:
        server.stop(0)

    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in raised.value.details()
    assert "secret detail" in caplog.text  # the traceback went to the log
