"""The deployment agrees with the code: docker-compose.yml, the TF Serving
config files and the Dockerfile name the ports, model, signature and paths
the services use by default; the warm-up records are requests the query
tower answers; and `make stack` brings the same topology up locally."""

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    text_format,
    wrappers_pb2,
)
from google.protobuf.message_factory import GetMessageClass

from model_store import contract, layout
from tests.conftest import REPO, free_port

DEPLOY = REPO / "deploy"
MODELS_MOUNT = "/models"


@pytest.fixture(scope="module")
def compose() -> dict:
    # PyYAML is a dev dependency (pyproject.toml); skip rather than fail
    # where an older environment lacks it.
    yaml = pytest.importorskip("yaml", reason="PyYAML reads the compose file")
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def flag(command: list[str], name: str) -> str:
    """The value of `--name=value` or `--name value` in a command line."""
    for i, arg in enumerate(command):
        if arg == name:
            return command[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise KeyError(f"{name} not in {command}")


def default_of(module: str, option: str):
    parser = __import__(module, fromlist=["_parser"])._parser()
    return parser.get_default(option)


def mounts(service: dict) -> dict[str, str]:
    """Container path -> source, of a service's volumes."""
    return {
        volume.split(":")[1]: volume.split(":")[0]
        for volume in service["volumes"]
    }


def published_ports(service: dict) -> set[int]:
    return {int(port.split(":")[0]) for port in service["ports"]}


# --- docker-compose.yml against the code's defaults ------------------------


def test_tfserving_image_matches_the_tensorflow_we_train_with(services):
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    [tensorflow] = [
        d
        for d in pyproject["project"]["dependencies"]
        if d.startswith("tensorflow==")
    ]

    image, tag = services["tfserving"]["image"].split(":")

    assert image == "tensorflow/serving"
    assert tag == tensorflow.split("==")[1]


def test_tfserving_listens_where_the_candidate_service_calls(services):
    tfserving = services["tfserving"]
    candidate = services["candidate-service"]["command"]

    grpc_port = int(flag(tfserving["command"], "--port"))
    host, port = flag(candidate, "--query-server").split(":")

    assert grpc_port == default_of("query_service.__main__", "port") == 8500
    assert (host, int(port)) == ("tfserving", grpc_port)
    assert grpc_port in published_ports(tfserving)


def test_candidate_service_port_and_metrics_port_are_published(services):
    candidate = services["candidate-service"]
    port = int(flag(candidate["command"], "--port"))
    metrics_port = int(flag(candidate["command"], "--metrics-port"))

    assert port == default_of("candidate_service.__main__", "port") == 50051
    assert published_ports(candidate) == {port, metrics_port}
    # The health check asks the same port.
    assert f"127.0.0.1:{port}" in candidate["healthcheck"]["test"]


def test_every_service_sees_the_models_volume_where_it_looks(services):
    assert mounts(services["trainer"])[MODELS_MOUNT] == "models"
    for name in ["tfserving", "candidate-service"]:
        assert mounts(services[name])[MODELS_MOUNT] == "models"
        # Only the trainer writes versions.
        assert f"models:{MODELS_MOUNT}:ro" in services[name]["volumes"]
    command = services["candidate-service"]["command"]
    assert flag(command, "--models-dir") == MODELS_MOUNT


def test_tfserving_config_files_are_the_ones_in_deploy(services):
    tfserving = services["tfserving"]
    sources = mounts(tfserving)
    for option, name in [
        ("--model_config_file", "models.config"),
        ("--batching_parameters_file", "batching.config"),
        ("--monitoring_config_file", "monitoring.config"),
    ]:
        path = flag(tfserving["command"], option)
        assert sources[path] == f"./deploy/{name}"
        assert (DEPLOY / name).is_file()
    assert flag(tfserving["command"], "--enable_batching") == "true"


def test_tfserving_is_healthy_when_the_query_model_is_available(services):
    tfserving = services["tfserving"]
    rest_port = int(flag(tfserving["command"], "--rest_api_port"))
    check = " ".join(tfserving["healthcheck"]["test"])

    assert f"/dev/tcp/127.0.0.1/{rest_port}" in check
    assert f"/v1/models/{contract.QUERY_MODEL_NAME} " in check
    assert '"AVAILABLE"' in check
    assert rest_port in published_ports(tfserving)


def test_services_start_in_order(services):
    assert services["tfserving"]["depends_on"] == {
        "trainer": {"condition": "service_completed_successfully"}
    }
    assert services["candidate-service"]["depends_on"] == {
        "tfserving": {"condition": "service_healthy"}
    }
    assert services["loadtest"]["depends_on"] == {
        "candidate-service": {"condition": "service_healthy"}
    }


def test_load_test_is_an_optional_profile_aimed_at_the_service(services):
    loadtest = services["loadtest"]
    candidate_port = flag(services["candidate-service"]["command"], "--port")

    assert loadtest["profiles"] == ["loadtest"]
    assert flag(loadtest["command"], "--target") == (
        f"candidate-service:{candidate_port}"
    )


def test_docker_compose_validates_the_file():
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (.ci/run installs it)")
    result = subprocess.run(
        [binary, "--profile", "loadtest", "config", "-q"],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# --- TF Serving's config files ---------------------------------------------


def _message_class(full_name: str, fields, extra_messages=()):
    """A message class with the given fields, for parsing a TF Serving
    config whose .proto tensorflow-serving-api does not ship.

    Args:
      full_name: "package.Message".
      fields: (number, name, type or message name, repeated) tuples.
      extra_messages: (name, fields) of messages the fields refer to.
    """
    Field = descriptor_pb2.FieldDescriptorProto
    package, _, name = full_name.rpartition(".")
    proto = descriptor_pb2.FileDescriptorProto(
        name=f"test_{name}.proto",
        package=package,
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    for message_name, message_fields in [*extra_messages, (name, fields)]:
        message = proto.message_type.add(name=message_name)
        for number, field_name, kind, repeated in message_fields:
            field = message.field.add(
                name=field_name,
                number=number,
                label=Field.LABEL_REPEATED
                if repeated
                else Field.LABEL_OPTIONAL,
            )
            if isinstance(kind, str):
                field.type = Field.TYPE_MESSAGE
                field.type_name = kind
            else:
                field.type = kind
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(proto)
    return GetMessageClass(pool.FindMessageTypeByName(full_name))


def test_model_config_serves_the_query_tower_from_the_models_volume():
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse(
        (DEPLOY / "models.config").read_text(),
        model_server_config_pb2.ModelServerConfig(),
    )

    [model] = config.model_config_list.config
    assert model.name == contract.QUERY_MODEL_NAME
    assert model.base_path == f"{MODELS_MOUNT}/{layout.QUERY}"
    assert model.model_platform == "tensorflow"
    # Two versions, so requests pinned to the previous one finish during a
    # swap, as the built-in query server's default keeps them.
    assert model.model_version_policy.latest.num_versions == default_of(
        "query_service.__main__", "keep_versions"
    )


def test_batching_holds_the_largest_predict_the_candidate_sends():
    from candidate_service.servicer import MAX_BATCH

    Field = descriptor_pb2.FieldDescriptorProto
    int64 = ".google.protobuf.Int64Value"
    # BatchingParameters of tensorflow_serving/servables/tensorflow/
    # session_bundle_config.proto.
    batching_parameters = _message_class(
        "tensorflow.serving.BatchingParameters",
        [
            (1, "max_batch_size", int64, False),
            (2, "batch_timeout_micros", int64, False),
            (3, "max_enqueued_batches", int64, False),
            (4, "num_batch_threads", int64, False),
            (5, "thread_pool_name", ".google.protobuf.StringValue", False),
            (6, "allowed_batch_sizes", Field.TYPE_INT64, True),
            (7, "pad_variable_length_inputs", Field.TYPE_BOOL, False),
        ],
    )

    batching = text_format.Parse(
        (DEPLOY / "batching.config").read_text(), batching_parameters()
    )

    assert batching.max_batch_size.value >= MAX_BATCH
    assert batching.num_batch_threads.value >= 1
    # Under a millisecond's wait on top of a sub-millisecond tower.
    assert 0 < batching.batch_timeout_micros.value <= 1000


def test_monitoring_exports_prometheus_on_the_rest_port(services):
    Field = descriptor_pb2.FieldDescriptorProto
    # MonitoringConfig of tensorflow_serving/config/monitoring_config.proto.
    monitoring_config = _message_class(
        "tensorflow.serving.MonitoringConfig",
        [
            (
                1,
                "prometheus_config",
                ".tensorflow.serving.PrometheusConfig",
                False,
            )
        ],
        extra_messages=[
            (
                "PrometheusConfig",
                [
                    (1, "enable", Field.TYPE_BOOL, False),
                    (2, "path", Field.TYPE_STRING, False),
                ],
            )
        ],
    )

    monitoring = text_format.Parse(
        (DEPLOY / "monitoring.config").read_text(), monitoring_config()
    )

    assert monitoring.prometheus_config.enable
    assert monitoring.prometheus_config.path.startswith("/")
    assert flag(services["tfserving"]["command"], "--rest_api_port")


# --- The image -------------------------------------------------------------


def test_dockerfile_runs_pinned_and_unprivileged(services):
    dockerfile = (REPO / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", dockerfile, flags=re.MULTILINE)
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    candidate = services["candidate-service"]["command"]

    # A full version, never `latest` or a bare major version.
    assert all(re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+-\S+", b) for b in bases)
    assert re.search(r"^USER (?!root)\w+", final_stage, flags=re.MULTILINE)
    assert "grpcio-tools" in dockerfile  # removed once the stubs are made
    exposed = re.search(r"^EXPOSE (.+)$", dockerfile, flags=re.MULTILINE).group(
        1
    )
    assert {
        flag(candidate, "--port"),
        flag(candidate, "--metrics-port"),
    } <= set(exposed.split())


# --- The containers' entry point ------------------------------------------


@pytest.mark.parametrize(
    ("ratings_file", "expected"),
    [
        ("u.data", "--data-dir {mount}"),
        ("ratings.csv", "--data-dir {mount}"),
        (None, "--release ml-100k --cache-dir /cache"),
    ],
    ids=["mounted ml-100k", "mounted csv release", "nothing mounted"],
)
def test_trainer_container_uses_the_mounted_data_or_downloads(
    tmp_path, ratings_file, expected
):
    """deploy/entrypoint.sh with `python` replaced by an echo."""
    mount = tmp_path / "data"
    mount.mkdir()
    if ratings_file:
        (mount / ratings_file).touch()
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python").write_text('#!/bin/sh\necho python "$@"\n')
    (shim / "python").chmod(0o755)

    result = subprocess.run(
        ["sh", str(DEPLOY / "entrypoint.sh"), "train", "--epochs", "1"],
        env={
            **os.environ,
            "PATH": f"{shim}:{os.environ['PATH']}",
            "MOVIELENS_MOUNT": str(mount),
        },
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )

    commands = [
        line for line in result.stdout.splitlines() if line.startswith("python")
    ]
    assert commands == [
        "python -m trainer --models-dir /models "
        + expected.format(mount=mount)
        + " --epochs 1",
        "python -m deploy.warmup --models-dir /models",
    ]


# --- Warm-up records -------------------------------------------------------


def test_warmup_records_are_requests_the_query_tower_answers(
    small_published, query_server, tmp_path
):
    """Written into a copy of a published query tower, read back as TF
    Serving reads them, and replayed against the query server."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import (
        prediction_log_pb2,
        prediction_service_pb2_grpc,
    )

    from deploy import warmup

    models, published = small_published
    users = layout.read_manifest(models, published.version)["warmup_user_ids"]
    saved_model = tmp_path / "query" / str(published.version)
    shutil.copytree(published.paths.query, saved_model)

    written = warmup.write_warmup_requests(saved_model, users)
    logs = [
        prediction_log_pb2.PredictionLog.FromString(record.numpy())
        for record in tf.data.TFRecordDataset(str(written))
    ]

    assert written == saved_model / "assets.extra/tf_serving_warmup_requests"
    assert [
        len(log.predict_log.request.inputs[contract.USER_ID_KEY].string_val)
        for log in logs
    ] == [1] * len(users) + [len(users)]
    with grpc.insecure_channel(f"127.0.0.1:{query_server.port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for log in logs:
            request = log.predict_log.request
            assert request.model_spec.name == contract.QUERY_MODEL_NAME
            assert request.model_spec.signature_name == (
                contract.SERVING_SIGNATURE
            )
            response = stub.Predict(request, timeout=10)
            embeddings = response.outputs[contract.EMBEDDING_KEY]
            assert embeddings.tensor_shape.dim[0].size == len(
                request.inputs[contract.USER_ID_KEY].string_val
            )


def test_warmup_refuses_a_folder_without_a_saved_model(tmp_path):
    from deploy import warmup

    with pytest.raises(FileNotFoundError, match="saved_model.pb"):
        warmup.write_warmup_requests(tmp_path, ["1"])


# --- make stack --------------------------------------------------------------


def test_stack_script_brings_up_the_topology(small_published, tmp_path):
    """scripts/stack.sh --check against a published version: both servers
    report SERVING, reflection lists their services, Retrieve answers, the
    metrics endpoint counts it, and the logs are JSON lifecycle lines."""
    models, published = small_published
    logs = tmp_path / "logs"
    env = {
        **os.environ,
        "PY": sys.executable,
        "MODELS_DIR": str(models),
        "QUERY_PORT": str(free_port()),
        "CANDIDATE_PORT": str(free_port()),
        "METRICS_PORT": str(free_port()),
        "LOG_DIR": str(logs),
        "LOG_FORMAT": "json",
        "READY_SECONDS": "120",
    }

    result = subprocess.run(
        ["bash", "scripts/stack.sh", "--check"],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    for service in [
        "movie_retrieval.v1.RetrievalService",
        "tensorflow.serving.PredictionService",
        "tensorflow.serving.ModelService",
        "grpc.health.v1.Health",
    ]:
        assert service in result.stdout
    assert (
        "rpc Retrieve(movie_retrieval.v1.RetrieveRequest) returns "
        "(movie_retrieval.v1.RetrieveResponse)" in result.stdout
    )
    assert 'grpc_method="Retrieve"' in result.stdout

    entries = [
        json.loads(line)
        for line in (logs / "candidate_service.log").read_text().splitlines()
    ]
    messages = " | ".join(e["message"] for e in entries)
    assert f"serving version {published.version}" in messages
    assert "listening on port" in messages
    assert "metrics at http://" in messages
    # Lifecycle only: three Retrieve calls add no line.
    assert len(entries) < 15, messages
