"""Structured logs: one JSON object a line (time, level, logger, message and the record's ``fields``). Callers
pass only what may be read by anyone who reads logs: never tokens, keys, images or person ids."""
from __future__ import annotations

import json
import logging
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
               "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        out.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def log_config(level: str = "INFO") -> dict:
    """logging.dictConfig for the server process: every logger (ours, uvicorn's) as JSON lines on stderr; the
    access log is off (our request log replaces it: it would print whole paths, which hold person ids)."""
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {"uvicorn": {"handlers": [], "propagate": True, "level": level},
                    "uvicorn.error": {"handlers": [], "propagate": True, "level": level},
                    "uvicorn.access": {"handlers": [], "propagate": False, "level": "WARNING"}},
    }
