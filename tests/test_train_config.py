"""TrainConfig validation and the trainer's flags that build it."""

import dataclasses

import pytest

from trainer.__main__ import _config, _parser
from trainer.config import TrainConfig


def test_the_tests_small_settings_are_accepted():
    config = TrainConfig(
        embedding_dim=8, epochs=5, batch_size=64, learning_rate=0.5, seed=42
    )

    assert config.model == "features"


def test_the_tutorial_settings_are_the_published_ones():
    config = TrainConfig.tutorial(seed=7)

    assert (
        config.model,
        config.embedding_dim,
        config.epochs,
        config.batch_size,
        config.learning_rate,
        config.optimizer,
        config.early_stopping_patience,
        config.seed,
    ) == ("tutorial", 32, 3, 8192, 0.1, "adagrad", 0, 7)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"validation_fraction": 0.0}, "validation_fraction"),
        ({"learning_rate": 0.0}, "learning_rate must be positive"),
        ({"temperature": -1.0}, "temperature must be positive"),
        ({"weight_decay": -0.1}, "must not be negative"),
        ({"history_dropout": 1.0}, "history_dropout"),
        ({"optimizer": "sgd"}, "optimizer must be one of"),
        ({"loss": "hinge"}, "loss must be one of"),
        ({"model": "deep"}, "model must be one of"),
        ({"history": False, "user_embedding": True}, "masked loss"),
        ({"history": False, "loss": "in_batch"}, "user_embedding, history"),
        ({"embedding_dim": 1}, "item_bias"),
    ],
)
def test_invalid_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)


def test_flags_override_the_defaults():
    args = _parser().parse_args(
        ["--epochs", "7", "--no-item-bias", "--loss", "in_batch"]
    )

    config = _config(args)

    assert (config.epochs, config.item_bias, config.loss) == (
        7,
        False,
        "in_batch",
    )
    assert config.history_dropout == TrainConfig().history_dropout


def test_tutorial_flag_starts_from_the_tutorial_settings():
    args = _parser().parse_args(["--tutorial", "--epochs", "5"])

    config = _config(args)

    assert config == dataclasses.replace(TrainConfig.tutorial(), epochs=5)
