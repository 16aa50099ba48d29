"""Training scales through tf.distribute: the same run on two logical CPU
devices under MirroredStrategy learns what the one-device run learns."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

_RUN = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf

    # Two logical CPU devices stand in for two GPUs or two hosts' replicas.
    [cpu] = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    from trainer import distribute, movielens
    from trainer.config import TrainConfig
    from trainer.train import fit
    from tests.conftest import SMALL_CONFIG

    config = TrainConfig(**{**SMALL_CONFIG, "distribution": sys.argv[2]})
    model, metrics = fit(movielens.load(sys.argv[1]), config)
    strategy = distribute.strategy_for(config.distribution)
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "chief": distribute.is_chief(strategy),
        "metrics": metrics,
    }))
    """
)


def _train(small_data, distribution):
    done = subprocess.run(
        [sys.executable, "-c", _RUN, str(small_data), distribution],
        cwd=REPO,
        env={**os.environ, "TF_USE_LEGACY_KERAS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs(small_data):
    return {d: _train(small_data, d) for d in ("none", "mirrored")}


def test_mirrored_training_uses_both_devices(runs):
    assert runs["none"]["replicas"] == 1
    assert runs["mirrored"]["replicas"] == 2
    assert runs["mirrored"]["chief"]


def test_mirrored_training_learns_as_well_as_one_device(runs):
    one, two = runs["none"]["metrics"], runs["mirrored"]["metrics"]

    # The small data has 60 movies, so top-50 is nearly certain either way;
    # top-10 shows learning: chance is 10/60.
    assert two["top_10"] > 2 * 10 / 60
    # Replicas see the same global batches split in two, so the runs differ
    # only by the order of floating-point sums and the per-replica softmax.
    assert abs(two["top_10"] - one["top_10"]) < 0.1


def test_an_unknown_distribution_is_refused():
    from trainer.config import TrainConfig

    with pytest.raises(ValueError, match="distribution must be one of"):
        TrainConfig(distribution="ring")
