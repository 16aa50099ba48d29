"""TensorFlow Serving's PredictionService and ModelService, for the query
tower only: the parts of the API the candidate service and operators use,
answering as `tensorflow_model_server` does."""

import logging

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from model_store import contract
from query_service.models import ModelRegistry
from serving_common.errors import InvalidArgument, NotFound

_log = logging.getLogger(__name__)

_SIGNATURE_DEF_FIELD = "signature_def"


def _requested_version(model_spec, registry: ModelRegistry):
    if model_spec.name != contract.QUERY_MODEL_NAME:
        raise NotFound(
            f"Servable not found for request: Latest({model_spec.name})"
        )
    if model_spec.HasField("version_label"):
        raise InvalidArgument(
            "version labels are not configured; request a version number"
        )
    version = (
        model_spec.version.value if model_spec.HasField("version") else None
    )
    return registry.get(version)


def _user_ids(request: predict_pb2.PredictRequest) -> list[bytes]:
    if set(request.inputs) != {contract.USER_ID_KEY}:
        raise InvalidArgument(
            f"expected exactly one input, '{contract.USER_ID_KEY}'; got "
            f"{sorted(request.inputs)}"
        )
    tensor = request.inputs[contract.USER_ID_KEY]
    if tensor.dtype != types_pb2.DT_STRING:
        raise InvalidArgument(
            f"input '{contract.USER_ID_KEY}' must be DT_STRING, got "
            f"{types_pb2.DataType.Name(tensor.dtype)}"
        )
    dims = [d.size for d in tensor.tensor_shape.dim]
    values = list(tensor.string_val)
    if len(dims) != 1 or dims[0] != len(values):
        raise InvalidArgument(
            f"input '{contract.USER_ID_KEY}' must be a 1-D tensor [batch] "
            f"with one value per element; got shape {dims} holding "
            f"{len(values)} values"
        )
    return values


def float_tensor(array: np.ndarray) -> tensor_pb2.TensorProto:
    """Packs a float32 array as a TensorProto, in TF's raw-bytes layout."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[
                tensor_shape_pb2.TensorShapeProto.Dim(size=s)
                for s in array.shape
            ]
        ),
        tensor_content=array.tobytes(),
    )


class PredictionServiceServicer(
    prediction_service_pb2_grpc.PredictionServiceServicer
):
    """Predict and GetModelMetadata for the query tower."""

    def __init__(self, registry: ModelRegistry):
        self._registry = registry

    def Predict(self, request, context):
        model = _requested_version(request.model_spec, self._registry)
        signature = request.model_spec.signature_name
        if signature not in ("", contract.SERVING_SIGNATURE):
            raise InvalidArgument(
                f"Serving signature name: \"{signature}\" not found in "
                "signature def"
            )
        if request.output_filter and set(request.output_filter) != {
            contract.EMBEDDING_KEY
        }:
            raise InvalidArgument(
                f"output_filter may only name '{contract.EMBEDDING_KEY}'"
            )
        embeddings = model.embed(_user_ids(request))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = contract.QUERY_MODEL_NAME
        response.model_spec.version.value = model.version
        response.model_spec.signature_name = contract.SERVING_SIGNATURE
        response.outputs[contract.EMBEDDING_KEY].CopyFrom(
            float_tensor(embeddings)
        )
        return response

    def GetModelMetadata(self, request, context):
        if list(request.metadata_field) != [_SIGNATURE_DEF_FIELD]:
            raise InvalidArgument(
                f"metadata_field must be ['{_SIGNATURE_DEF_FIELD}'], got "
                f"{list(request.metadata_field)}"
            )
        model = _requested_version(request.model_spec, self._registry)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in model.signature_defs.items():
            signatures.signature_def[name].CopyFrom(signature_def)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = contract.QUERY_MODEL_NAME
        response.model_spec.version.value = model.version
        response.metadata[_SIGNATURE_DEF_FIELD].Pack(signatures)
        return response


class ModelServiceServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus: which versions are AVAILABLE."""

    def __init__(self, registry: ModelRegistry):
        self._registry = registry

    def GetModelStatus(self, request, context):
        if request.model_spec.name != contract.QUERY_MODEL_NAME:
            raise NotFound(
                "Could not find any versions of model "
                f"{request.model_spec.name}"
            )
        versions = self._registry.versions()
        if request.model_spec.HasField("version"):
            wanted = request.model_spec.version.value
            if wanted not in versions:
                raise NotFound(
                    f"Could not find version {wanted} of model "
                    f"{contract.QUERY_MODEL_NAME}"
                )
            versions = [wanted]
        if not versions:
            raise NotFound(
                "Could not find any versions of model "
                f"{contract.QUERY_MODEL_NAME}"
            )
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in versions:
            status = response.model_version_status.add()
            status.version = version
            status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return response
