"""TLS on both servers and on the hop between them, with self-signed
certificates made here: clients that trust the server's certificate get
answers, plaintext clients and clients trusting another certificate are
refused."""

import dataclasses
import datetime
import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from candidate_service.api_client import RetrievalClient, ServiceUnavailable
from serving_common import server as wiring

# A dev dependency (pyproject.toml); skip rather than fail where an older
# environment lacks it.
pytest.importorskip("cryptography", reason="cryptography makes the test CA")

K = 5


@dataclasses.dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path

    @property
    def pem(self) -> bytes:
        return self.cert.read_bytes()

    @property
    def tls(self) -> wiring.ServerTls:
        return wiring.ServerTls(cert_chain=self.cert, private_key=self.key)


def make_certificate(directory: Path, name: str) -> Certificate:
    """A self-signed certificate for localhost and 127.0.0.1, valid for a
    day; the key is P-256, quick to make."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = Certificate(
        cert=directory / f"{name}.crt", key=directory / f"{name}.key"
    )
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls"), "server")


@pytest.fixture(scope="module")
def other_certificate(tmp_path_factory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls-other"), "other")


def _candidate_settings(models, query_port, **changes):
    from candidate_service.server import Settings

    return Settings(
        address="127.0.0.1:0",
        models_dir=models,
        query_server=f"127.0.0.1:{query_port}",
        poll_s=0.2,
        **changes,
    )


@pytest.fixture(scope="module")
def tls_candidate_server(small_published, query_server, certificate):
    """A candidate service serving TLS, calling the plaintext query
    server."""
    from candidate_service.server import create_server

    models, _ = small_published
    server = create_server(
        _candidate_settings(models, query_server.port, tls=certificate.tls)
    )
    with RetrievalClient(
        f"127.0.0.1:{server.port}", root_certificates=certificate.pem
    ) as client:
        assert client.wait_until_serving(timeout=30), "TLS server not ready"
    yield server
    server.stop(0)


@pytest.fixture(scope="module")
def tls_query_server(small_published, certificate):
    from query_service.server import create_server

    models, _ = small_published
    server = create_server(
        "127.0.0.1:0", models, poll_s=0.2, tls=certificate.tls
    )
    yield server
    server.stop(0)


def test_whole_chain_over_tls_answers(
    small_published, tls_query_server, certificate
):
    from candidate_service.server import create_server

    models, published = small_published
    server = create_server(
        _candidate_settings(
            models,
            tls_query_server.port,
            tls=certificate.tls,
            query_server_ca=certificate.cert,
        )
    )
    try:
        with RetrievalClient(
            f"127.0.0.1:{server.port}", root_certificates=certificate.pem
        ) as client:
            assert client.wait_until_serving(timeout=30)
            answer = client.retrieve("1", K, timeout=10)
    finally:
        server.stop(0)

    assert len(answer.movies) == K
    assert answer.model_version == published.version


@pytest.mark.parametrize("trust", ["plaintext", "another certificate"])
def test_candidate_service_not_trusting_the_query_server_stays_unready(
    small_published, tls_query_server, other_certificate, trust
):
    from candidate_service.server import create_server

    models, _ = small_published
    server = create_server(
        _candidate_settings(
            models,
            tls_query_server.port,
            query_server_ca=None
            if trust == "plaintext"
            else other_certificate.cert,
        )
    )
    try:
        with RetrievalClient(f"127.0.0.1:{server.port}") as client:
            # Several polls: its warm-up through the query server can never
            # succeed, so it must never report SERVING.
            assert not client.wait_until_serving(timeout=2)
            with pytest.raises(ServiceUnavailable):
                client.retrieve("1", K, timeout=5)
    finally:
        server.stop(0)


def test_unreadable_query_server_ca_is_a_value_error_naming_it(
    small_published, tmp_path
):
    from candidate_service.server import create_server

    models, _ = small_published
    with pytest.raises(ValueError, match="absent.pem"):
        create_server(
            _candidate_settings(
                models, 1, query_server_ca=tmp_path / "absent.pem"
            )
        )


def test_retrieve_over_tls_answers_as_over_plaintext(
    tls_candidate_server, candidate_server, small_published, certificate
):
    _, published = small_published
    with (
        RetrievalClient(
            f"127.0.0.1:{tls_candidate_server.port}",
            root_certificates=certificate.pem,
        ) as tls_client,
        RetrievalClient(f"127.0.0.1:{candidate_server.port}") as plain_client,
    ):
        over_tls = tls_client.retrieve("1", K, timeout=10)
        over_plaintext = plain_client.retrieve("1", K, timeout=10)

    assert tls_candidate_server.bound.tls
    assert len(over_tls.movies) == K
    assert over_tls.model_version == published.version
    assert over_tls == over_plaintext


def test_plaintext_client_is_refused_by_tls_server(tls_candidate_server):
    address = f"127.0.0.1:{tls_candidate_server.port}"
    with (
        RetrievalClient(address) as client,
        pytest.raises(ServiceUnavailable) as raised,
    ):
        client.retrieve("1", K, timeout=5)
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE


def test_client_trusting_another_certificate_is_refused(
    tls_candidate_server, other_certificate
):
    with (
        RetrievalClient(
            f"127.0.0.1:{tls_candidate_server.port}",
            root_certificates=other_certificate.pem,
        ) as client,
        pytest.raises(ServiceUnavailable),
    ):
        client.retrieve("1", K, timeout=5)


def _model_status(channel: grpc.Channel):
    from tensorflow_serving.apis import (
        get_model_status_pb2,
        model_service_pb2_grpc,
    )

    from model_store import contract

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = contract.QUERY_MODEL_NAME
    return model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
        request, timeout=5
    )


def test_query_server_serves_tls(tls_query_server, certificate):
    from tensorflow_serving.apis import get_model_status_pb2

    credentials = grpc.ssl_channel_credentials(certificate.pem)
    address = f"127.0.0.1:{tls_query_server.port}"
    with grpc.secure_channel(address, credentials) as channel:
        status = _model_status(channel)

    assert [s.state for s in status.model_version_status] == [
        get_model_status_pb2.ModelVersionStatus.AVAILABLE
    ]


def test_query_server_refuses_plaintext(tls_query_server):
    address = f"127.0.0.1:{tls_query_server.port}"
    with (
        grpc.insecure_channel(address) as channel,
        pytest.raises(grpc.RpcError) as raised,
    ):
        _model_status(channel)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_start_server_with_tls_serves_health_over_tls(certificate):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    bound = wiring.start_server(
        "127.0.0.1:0", lambda server: None, [], tls=certificate.tls
    )
    try:
        bound.set_serving(True)
        credentials = grpc.ssl_channel_credentials(certificate.pem)
        with grpc.secure_channel(
            f"127.0.0.1:{bound.port}", credentials
        ) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
    finally:
        bound.stop(0)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("missing", ["cert_chain", "private_key"])
def test_unreadable_tls_file_is_a_value_error_naming_it(
    certificate, tmp_path, missing
):
    tls = dataclasses.replace(
        certificate.tls, **{missing: tmp_path / "absent.pem"}
    )
    with pytest.raises(ValueError, match="absent.pem"):
        wiring.start_server("127.0.0.1:0", lambda server: None, [], tls=tls)


@pytest.mark.parametrize(
    "flags",
    [["--tls-cert", "server.crt"], ["--tls-key", "server.key"]],
    ids=["cert only", "key only"],
)
def test_tls_flags_go_together(flags):
    from candidate_service.__main__ import main

    with pytest.raises(SystemExit) as raised:
        main(["--models-dir", "unused", *flags])
    assert raised.value.code == 2


def test_tensorflow_model_server_gets_the_pem_contents(certificate):
    """The query server runs tensorflow_model_server with an SSLConfig text
    proto holding the PEM files themselves; parsed with that message's
    fields, it gives back the exact bytes."""
    from google.protobuf import descriptor_pb2, descriptor_pool, text_format
    from google.protobuf.message_factory import GetMessageClass

    from query_service.__main__ import ssl_config

    # SSLConfig of tensorflow_serving/config/ssl_config.proto, which
    # tensorflow-serving-api does not ship.
    Field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="test_ssl_config.proto", package="test", syntax="proto3"
    )
    message = proto.message_type.add(name="SSLConfig")
    for number, name, kind in [
        (1, "server_key", Field.TYPE_STRING),
        (2, "server_cert", Field.TYPE_STRING),
        (3, "custom_ca", Field.TYPE_STRING),
        (4, "client_verify", Field.TYPE_BOOL),
    ]:
        message.field.add(
            name=name, number=number, type=kind, label=Field.LABEL_OPTIONAL
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    parsed = text_format.Parse(
        ssl_config(certificate.tls),
        GetMessageClass(pool.FindMessageTypeByName("test.SSLConfig"))(),
    )

    assert parsed.server_cert == certificate.cert.read_text()
    assert parsed.server_key == certificate.key.read_text()
    assert not parsed.client_verify


def _client_cli(*args: str, stdout=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "candidate_service.client", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],
    )


def test_client_cli_connects_with_tls_ca(tls_candidate_server, certificate):
    client = _client_cli(
        "--address",
        f"127.0.0.1:{tls_candidate_server.port}",
        "--user",
        "1",
        "-k",
        str(K),
        "--tls-ca",
        str(certificate.cert),
    )
    out, err = client.communicate(timeout=60)

    assert client.returncode == 0, err
    assert out.startswith(f"Top {K} movies for user 1 ")
    assert len(out.splitlines()) == K + 1


def test_client_cli_into_a_closed_pipe_exits_quietly(candidate_server):
    reader, writer = os.pipe()
    os.close(reader)  # As `| head` does once it has what it wants.
    try:
        client = _client_cli(
            "--address",
            f"127.0.0.1:{candidate_server.port}",
            "--user",
            "1",
            "-k",
            str(K),
            stdout=writer,
        )
    finally:
        os.close(writer)
    _, err = client.communicate(timeout=60)

    assert client.returncode == 0
    assert err == ""
