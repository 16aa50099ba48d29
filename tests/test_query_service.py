"""The built-in query server answers TF Serving's API as the real one does."""

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from model_store import contract


@pytest.fixture
def channel(query_server):
    with grpc.insecure_channel(f"127.0.0.1:{query_server.port}") as ch:
        yield ch


def _predict_request(user_ids, version=None, name="query"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    tensor = request.inputs["user_id"]
    tensor.dtype = types_pb2.DT_STRING
    tensor.tensor_shape.dim.add().size = len(user_ids)
    tensor.string_val.extend(u.encode() for u in user_ids)
    return request


def test_predict_returns_the_towers_embeddings(channel, small_published):
    from trainer import export

    _, published = small_published
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    users = ["1", "2", "3"]

    response = stub.Predict(
        _predict_request(users, version=published.version), timeout=5
    )

    tensor = response.outputs["embedding"]
    assert tensor.dtype == types_pb2.DT_FLOAT
    assert [d.size for d in tensor.tensor_shape.dim] == [3, 8]
    got = np.frombuffer(tensor.tensor_content, np.float32).reshape(3, 8)
    expected = export.load_signature(published.paths.query)(
        user_id=np.array([u.encode() for u in users])
    )["embedding"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert response.model_spec.version.value == published.version


def test_predict_without_a_version_uses_the_newest(channel, small_published):
    _, published = small_published
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    response = stub.Predict(_predict_request(["1"]), timeout=5)

    assert response.model_spec.version.value == published.version


@pytest.mark.parametrize(
    "mutate, code, text",
    [
        (
            lambda r: r.model_spec.version.__setattr__("value", 999),
            grpc.StatusCode.NOT_FOUND,
            "Specific(query, 999)",
        ),
        (
            lambda r: r.model_spec.__setattr__("name", "other"),
            grpc.StatusCode.NOT_FOUND,
            "other",
        ),
        (
            lambda r: r.inputs["user_id"].__setattr__(
                "dtype", types_pb2.DT_INT64
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "DT_STRING",
        ),
        (
            lambda r: r.inputs["user_id"].tensor_shape.dim.add(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "1-D",
        ),
        (
            lambda r: r.inputs["other"].CopyFrom(r.inputs["user_id"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "exactly one input",
        ),
        (
            lambda r: r.model_spec.__setattr__("signature_name", "nope"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "nope",
        ),
    ],
)
def test_bad_predict_requests_get_tf_servings_codes(
    channel, mutate, code, text
):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = _predict_request(["1", "2"])
    mutate(request)

    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(request, timeout=5)

    assert raised.value.code() == code
    assert text in raised.value.details()


def test_model_status_reports_the_version_available(channel, small_published):
    _, published = small_published
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = contract.QUERY_MODEL_NAME
    request.model_spec.version.value = published.version

    response = stub.GetModelStatus(request, timeout=5)

    [status] = response.model_version_status
    assert status.version == published.version
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE


def test_model_metadata_describes_the_serving_signature(channel):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = contract.QUERY_MODEL_NAME
    request.metadata_field.append("signature_def")

    response = stub.GetModelMetadata(request, timeout=5)

    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    serving = signatures.signature_def["serving_default"]
    assert serving.inputs["user_id"].dtype == types_pb2.DT_STRING
    assert [d.size for d in serving.inputs["user_id"].tensor_shape.dim] == [-1]
    assert serving.outputs["embedding"].dtype == types_pb2.DT_FLOAT


def test_the_newest_complete_version_is_loaded_and_partial_ones_ignored(
    small_published, tmp_path
):
    import shutil

    from model_store import layout
    from query_service.models import ModelRegistry

    models, published = small_published
    copy = tmp_path / "models"
    shutil.copytree(models, copy)
    v = published.version
    # A newer version with its query tower but no manifest: half-written.
    shutil.copytree(copy / "query" / str(v), copy / "query" / str(v + 1))
    registry = ModelRegistry(copy)

    registry.refresh()
    assert registry.versions() == [v]

    for part in ("candidate", "index"):
        shutil.copytree(copy / part / str(v), copy / part / str(v + 1))
    registry.refresh()
    assert registry.versions() == [v, v + 1]
    assert registry.get().version == v + 1
    assert layout.latest_version(copy) == v + 1


def test_tensorflow_model_server_config_names_the_query_model(tmp_path):
    from query_service import tfserving

    config = tfserving.model_config(tmp_path, keep_versions=2)

    assert 'name: "query"' in config
    assert f'base_path: "{(tmp_path / "query").resolve()}"' in config
    assert "num_versions: 2" in config
    assert tfserving.command("tms", 8500, tmp_path / "c", 2.0) == [
        "tms",
        "--port=8500",
        f"--model_config_file={tmp_path / 'c'}",
        "--file_system_poll_wait_seconds=2",
    ]
