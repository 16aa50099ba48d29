"""Log set-up: JSON lines when asked for, the plain format otherwise."""

import json
import logging
import subprocess
import sys

import pytest

from serving_common import logs


def _record(message: str, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord(
        "candidate_service.server",
        logging.INFO,
        __file__,
        1,
        message,
        args,
        exc_info,
    )


def test_json_line_holds_the_formatted_message_and_its_origin():
    record = _record("serving version %d: %d candidates", 3, 1682)

    entry = json.loads(logs.JsonFormatter().format(record))

    assert entry["message"] == "serving version 3: 1682 candidates"
    assert entry["level"] == "INFO"
    assert entry["logger"] == "candidate_service.server"
    assert entry["time"].endswith("+00:00")
    assert "exception" not in entry


def test_json_line_carries_the_traceback_on_one_line():
    try:
        raise RuntimeError("broken index")
    except RuntimeError:
        record = _record("load failed", exc_info=sys.exc_info())

    line = logs.JsonFormatter().format(record)

    assert "\n" not in line
    assert "RuntimeError: broken index" in json.loads(line)["exception"]


def test_non_ascii_stays_readable():
    line = logs.JsonFormatter().format(_record("loaded %s", "Café Society"))
    assert "Café Society" in line


@pytest.mark.parametrize(
    ("log_format", "parse"),
    [
        ("json", lambda line: json.loads(line)["message"]),
        ("text", lambda line: line.split(": ", 1)[1]),
    ],
)
def test_entry_point_configuration_writes_one_line_per_event(log_format, parse):
    # A fresh interpreter: logging is configured once per process.
    code = (
        "import logging; from serving_common import logs; "
        f"logs.configure(None, {log_format!r}); "
        "log = logging.getLogger('probe'); "
        "log.info('listening on port %d', 50051); "
        "log.debug('per-request detail')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )

    lines = result.stderr.splitlines()
    assert [parse(line) for line in lines] == ["listening on port 50051"]


def test_unknown_format_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="text, json"):
        logs.configure(None, "xml")
