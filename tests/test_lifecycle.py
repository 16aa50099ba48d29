"""Versions that always match, swaps with no failed request, failures that
give the right status and heal."""

import collections
import json
import logging
import shutil
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from model_store import layout
from movie_retrieval.v1 import retrieval_service_pb2 as pb
from movie_retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc
from tests import traffic
from tests.conftest import FIGURES, SMALL_CONFIG, free_port

USERS = [str(u) for u in range(1, 11)]


def _publish(small_data, models, seed, **overrides):
    from trainer import movielens
    from trainer.config import TrainConfig
    from trainer.train import train_and_publish

    config = TrainConfig(**{**SMALL_CONFIG, "seed": seed, **overrides})
    return train_and_publish(movielens.load(small_data), models, config)


def _wait_for(predicate, timeout_s=30.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _expected_top(models, version, user_id, k):
    """What a version must answer for a user, computed offline."""
    from candidate_service.versions import load_version
    from trainer import export

    serving = load_version(models, version)
    query = export.load_signature(layout.VersionPaths(models, version).query)
    embedding = query(user_id=np.array([user_id.encode()]))["embedding"]
    ids, _ = serving.index.search(embedding.numpy(), k)
    return ids[0].tolist()


class Stack:
    """Both servers on free ports over one models directory."""

    def __init__(self, models, query_port=0, **settings):
        from candidate_service.server import Settings, create_server
        from query_service.server import create_server as create_query

        self.models = models
        self.query = create_query(
            f"127.0.0.1:{query_port}", models, poll_s=0.2
        )
        self.query_address = f"127.0.0.1:{self.query.port}"
        self.candidate = create_server(
            Settings(
                address="127.0.0.1:0",
                models_dir=models,
                query_server=self.query_address,
                poll_s=0.2,
                query_timeout_s=1.0,
                **settings,
            )
        )
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{self.candidate.port}"
        )
        self.stub = pb_grpc.RetrievalServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def serving(self) -> bool:
        try:
            reply = self.health.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def close(self):
        self.channel.close()
        self.candidate.stop(0)
        self.query.stop(0)


@pytest.fixture
def models(small_published, tmp_path):
    source, _ = small_published
    copy = tmp_path / "models"
    shutil.copytree(source, copy)
    return copy


@pytest.fixture
def stack(models):
    s = Stack(models)
    _wait_for(s.serving, what="SERVING")
    yield s
    s.close()


def _request(i):
    user = USERS[i % len(USERS)]
    return user, pb.RetrieveRequest(user_id=user, k=10)


def test_publishing_under_load_fails_no_request_and_never_mixes_versions(
    stack, models, small_data, small_published
):
    _, first = small_published
    stop = threading.Event()
    thread, box = traffic.in_background(
        traffic.steady, stack.stub.Retrieve, _request, 50, stop
    )
    time.sleep(1.0)

    second = _publish(small_data, models, seed=7)
    _wait_for(
        lambda: stack.candidate.retriever.serving.version == second.version,
        what="the swap",
    )
    time.sleep(1.0)
    stop.set()
    thread.join()
    tally = box["result"]
    FIGURES["publish_under_load"] = tally.figures()

    assert tally.sent > 50
    assert tally.failed == 0, tally.codes
    assert set(tally.versions) == {first.version, second.version}
    expected = {
        (v, u): _expected_top(models, v, u, 10)
        for v in (first.version, second.version)
        for u in USERS
    }
    for user, response in tally.responses:
        got = [m.movie_id for m in response.movies]
        assert got == expected[(response.model_version, user)]


def test_loading_a_version_hashes_each_index_file_once(
    small_published, monkeypatch
):
    from candidate_service.versions import load_version
    from model_store import digest

    models, published = small_published
    hashed = collections.Counter()
    real = digest.file_sha256

    def counting(path):
        hashed[Path(path)] += 1
        return real(path)

    monkeypatch.setattr(digest, "file_sha256", counting)
    load_version(models, published.version)

    index_files = {
        path
        for path in published.paths.index.rglob("*")
        if path.is_file() and path != published.paths.manifest
    }
    assert set(hashed) == index_files
    assert set(hashed.values()) == {1}


@pytest.mark.parametrize("listed", ["none", "all but scann"])
def test_an_index_file_the_manifest_does_not_list_is_still_checked(
    small_data, tmp_path, listed
):
    from candidate_service.versions import VersionRefused, load_version

    published = _publish(small_data, tmp_path, seed=5)
    manifest = json.loads(published.paths.manifest.read_text())
    if listed == "none":
        del manifest["checksums"]
    else:
        manifest["checksums"] = {
            name: value
            for name, value in manifest["checksums"].items()
            if not name.startswith("scann/")
        }
    published.paths.manifest.write_text(json.dumps(manifest))
    scann_file = next((published.paths.index / "scann").glob("*.npy"))
    scann_file.write_bytes(scann_file.read_bytes()[:-8])

    with pytest.raises(VersionRefused, match="checksum"):
        load_version(tmp_path, published.version)


