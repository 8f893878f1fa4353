"""Logging: `text` for people, `json` (one object per line) for log pipelines."""

from __future__ import annotations

import json
import logging
import sys
import time

from lbsync.config import LogConfig


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(config: LogConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter(
            "%(asctime)s.%(msecs)03dZ %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"
        )
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    ours = logging.getLogger("lbsync")
    ours.handlers[:] = [handler]
    ours.setLevel(config.level.upper())
    ours.propagate = False
    # Everything else that logs (aiohttp, asyncio's "exception never retrieved", Python
    # warnings) goes through the same handler, so with `format: json` every stderr line is
    # one JSON object, never a bare traceback. Other libraries stay at WARNING.
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.WARNING, ours.level))
    logging.captureWarnings(True)
