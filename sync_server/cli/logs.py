"""How the ``vatra`` command logs: lines for a person, or one JSON object per line.

``VATRA_LOG_FORMAT=json`` makes every record one JSON object: ``time`` (UTC, ISO 8601),
``level``, ``logger``, ``message``, and the fields the code attaches (``code``,
``device_id``, ``household_id``, ``seconds``, ``bytes_in``…). A session's opening and
closing, every refusal and every error are logged this way. Records carry ids and
codes, never a household's content: a refusal names the rule and the paths, not the
values (docs/security.md).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime

#: The attributes every LogRecord has; the others were attached by the code (``extra``).
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(),
               "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(level: int) -> None:
    """Log at ``level`` to stderr, as ``VATRA_LOG_FORMAT`` says (``text`` or ``json``)."""
    if os.environ.get("VATRA_LOG_FORMAT", "text").lower() == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=level, handlers=[handler])
    else:
        logging.basicConfig(level=level,
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")
