"""Runs the real `tensorflow_model_server` when it is installed."""

import shutil
from pathlib import Path

from model_store import contract, layout

BINARY = "tensorflow_model_server"


def find_binary() -> str | None:
    """The path of `tensorflow_model_server` on PATH, or None."""
    return shutil.which(BINARY)


def model_config(models_dir: Path, keep_versions: int) -> str:
    """A model config file (text proto) serving the query tower.

    Keeping the latest `keep_versions` loaded lets a candidate service still
    pinned to the previous version finish its requests during a swap.
    """
    base_path = (Path(models_dir) / layout.QUERY).resolve()
    return (
        "model_config_list {\n"
        "  config {\n"
        f'    name: "{contract.QUERY_MODEL_NAME}"\n'
        f'    base_path: "{base_path}"\n'
        '    model_platform: "tensorflow"\n'
        "    model_version_policy {\n"
        f"      latest {{ num_versions: {keep_versions} }}\n"
        "    }\n"
        "  }\n"
        "}\n"
    )


def command(
    binary: str, port: int, config_path: Path, poll_s: float
) -> list[str]:
    """The command line that serves the config on `port` over gRPC."""
    return [
        binary,
        f"--port={port}",
        f"--model_config_file={config_path}",
        f"--file_system_poll_wait_seconds={max(1, round(poll_s))}",
    ]
