"""Domain errors and the one place that turns them into gRPC status codes.

Service code raises a `ServiceError` subclass named after the condition; the
interceptor below aborts the RPC with the matching code and the error's
message. Anything else escaping a handler is a bug: it is logged with its
traceback and the caller gets INTERNAL with a generic message, never UNKNOWN.
"""

import logging

import grpc

_log = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base of the errors a caller is told about.

    Attributes:
      message: what went wrong and, where it helps, how to fix it; sent to
        the caller as the status details.
    """

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and details a caller sees for an exception."""
    if isinstance(error, ServiceError):
        return error.code, error.message
    return grpc.StatusCode.INTERNAL, "internal error; see the server log"


def _wrap_unary(behaviour, deserialize, method: str):
    def handler(raw, context):
        try:
            # Parsing here rather than in gRPC: its own failure to parse is
            # INTERNAL, but bytes that are not a valid message are the
            # caller's error.
            try:
                request = deserialize(raw) if deserialize else raw
            except Exception as e:  # noqa: BLE001 - any parse failure
                raise InvalidArgument(
                    f"the request is not a valid message for {method}: {e}"
                ) from e
            return behaviour(request, context)
        except ServiceError as e:
            _log.debug("%s failed: %s", method, e.message)
            context.abort(*status_of(e))
        except Exception:
            # context.abort() raises an Exception subclass of its own to end
            # the RPC; it must pass through untouched.
            if context.code() is not None:
                raise
            _log.exception("unexpected error in %s", method)
            context.abort(*status_of(RuntimeError()))

    return handler


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps exceptions escaping unary handlers to status codes, and
    unparseable requests to INVALID_ARGUMENT."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary(
                handler.unary_unary,
                handler.request_deserializer,
                handler_call_details.method,
            ),
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )
