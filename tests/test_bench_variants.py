"""The record of dropped variants: each still runs against today's model,
changes what it says it changes, and leaves the model's code as it was."""

import json

import numpy as np
import pytest

from bench import variants
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
