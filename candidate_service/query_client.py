"""Client of the query server (TF Serving's PredictionService) that turns
user ids into query embeddings of one pinned model version."""

import logging

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from model_store import contract
from serving_common import metrics
from serving_common.errors import (
    DeadlineExceeded,
    ServiceError,
    Unavailable,
)

_log = logging.getLogger(__name__)

# Keep-alive pings let a dead connection be noticed between requests rather
# than by the next request's deadline.
_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def _embeddings(tensor: tensor_pb2.TensorProto, batch: int) -> np.ndarray:
    if tensor.dtype != types_pb2.DT_FLOAT:
        raise ServiceError(
            f"query server returned {types_pb2.DataType.Name(tensor.dtype)} "
            "embeddings; expected DT_FLOAT"
        )
    shape = tuple(d.size for d in tensor.tensor_shape.dim)
    if tensor.tensor_content:
        values = np.frombuffer(tensor.tensor_content, dtype=np.float32)
    else:
        values = np.asarray(tensor.float_val, dtype=np.float32)
    if len(shape) != 2 or shape[0] != batch or values.size != np.prod(shape):
        raise ServiceError(
            f"query server returned embeddings of shape {shape} for "
            f"{batch} users"
        )
    return values.reshape(shape)


class QueryClient:
    """Asks the query server for query embeddings.

    One channel is kept for the client's lifetime; gRPC reconnects it on its
    own after the server comes back.

    Args:
      address: host:port of the query server.
      credentials: call it over TLS with these; None for plaintext.
    """

    def __init__(
        self,
        address: str,
        credentials: grpc.ChannelCredentials | None = None,
    ):
        self.address = address
        channel = (
            grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
            if credentials is None
            else grpc.secure_channel(
                address, credentials, options=_CHANNEL_OPTIONS
            )
        )
        self._channel = metrics.instrument_channel(channel)
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(
            self._channel
        )
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _translate(self, error: grpc.RpcError, timeout_s: float, what: str):
        code = error.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(
                f"query server at {self.address} did not answer {what} "
                f"within {timeout_s:.3f} s"
            )
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
            # NOT_FOUND: the pinned version is not (or no longer) loaded
            # there, which like a dropped connection passes with time.
            return Unavailable(
                f"query server at {self.address} is unavailable for {what}: "
                f"{error.details()}"
            )
        return ServiceError(
            f"query server at {self.address} failed {what}: "
            f"{code.name} {error.details()}"
        )

    def embed(
        self, user_ids: list[str], version: int, timeout_s: float
    ) -> np.ndarray:
        """Query embeddings of one model version.

        Args:
          user_ids: `[batch]` user ids.
          version: the model version to pin, the one the index came from.
          timeout_s: deadline of the call, in seconds.

        Returns:
          float32 `[batch, dim]`.

        Raises:
          Unavailable: the server cannot be reached or lacks the version.
          DeadlineExceeded: it did not answer in time.
          ServiceError: it answered with anything else unexpected.
        """
        request = predict_pb2.PredictRequest()
        request.model_spec.name = contract.QUERY_MODEL_NAME
        request.model_spec.version.value = version
        request.model_spec.signature_name = contract.SERVING_SIGNATURE
        tensor = request.inputs[contract.USER_ID_KEY]
        tensor.dtype = types_pb2.DT_STRING
        tensor.tensor_shape.dim.add().size = len(user_ids)
        tensor.string_val.extend(u.encode("utf-8") for u in user_ids)
        request.output_filter.append(contract.EMBEDDING_KEY)
        try:
            response = self._predict.Predict(request, timeout=timeout_s)
        except grpc.RpcError as e:
            raise self._translate(e, timeout_s, "Predict") from e
        return _embeddings(
            response.outputs[contract.EMBEDDING_KEY], len(user_ids)
        )

    def is_available(self, version: int, timeout_s: float) -> bool:
        """Whether the server reports `version` AVAILABLE.

        Raises:
          Unavailable, DeadlineExceeded: the server could not be asked.
        """
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = contract.QUERY_MODEL_NAME
        request.model_spec.version.value = version
        try:
            response = self._models.GetModelStatus(request, timeout=timeout_s)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise self._translate(e, timeout_s, "GetModelStatus") from e
        return any(
            s.version == version
            and s.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
            for s in response.model_version_status
        )
