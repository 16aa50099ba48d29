"""Publishing is all or nothing: a failed publish never replaces or damages
a good version."""

import json

import pytest

from model_store import layout


def _stage(models, name="x"):
    staged = layout.staging_dir(models)
    for part in layout.PARTS:
        (staged / part).mkdir()
        (staged / part / "file").write_text(name)
    (staged / layout.INDEX / layout.MANIFEST).write_text(json.dumps({}))
    return staged


def test_publish_moves_every_part_into_place_and_cleans_staging(tmp_path):
    paths = layout.publish(_stage(tmp_path), tmp_path, 1)

    for part in layout.PARTS:
        assert (paths.part(part) / "file").read_text() == "x"
    assert layout.complete_versions(tmp_path) == [1]
    assert not list((tmp_path / ".staging").iterdir())


def test_publishing_an_existing_version_fails_and_keeps_it(tmp_path):
    layout.publish(_stage(tmp_path, "old"), tmp_path, 1)

    with pytest.raises(layout.PublishError, match="already exists"):
        layout.publish(_stage(tmp_path, "new"), tmp_path, 1)

    for part in layout.PARTS:
        assert (tmp_path / part / "1" / "file").read_text() == "old"
    assert layout.complete_versions(tmp_path) == [1]


def test_an_incomplete_staged_version_is_refused(tmp_path):
    staged = _stage(tmp_path)
    (staged / layout.INDEX / layout.MANIFEST).unlink()

    with pytest.raises(layout.PublishError, match="incomplete"):
        layout.publish(staged, tmp_path, 1)
    assert layout.complete_versions(tmp_path) == []


def test_a_failed_rename_takes_back_the_parts_already_moved(
    tmp_path, monkeypatch
):
    import os

    real_rename = os.rename

    def fail_on_query(src, dst):
        if f"/{layout.QUERY}/" in str(dst) + "/":
            raise OSError("disk full")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", fail_on_query)
    with pytest.raises(layout.PublishError, match="disk full"):
        layout.publish(_stage(tmp_path), tmp_path, 1)

    for part in layout.PARTS:
        assert not (tmp_path / part / "1").exists()


def test_a_version_without_a_manifest_is_not_complete(tmp_path):
    layout.publish(_stage(tmp_path), tmp_path, 1)
    (tmp_path / layout.INDEX / "1" / layout.MANIFEST).unlink()

    assert layout.complete_versions(tmp_path) == []
    assert layout.latest_version(tmp_path) is None
    assert layout.next_version(tmp_path) == 2


def test_a_failed_index_check_publishes_nothing(small_data, tmp_path):
    from tests.conftest import SMALL_CONFIG
    from trainer import movielens
    from trainer.config import TrainConfig
    from trainer.train import train_and_publish

    dataset = movielens.load(small_data)
    config = TrainConfig(**{**SMALL_CONFIG, "epochs": 1})
    good = train_and_publish(dataset, tmp_path, config)

    # No index can reach a recall above 1: the check must refuse it.
    with pytest.raises(layout.PublishError, match="recall"):
        train_and_publish(dataset, tmp_path, config, min_index_recall=1.01)

    assert layout.complete_versions(tmp_path) == [good.version]
    for part in layout.PARTS:
        assert sorted(p.name for p in (tmp_path / part).iterdir()) == [
            str(good.version)
        ]
    assert not list((tmp_path / ".staging").iterdir())


def test_the_manifest_records_what_a_version_is(small_published):
    _, published = small_published
    manifest = layout.read_manifest(
        published.paths.models_dir, published.version
    )

    assert manifest["version"] == published.version
    assert manifest["dimension"] == 8
    assert manifest["num_candidates"] == 60
    assert set(manifest["metrics"]) == {
        "top_1", "top_5", "top_10", "top_50", "top_100"
    }
    assert len(manifest["dataset"]["sha256"]) == 64
    assert manifest["index"]["recall_at_10"] == pytest.approx(1.0)
    assert manifest["created_at"]


def test_a_published_query_tower_carries_tf_serving_warmup_records(
    small_published,
):
    import tensorflow as tf

    from trainer.warmup import WARMUP_FILE

    _, published = small_published
    records = published.paths.query / WARMUP_FILE
    users = published.manifest["warmup_user_ids"]

    assert records.is_file()
    assert sum(1 for _ in tf.data.TFRecordDataset(str(records))) == (
        len(users) + 1
    )
