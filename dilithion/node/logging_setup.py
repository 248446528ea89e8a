"""The node program's log sinks: C++-style text lines, or one JSON object per line.

Text (the default) is what operators grep today: ``<date> <time> <message>`` for
INFO, ``<date> <time> <LEVEL>: <message>`` otherwise, in the C++ wording.  JSON
(``--log-format=json`` or ``DIL_LOG_FORMAT=json``) is for log stores: every
line is one object with the stable fields of :data:`JSON_FIELDS`, plus the
structured fields of :data:`STRUCTURED_FIELDS` when the line has them.  The
code that logs attaches those with ``logger.bind(block_hash=..., height=...,
peer=..., peer_addr=...)``; the text format never shows them, so the text
lines stay byte-for-byte what they were.

Both formats use the same two sinks: stdout below ERROR, stderr for ERROR and
above.  In JSON mode the standard library's ``logging`` (waitress) and Python
warnings are routed into loguru too, so no plain-text line slips into a stream
a log shipper parses as JSON.  ``docs/OPERATIONS.md`` documents the fields.

Both sinks share one :class:`~dilithion.node.log_rate_limit.LogRateLimiter`
(on by default; ``--nologratelimit`` or ``DIL_LOG_RATELIMIT=0`` turns it off
for debugging): a peer cannot fill the disk through the log.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import traceback
from datetime import timezone

from loguru import logger

from dilithion.node.log_rate_limit import LogRateLimiter

__all__ = ["LOG_FORMATS", "JSON_FIELDS", "STRUCTURED_FIELDS", "P2P_LOG_MODULES",
           "LogSetupError", "configure_logging", "text_format", "json_format", "json_record",
           "component_of", "RateLimitedSink", "rate_limit_from_env"]

LOG_FORMATS = ("text", "json")
#: Present in every JSON line, in this order.
JSON_FIELDS = ("time", "level", "thread", "component", "message")
#: Present in a JSON line when the code that logged it bound them (``logger.bind``).
STRUCTURED_FIELDS = ("block_hash", "height", "peer", "peer_addr")

#: Modules whose DEBUG records are the per-message P2P lines (the transport emits
#: them only when ``DIL_P2P_LOG=1``; ``logger.bind(p2p=True)`` marks others).
P2P_LOG_MODULES = ("dilithion.net.net_transport", "dilithion.net.net_receive",
                   "dilithion.net.net_send", "dilithion.net.net_processing",
                   "dilithion.net.socket")

_PACKAGE_PREFIX = "dilithion."
#: Extra key naming the standard-library logger of an intercepted record (its component).
_STDLIB_NAME = "stdlib_logger"


class LogSetupError(ValueError):
    """An unusable log level or format; ``str()`` is the one error line."""


def component_of(module: str | None) -> str:
    """``dilithion.net.async_broadcaster`` -> ``net.async_broadcaster``; others unchanged."""
    if not module:
        return "unknown"
    return module[len(_PACKAGE_PREFIX):] if module.startswith(_PACKAGE_PREFIX) else module


def json_record(record) -> dict:
    """The JSON object of one loguru record (see the module docstring for the fields)."""
    when, extra = record["time"].astimezone(timezone.utc), record["extra"]
    out = {"time": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
           "level": record["level"].name,
           "thread": record["thread"].name,
           "component": extra.get(_STDLIB_NAME) or component_of(record["name"]),
           "message": record["message"]}
    for name in STRUCTURED_FIELDS:
        if extra.get(name) is not None:
            out[name] = extra[name]
    if record["exception"] is not None:
        kind, value, tb = record["exception"]
        out["exception"] = "".join(traceback.format_exception(kind, value, tb)).rstrip("\n")
    return out


def json_format(record) -> str:
    """loguru format function: the record as one JSON line (no colour, no exception lines)."""
    record["extra"]["_json_line"] = json.dumps(json_record(record), ensure_ascii=False,
                                               default=str)
    return "{extra[_json_line]}\n"


def text_format(record) -> str:
    """loguru format function: the C++-style text line."""
    if record["level"].no == logger.level("INFO").no:
        return "{time:YYYY-MM-DD HH:mm:ss.SSS} {message}\n{exception}"
    return "{time:YYYY-MM-DD HH:mm:ss.SSS} {level}: {message}\n{exception}"


def note_line(log_format: str, record, text: str) -> str:
    """A WARNING line of the limiter itself, in the sink's format, stamped like ``record``."""
    when = record["time"]
    if log_format == "json":
        utc = when.astimezone(timezone.utc)
        return json.dumps({"time": utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z",
                           "level": "WARNING", "thread": record["thread"].name,
                           "component": component_of(LogRateLimiter.__module__),
                           "message": text}, ensure_ascii=False) + "\n"
    return f"{when.strftime('%Y-%m-%d %H:%M:%S.')}{when.microsecond // 1000:03d} WARNING: {text}\n"


