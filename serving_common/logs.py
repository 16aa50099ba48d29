"""Logging set-up, done once by each entry point."""

import argparse
import datetime
import json
import logging
import os

LOG_FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger,
    message, and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.datetime.fromtimestamp(
                record.created, tz=datetime.UTC
            ).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str | None = None, log_format: str = "text") -> None:
    """Sends INFO and above (or `level`, or $LOG_LEVEL) to stderr.

    TensorFlow's own C++ logging is separate; TF_CPP_MIN_LOG_LEVEL quiets it.

    Args:
      level: a level name such as "DEBUG"; None for $LOG_LEVEL or INFO.
      log_format: "text" for people, "json" for log collectors.

    Raises:
      ValueError: `log_format` is not one of LOG_FORMATS.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(
            f"log format must be one of {', '.join(LOG_FORMATS)}; got "
            f"{log_format!r}"
        )
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    logging.basicConfig(
        level=(level or os.environ.get("LOG_LEVEL") or "INFO").upper(),
        handlers=[handler],
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds --log-level and --log-format, read back by `configure_from`."""
    parser.add_argument("--log-level", default=None, help="default: INFO")
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="json writes one JSON object per line (default: %(default)s)",
    )


def configure_from(args: argparse.Namespace) -> None:
    """`configure` with the flags `add_arguments` added."""
    configure(args.log_level, args.log_format)