def _corrupt_checksum(paths):
    (paths.index / "history.npz").write_bytes(b"not the published bytes")


def _drop_manifest_field(paths):
    manifest = json.loads(paths.manifest.read_text())
    manifest["num_candidates"] += 1
    paths.manifest.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_corrupt_checksum, "checksum"),
        (_drop_manifest_field, "candidates"),
    ],
)
def test_a_corrupt_version_is_refused_and_the_current_one_keeps_serving(
    stack, models, small_data, small_published, caplog, damage, reason
):
    _, first = small_published
    caplog.set_level(logging.INFO)
    # Build the new version aside, damage it, then publish it as is.
    aside = models.parent / "aside"
    bad = _publish(small_data, aside, seed=11)
    damage(bad.paths)
    staged = layout.staging_dir(models)
    for part in layout.PARTS:
        shutil.copytree(bad.paths.part(part), staged / part)
    layout.publish(staged, models, bad.version + first.version)

    _wait_for(
        lambda: any("refusing version" in r.message for r in caplog.records),
        what="the refusal",
    )
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert reason in errors[0].getMessage()
    response = stack.stub.Retrieve(
        pb.RetrieveRequest(user_id="1", k=5), timeout=5
    )
    assert response.model_version == first.version
    assert stack.serving()


def test_a_version_whose_towers_disagree_with_its_index_is_refused(
    stack, models, small_data, small_published, caplog
):
    _, first = small_published
    caplog.set_level(logging.INFO)
    aside = models.parent / "aside"
    other = _publish(small_data, aside, seed=3, embedding_dim=4)
    # The new version's query tower has dimension 4; its index has 8.
    staged = layout.staging_dir(models)
    shutil.copytree(other.paths.query, staged / layout.QUERY)
    shutil.copytree(first.paths.candidate, staged / layout.CANDIDATE)
    shutil.copytree(first.paths.index, staged / layout.INDEX)
    new_version = first.version + 5
    layout.publish(staged, models, new_version)

    _wait_for(
        lambda: any("dimension" in r.getMessage() for r in caplog.records
                    if r.levelno >= logging.ERROR),
        what="the refusal",
    )
    response = stack.stub.Retrieve(
        pb.RetrieveRequest(user_id="1", k=5), timeout=5
    )
    assert response.model_version == first.version


def test_rollback_returns_both_services_to_the_previous_version(
    stack, models, small_data, small_published
):
    from model_store.__main__ import main as model_store_main

    _, first = small_published
    second = _publish(small_data, models, seed=5)
    _wait_for(
        lambda: stack.candidate.retriever.serving.version == second.version,
        what="the new version",
    )

    assert model_store_main(["--models-dir", str(models), "rollback"]) == 0

    _wait_for(
        lambda: stack.candidate.retriever.serving.version == first.version,
        what="the rollback",
    )
    response = stack.stub.Retrieve(
        pb.RetrieveRequest(user_id="1", k=5), timeout=5
    )
    assert response.model_version == first.version
    assert layout.complete_versions(models) == [first.version]
    assert layout.next_version(models) == second.version + 1


def test_killing_the_query_server_under_load_fails_only_while_it_is_down(
    models,
):
    from query_service.server import create_server as create_query

    port = free_port()
    stack = Stack(models, query_port=port)
    try:
        _wait_for(stack.serving, what="SERVING")
        stop = threading.Event()
        thread, box = traffic.in_background(
            traffic.steady, stack.stub.Retrieve, _request, 40, stop,
        )
        time.sleep(1.0)
        down_at = time.monotonic()
        stack.query.stop(0)
        _wait_for(lambda: not stack.serving(), what="NOT_SERVING")
        time.sleep(1.0)
        stack.query = create_query(f"127.0.0.1:{port}", models, poll_s=0.2)
        up_at = time.monotonic()
        _wait_for(stack.serving, what="SERVING again")
        recovered_at = time.monotonic()
        time.sleep(3.5)
        stop.set()
        thread.join()
    finally:
        stack.close()
    tally = box["result"]
    FIGURES["query_server_restart"] = tally.figures()

    assert tally.failed > 0
    assert set(tally.codes) <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}
    # Errors only while the query server was down; a request in flight at
    # recovery may still run out its 2 s deadline.
    for at, _ in tally.failures:
        assert down_at <= at <= recovered_at + 2.0
    # Full recovery: everything after that succeeded.
    after = [t for t in tally.successes if t > recovered_at + 2.0]
    assert len(after) >= 20
    assert up_at > down_at
