"""The trainer's command line: bad input ends in one clear line and a
non-zero exit, before any training."""

import logging
import shutil

import pytest

from candidate_service.__main__ import _parser as candidate_parser
from model_store import layout
from model_store.__main__ import _parser as store_parser
from query_service.__main__ import _parser as query_parser
from trainer.__main__ import _parser as trainer_parser
from trainer.__main__ import main


def test_a_version_number_at_or_below_an_existing_one_is_refused(
    small_published, capsys
):
    models, published = small_published

    with pytest.raises(SystemExit) as raised:
        main(
            [
                "--models-dir",
                str(models),
                "--version",
                str(published.version),
            ]
        )

    assert raised.value.code == 2
    assert f"--version must be at least {published.version + 1}" in (
        capsys.readouterr().err
    )
    assert layout.complete_versions(models) == [published.version]


def test_a_release_name_that_is_not_one_is_one_error_line(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.delenv("MOVIELENS_DATA_DIR", raising=False)

    code = main(
        [
            "--models-dir",
            str(tmp_path / "models"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--release",
            "../evil",
        ]
    )

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert code == 1
    assert len(errors) == 1
    assert "../evil" in errors[0].getMessage()
    assert errors[0].exc_info is None


def test_a_malformed_row_names_the_file_and_line_and_publishes_nothing(
    small_data, tmp_path, caplog
):
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    lines = (data / "u.data").read_text().splitlines(keepends=True)
    lines[4] = "7\t8\tthree\t881250949\n"
    (data / "u.data").write_text("".join(lines))

    code = main(
        ["--models-dir", str(tmp_path / "models"), "--data-dir", str(data)]
    )

    assert code == 1
    [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert f"{data / 'u.data'} line 5" in error.getMessage()
    assert layout.complete_versions(tmp_path / "models") == []


@pytest.mark.parametrize("env", [None, "/srv/models"])
def test_every_entry_point_defaults_to_the_same_models_dir(monkeypatch, env):
    # The trainer once published to ./models while the services read
    # build/models: a run without --models-dir served nothing.
    if env is None:
        monkeypatch.delenv("MODELS_DIR", raising=False)
    else:
        monkeypatch.setenv("MODELS_DIR", env)
    expected = env or "build/models"
    assert trainer_parser().parse_args([]).models_dir == expected
    assert query_parser().parse_args([]).models_dir == expected
    assert candidate_parser().parse_args([]).models_dir == expected
    assert store_parser().parse_args(["list"]).models_dir == expected
