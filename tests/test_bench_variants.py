"""The record of dropped variants: each still runs against today's model,
changes what it says it changes, and leaves the model's code as it was."""

import dataclasses
import json
from unittest import mock

import numpy as np
import pytest

from bench import baselines, variants
from bench.quality import Settings, SplitData
from trainer import model, train
from trainer.config import TrainConfig

PATCHED = [v for v in variants.VARIANTS if v.patch is not None]


@pytest.fixture(scope="module")
def data(small_data):
    return SplitData(Settings(data_dir=str(small_data)), "random")


# A learning rate large enough that three steps on the small data move the
# loss visibly whatever the variant changes.
FAST = TrainConfig(learning_rate=0.1)


@pytest.fixture(scope="module")
def default_run(data):
    return variants.run_variant(
        variants.VARIANTS[0], data, max_epochs=3, base=FAST
    )


def _patched_code():
    return {
        (cls.__name__, name): getattr(cls, name)
        for cls in (
            model.QueryTower,
            model.CandidateTower,
            model.RetrievalModel,
        )
        for name in vars(cls)
        if callable(getattr(cls, name))
    } | {("train", "_optimizer"): train._optimizer}


@pytest.mark.parametrize("variant", PATCHED, ids=lambda v: v.name)
def test_patched_variant_trains_differently_and_restores_the_code(
    variant, data, default_run
):
    before = _patched_code()
    result = variants.run_variant(variant, data, max_epochs=3, base=FAST)
    assert result["epochs_run"] == 3
    # Same seed, same data: only the patch can move the loss.
    assert result["final_loss"] != pytest.approx(
        default_run["final_loss"], rel=1e-6
    )
    assert _patched_code() == before


def test_max_epochs_caps_a_variant_that_sets_its_own(data):
    cosine = next(v for v in variants.VARIANTS if v.name == "cosine_100")
    assert variants.run_variant(cosine, data, max_epochs=1)["epochs_run"] == 1


def test_standardised_rows_have_mean_zero_and_unit_spread():
    scores = np.array([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]])
    out = variants._standardised(scores)
    np.testing.assert_allclose(out[0].mean(), 0.0, atol=1e-12)
    np.testing.assert_allclose(out[0].std(), 1.0)
    # A user with equal scores stays all zeros rather than dividing by 0.
    np.testing.assert_array_equal(out[1], np.zeros(4))


