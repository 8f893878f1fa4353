"""Logging: `text` for people, `json` (one object per line) for log pipelines."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

from lbsync.config.schema import LogConfig

#: The pass and the target a log line belongs to, set by the daemon around its work, so
#: every line of a pass says which one without each call site repeating it.
current_pass: contextvars.ContextVar[int | None] = contextvars.ContextVar("pass", default=None)
current_target: contextvars.ContextVar[str | None] = contextvars.ContextVar("target", default=None)


class ContextFilter(logging.Filter):
    """Copies the current pass and target onto each record (`pass_id`, `target`, `where`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        pass_id = current_pass.get()
        target = current_target.get()
        record.pass_id = pass_id
        record.target = target
        parts = []
        if pass_id is not None:
            parts.append(f"pass={pass_id}")
        if target is not None:
            parts.append(f"target={target}")
        record.where = (" ".join(parts) + " ") if parts else ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("pass_id", "target"):
            value = getattr(record, key, None)
            if value is not None:
                entry["pass" if key == "pass_id" else key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(config: LogConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    if config.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter(
            "%(asctime)s.%(msecs)03dZ %(levelname)s %(where)s%(message)s", "%Y-%m-%dT%H:%M:%S"
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
