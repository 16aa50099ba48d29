"""The quality report's rendering: seed spread, validation, --render."""

import json
from pathlib import Path

import pytest

from bench import quality

RESULTS = Path(__file__).parents[1] / "bench" / "results" / "quality.json"


@pytest.fixture
def report():
    report = json.loads(RESULTS.read_text(encoding="utf-8"))
    report[quality.SERVING_PROTOCOL]["ours"].update(recall_10=0.40, ndcg_10=0.5)
    report[quality.TUTORIAL_PROTOCOL]["ours"].update(top_10=0.06, top_100=0.4)
    report[quality.SERVING_PROTOCOL]["ease"]["recall_10"] = 0.43
    report[quality.SERVING_PROTOCOL]["als"]["recall_10"] = 0.41
    report["tuned"][quality.SERVING_PROTOCOL]["ours"]["epochs"] = 80
    report["meta"]["seed"] = 42
    report["seed_spread"] = [
        {
            "seed": 43,
            "epochs": 70,
            "recall_10": 0.42,
            "ndcg_10": 0.3,
            "top_10": 0.05,
            "top_100": 0.2,
        },
        {
            "seed": 44,
            "epochs": 90,
            "recall_10": 0.41,
            "ndcg_10": 0.4,
            "top_10": 0.07,
            "top_100": 0.3,
        },
    ]
    return report


def test_seed_spread_lists_the_main_run_first_then_the_medians(report):
    lines = quality.markdown(report).splitlines()

    start = lines.index("## Ours on other seeds, random split, test")
    end = next(
        i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")
    )
    rows = [line for line in lines[start:end] if line.startswith("| ")][1:]
    assert rows == [
        "| 42 | 80 | 0.4000 | 0.5000 | 0.0600 | 0.4000 |",
        "| 43 | 70 | 0.4200 | 0.3000 | 0.0500 | 0.2000 |",
        "| 44 | 90 | 0.4100 | 0.4000 | 0.0700 | 0.3000 |",
        "| median | | 0.4100 | 0.4000 | 0.0600 | 0.3000 |",
    ]
    assert (
        "Recall@10 over the 3 seeds: 0.4000 to 0.4200; beside EASE 0.4300, "
        "implicit ALS 0.4100." in lines
    )


def test_report_without_a_seed_spread_has_no_such_section(report):
    del report["seed_spread"]

    assert "Ours on other seeds" not in quality.markdown(report)


def _section(markdown: str, title: str) -> list[str]:
    lines = markdown.splitlines()
    start = lines.index(title)
    following = range(start + 1, len(lines))
    end = next((i for i in following if lines[i].startswith("## ")), len(lines))
    return [line for line in lines[start:end] if line.startswith("| ")][1:]


def test_validation_shows_ours_best_epoch_beside_the_mean_around_it(report):
    # A lone spike at epoch 7 on a plateau of 0.20: the best is the spike,
    # the mean over epochs 3-11 mostly plateau.
    recalls = [0.20] * 14
    recalls[6] = 0.29
    report["details"]["ours/random"]["validation"] = [
        {"epoch": i + 1, "recall_10": r} for i, r in enumerate(recalls)
    ]
    report["details"]["ease/random"]["validation"] = [
        {"l2": 100.0, "recall_10": 0.21},
        {"l2": 200.0, "recall_10": 0.23},
        {"l2": 500.0, "recall_10": 0.22},
    ]
    del report["details"]["als/random"]

    rows = _section(quality.markdown(report), "## Validation, random split")

    assert rows == [
        (
            "| ours (history + features), epoch 7 of 14 | 0.2900 | 0.2100 "
            "(epochs 3-11) |"
        ),
        "| EASE, best of 3 settings | 0.2300 | |",
    ]


def test_validation_window_stops_at_the_curve_ends(report):
    report["details"]["ours/random"]["validation"] = [
        {"epoch": 1, "recall_10": 0.3},
        {"epoch": 2, "recall_10": 0.1},
    ]

    rows = _section(quality.markdown(report), "## Validation, random split")

    assert rows[0] == (
        "| ours (history + features), epoch 1 of 2 | 0.3000 | 0.2000 "
        "(epochs 1-2) |"
    )


def test_render_rewrites_the_markdown_from_the_json_alone(report, tmp_path):
    out = tmp_path / "quality.json"
    out.write_text(json.dumps(report), encoding="utf-8")

    assert quality.main(["--render", "--out", str(out)]) == 0

    assert (tmp_path / "quality.md").read_text(
        encoding="utf-8"
    ) == quality.markdown(report)
    assert (tmp_path / "quality_recall.png").stat().st_size > 0


def test_ease_cut_to_fewer_dimensions_sits_beside_full_ease_and_ours(report):
    report["details"]["ease/random"]["by_rank"] = [
        {
            "rank": 128,
            "recall_10": 0.41,
            "recall_50": 0.5,
            "recall_100": 0.6,
            "ndcg_10": 0.42,
        },
        {
            "rank": 256,
            "recall_10": 0.42,
            "recall_50": 0.51,
            "recall_100": 0.61,
            "ndcg_10": 0.43,
        },
    ]
    serving = report[quality.SERVING_PROTOCOL]
    serving["ease"].update(recall_50=0.52, recall_100=0.62, ndcg_10=0.44)
    serving["ours"].update(recall_50=0.53, recall_100=0.63)
    movies = report["meta"]["dataset"]["movies"]

    rows = _section(
        quality.markdown(report),
        "## EASE cut to fewer dimensions, serving protocol, test",
    )

    assert rows == [
        "| EASE, cut | 128 | 0.4100 | 0.5000 | 0.6000 | 0.4200 |",
        "| EASE, cut | 256 | 0.4200 | 0.5100 | 0.6100 | 0.4300 |",
        f"| EASE | {movies} (full) | 0.4300 | 0.5200 | 0.6200 | 0.4400 |",
        (
            "| ours (history + features) | 128 | 0.4000 | 0.5300 | 0.6300 "
            "| 0.5000 |"
        ),
    ]


def test_report_without_ease_by_rank_has_no_such_section(report):
    report["details"]["ease/random"].pop("by_rank", None)

    assert "EASE cut to fewer dimensions" not in quality.markdown(report)


def test_render_without_a_report_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        quality.main(["--render", "--out", str(tmp_path / "absent.json")])

    assert exited.value.code == 2
    assert "absent.json, which does not exist" in capsys.readouterr().err