class RateLimitedSink:
    """A loguru sink that writes each formatted line ``limiter`` admits to ``write``
    (a stream's ``write`` or any callable), preceded by the limiter's notes.

    One limiter serves all the sinks of one node; the sink holds no state.
    """

    def __init__(self, write, limiter: LogRateLimiter, log_format: str = "text",
                 flush=None) -> None:
        self._write, self._flush = write, flush
        self.limiter = limiter
        self.log_format = log_format

    def __call__(self, message) -> None:
        record = message.record
        verdict = self.limiter.admit(record, len(message.encode("utf-8", "replace")))
        for text in verdict.notes:
            self._write(note_line(self.log_format, record, text))
        if verdict.write:
            self._write(str(message))
        if self._flush is not None:
            self._flush()


def rate_limit_from_env() -> bool:
    """``DIL_LOG_RATELIMIT=0`` turns the log rate limit off (debugging); on otherwise."""
    return os.environ.get("DIL_LOG_RATELIMIT", "1") != "0"


class _InterceptHandler(logging.Handler):
    """Standard-library records into loguru (the recipe of loguru's documentation);
    the component is the standard-library logger's name (``waitress.queue``)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        frame, depth = inspect.currentframe(), 0
        while frame is not None and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame = frame.f_back
            depth += 1
        logger.bind(**{_STDLIB_NAME: record.name}).opt(
            depth=depth, exception=record.exc_info).log(level, record.getMessage())


def configure_logging(level: str | None = None, p2p_log: bool | None = None,
                      log_format: str = "text",
                      rate_limit: bool | None = None) -> LogRateLimiter | None:
    """One stdout sink (below ERROR) and one stderr sink (ERROR and above).

    ``rate_limit`` (None: :func:`rate_limit_from_env`) puts both behind one
    :class:`LogRateLimiter`, which is returned (None when off) for the metrics.

    ``DIL_P2P_LOG=1`` lets the transport's per-message DEBUG records through even
    when the level is INFO (the transport writes them only with that variable).
    Raises :class:`LogSetupError` for an unknown level or format.
    """
    level = (level or os.environ.get("DIL_LOG_LEVEL") or "INFO").upper()
    if p2p_log is None:
        p2p_log = os.environ.get("DIL_P2P_LOG") == "1"
    try:
        threshold = logger.level(level).no
    except ValueError:
        raise LogSetupError(f"Error: Invalid log level: {level}") from None
    if log_format not in LOG_FORMATS:
        raise LogSetupError(f"Error: Invalid log format: {log_format} "
                            f"(must be {' or '.join(LOG_FORMATS)})")
    debug_no = logger.level("DEBUG").no
    error_no = logger.level("ERROR").no

    def wanted(record) -> bool:
        no = record["level"].no
        if p2p_log and _is_p2p_record(record):
            return no >= debug_no
        return no >= threshold

    fmt = json_format if log_format == "json" else text_format
    if rate_limit is None:
        rate_limit = rate_limit_from_env()
    limiter = LogRateLimiter() if rate_limit else None

    def sink(stream):
        if limiter is None:
            return stream
        return RateLimitedSink(stream.write, limiter, log_format, flush=stream.flush)

    logger.remove()
    logger.add(sink(sys.stdout), level=0, format=fmt, colorize=False,
               filter=lambda r: r["level"].no < error_no and wanted(r))
    logger.add(sink(sys.stderr), level=0, format=fmt, colorize=False,
               filter=lambda r: r["level"].no >= error_no and wanted(r))
    if log_format == "json":
        logging.basicConfig(handlers=[_InterceptHandler()], level=0, force=True)
        logging.captureWarnings(True)
    return limiter


def _is_p2p_record(record) -> bool:
    return bool(record["extra"].get("p2p")) or record["name"] in P2P_LOG_MODULES
