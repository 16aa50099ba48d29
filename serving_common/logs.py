"""Logging set-up, done once by each entry point."""

import logging
import os


def configure(level: str | None = None) -> None:
    """Sends INFO and above (or `level`, or $LOG_LEVEL) to stderr.

    TensorFlow's own C++ logging is separate; TF_CPP_MIN_LOG_LEVEL quiets it.
    """
    logging.basicConfig(
        level=(level or os.environ.get("LOG_LEVEL") or "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