def test_cli_writes_json_and_markdown(small_data, tmp_path):
    out = tmp_path / "variants.json"
    code = variants.main(
        [
            "--data-dir",
            str(small_data),
            "--out",
            str(out),
            "--only",
            "pool_sqrt",
            "--max-epochs",
            "1",
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert [r["variant"] for r in report["variants"]] == [
        "default",
        "pool_sqrt",
    ]
    blend = report["blend"]
    assert len(blend["rows"]) == 2 * len(variants.BLEND_WEIGHTS)
    table = out.with_suffix(".md").read_text()
    assert "| pool_sqrt |" in table
    assert "## The default blended with EASE" in table
    assert "Capped at 1 epochs by --max-epochs" in table


def test_cli_without_data_names_the_folder(tmp_path, caplog):
    code = variants.main(
        ["--data-dir", str(tmp_path), "--out", str(tmp_path / "v.json")]
    )
    assert code == 1
    assert f"no MovieLens files in {tmp_path}" in caplog.text
    assert not (tmp_path / "v.json").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--only", "pool_sqrt"], "give --out"),
        (["--max-epochs", "2"], "give --out"),
        (["--max-epochs", "0", "--out", "x.json"], "must be at least 1"),
        # The Markdown would take the JSON's place.
        (["--out", "variants.md"], "must name a .json file"),
    ],
)
def test_cli_refuses_a_partial_run_over_the_results(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        variants.main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def _row(name: str, around: float, best: float) -> dict:
    return {
        "variant": name,
        "around_best_recall_10": around,
        "best": {"recall_10": best},
    }


def test_seed_check_reruns_the_default_and_only_the_variants_ahead(data):
    rows = [
        _row("default", 0.30, 0.35),
        _row("pool_sqrt", 0.31, 0.32),
        _row("pool_n075", 0.29, 0.36),
    ]
    check = variants.run_seed_check(rows, data, max_epochs=1)
    assert check["seeds"] == [42, 43, 44, 45]
    assert [r["variant"] for r in check["rows"]] == ["default", "pool_sqrt"]
    default = check["rows"][0]
    # Seed 42's figures are the main run's, not rerun.
    assert default["around_best_recall_10"][0] == 0.30
    assert default["recall_10"][0] == 0.35
    assert len(default["recall_10"]) == 4
    assert all(0.0 <= r <= 1.0 for r in default["recall_10"][1:])
    table = variants.markdown({"variants": [], "seed_check": check})
    assert "## Seed check" in table
    assert "| default | 0.3000 (0.3500) |" in table


def test_seed_check_runs_nothing_when_no_variant_is_ahead(data):
    rows = [_row("default", 0.30, 0.35), _row("pool_sqrt", 0.29, 0.40)]
    check = variants.run_seed_check(rows, data)
    assert check["rows"] == []
    table = variants.markdown({"variants": [], "seed_check": check})
    assert "Seed check" not in table


def test_markdown_names_the_command_of_a_partial_run():
    command = "python -m bench.variants --only pool_sqrt --out x.json"
    table = variants.markdown({"variants": [], "meta": {"command": command}})
    assert f"Made by `{command}`" in table
    assert "Rerun with `make bench-variants`" in variants.markdown(
        {"variants": []}
    )


def test_cli_refuses_an_out_it_cannot_write_before_running(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        variants.main(["--out", str(blocker / "v.json")])
    assert exit_info.value.code == 2


def test_every_variant_config_names_real_settings():
    for variant in variants.VARIANTS:
        dataclasses.replace(TrainConfig(), **variant.config)


def test_markdown_marks_runs_that_reached_their_epoch_cap():
    row = {
        "variant": "batch_128",
        "change": "x",
        "best_epoch": 140,
        "best": {"recall_10": 0.2, "top_10": 0.05},
        "around_best_recall_10": 0.19,
        "seconds": 1.0,
    }
    capped = variants.markdown(
        {"variants": [{**row, "epochs_run": TrainConfig().epochs}]}
    )
    stopped = variants.markdown({"variants": [{**row, "epochs_run": 120}]})
    assert f"140 of {TrainConfig().epochs}* |" in capped
    assert "its best may lie beyond" in capped
    assert "140 of 120 |" in stopped
    assert "its best may lie beyond" not in stopped


def test_seed_check_table_leaves_the_picking_seed_out_of_its_last_mean():
    check = {
        "seeds": [42, 43, 44, 45],
        "rows": [
            {
                "variant": "default",
                "around_best_recall_10": [0.5, 0.1, 0.2, 0.3],
                "recall_10": [0.6, 0.2, 0.3, 0.4],
            }
        ],
    }
    table = variants.markdown({"variants": [], "seed_check": check})
    assert "| mean | mean, seeds 43-45 |" in table
    assert "| 0.2750 (0.3750) | 0.2000 (0.3000) |" in table


def test_ease_distilled_adds_the_cross_entropy_to_eases_softmax(data):
    """The second term equals, computed apart in numpy, the cross-entropy
    of the towers' catalogue softmax against EASE's softmax over the
    movies the loss showed: EASE column j must be lookup row j + 1."""
    import tensorflow as tf

    it, split = data.interactions, data.split
    towers = train.build_model(data.dataset, it, split.fit, TrainConfig())
    # Untrained towers score every movie about the same, which would hide
    # a teacher aimed at the wrong movies; random weights spread them.
    rng = np.random.default_rng(0)
    for weight in towers.trainable_variables:
        weight.assign(rng.normal(size=weight.shape).astype(np.float32))
    users = tf.range(1, 9, dtype=tf.int64)

    def every_other(self, batch, entry_rows):
        return tf.cast(tf.range(tf.size(entry_rows)) % 2 == 0, tf.float32)

    weight, temperature = 0.5, 0.05
    with mock.patch.object(model.RetrievalModel, "draw_hidden", every_other):
        towers_loss = float(towers._masked_loss(users))
        with variants._ease_distilled(data, TrainConfig(), weight, temperature):
            total = float(towers._masked_loss(users))
        rows, movies = towers.query_tower.history_entries(users)
        hidden = every_other(towers, None, rows)
        query = towers.query_tower.embed_with_history(
            users, rows, movies, 1.0 - hidden
        )
        logits = towers._catalogue_logits(query).numpy().astype(np.float64)

    shown = np.zeros((len(users), it.num_movies))
    shown[rows.numpy(), movies.numpy() - 1] = 1.0 - hidden.numpy()
    ease = baselines.ease_weights(
        baselines.to_csr(it.matrix(split.fit)).toarray(),
        variants.DISTILLED_EASE_L2,
    )
    teacher = np.where(shown > 0, -np.inf, shown @ ease / temperature)
    targets = np.exp(teacher - teacher.max(axis=1, keepdims=True))
    targets /= targets.sum(axis=1, keepdims=True)
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    cross = -(targets * log_p).sum(axis=1)
    cross[shown.sum(axis=1) == 0] = 0.0
    expected = cross.sum() / len(users)
    assert expected > 1.0
    assert (total - towers_loss) / weight == pytest.approx(expected, rel=1e-4)
