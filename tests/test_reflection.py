"""Server reflection on both services, read as grpcurl reads it: the
services listed, each described down to its methods' message types, and a
call made from nothing but the reflected descriptors."""

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"
RETRIEVAL = "movie_retrieval.v1.RetrievalService"
PREDICTION = "tensorflow.serving.PredictionService"
MODELS = "tensorflow.serving.ModelService"

# Each server's services and, for its own ones, every method with its
# request and response types.
EXPECTED = {
    "candidate_server": {
        RETRIEVAL: {
            "Retrieve": (
                "movie_retrieval.v1.RetrieveRequest",
                "movie_retrieval.v1.RetrieveResponse",
            ),
            "BatchRetrieve": (
                "movie_retrieval.v1.BatchRetrieveRequest",
                "movie_retrieval.v1.BatchRetrieveResponse",
            ),
        },
    },
    "query_server": {
        PREDICTION: {
            "Classify": (
                "tensorflow.serving.ClassificationRequest",
                "tensorflow.serving.ClassificationResponse",
            ),
            "Regress": (
                "tensorflow.serving.RegressionRequest",
                "tensorflow.serving.RegressionResponse",
            ),
            "Predict": (
                "tensorflow.serving.PredictRequest",
                "tensorflow.serving.PredictResponse",
            ),
            "MultiInference": (
                "tensorflow.serving.MultiInferenceRequest",
                "tensorflow.serving.MultiInferenceResponse",
            ),
            "GetModelMetadata": (
                "tensorflow.serving.GetModelMetadataRequest",
                "tensorflow.serving.GetModelMetadataResponse",
            ),
        },
        MODELS: {
            "GetModelStatus": (
                "tensorflow.serving.GetModelStatusRequest",
                "tensorflow.serving.GetModelStatusResponse",
            ),
            "HandleReloadConfigRequest": (
                "tensorflow.serving.ReloadConfigRequest",
                "tensorflow.serving.ReloadConfigResponse",
            ),
        },
    },
}


@pytest.fixture(params=sorted(EXPECTED))
def server(request):
    return request.param, request.getfixturevalue(request.param)


@pytest.fixture
def reflected(server):
    """The server's name, a reflection database and a descriptor pool fed
    only by it (as grpcurl builds one)."""
    name, running = server
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        yield name, channel, database, descriptor_pool.DescriptorPool(database)


def test_reflection_lists_the_services(reflected):
    name, _, database, _ = reflected

    assert set(database.get_services()) == {
        *EXPECTED[name],
        HEALTH,
        REFLECTION,
    }


def test_reflection_describes_every_method(reflected):
    name, _, _, pool = reflected

    for service_name, methods in EXPECTED[name].items():
        service = pool.FindServiceByName(service_name)
        assert {
            m.name: (m.input_type.full_name, m.output_type.full_name)
            for m in service.methods
        } == methods


def test_rebuilt_tf_serving_services_list_every_servicer_method(query_server):
    """The TF Serving files are rebuilt from the generated gRPC modules;
    their servicer classes are the reference for the method names."""
    from tensorflow_serving.apis import (
        model_service_pb2_grpc,
        prediction_service_pb2_grpc,
    )

    for servicer, service in [
        (prediction_service_pb2_grpc.PredictionServiceServicer, PREDICTION),
        (model_service_pb2_grpc.ModelServiceServicer, MODELS),
    ]:
        public = {n for n in vars(servicer) if not n.startswith("_")}
        assert public == set(EXPECTED["query_server"][service])


def test_call_built_from_reflection_alone(candidate_server, small_published):
    """What `grpcurl -d '{"user_id": "1", "k": 3}' ... Retrieve` does."""
    _, published = small_published
    address = f"127.0.0.1:{candidate_server.port}"
    with grpc.insecure_channel(address) as channel:
        pool = descriptor_pool.DescriptorPool(
            ProtoReflectionDescriptorDatabase(channel)
        )
        service = pool.FindServiceByName(RETRIEVAL)
        method = service.methods_by_name["Retrieve"]
        request_class = GetMessageClass(method.input_type)
        response_class = GetMessageClass(method.output_type)
        call = channel.unary_unary(
            f"/{RETRIEVAL}/Retrieve",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        response = call(request_class(user_id="1", k=3), timeout=10)

    assert len(response.movies) == 3
    assert response.model_version == published.version
