"""The clock every timestamp of the service is written and judged with: this host's, set right by its offset to the
database server's clock. With several hosts, a worker writes its jobs' heartbeats and a reaper on another host
judges them; the API stamps submissions and upload expiries that a reaper reads. Each host's own clock would make a
skew between hosts look like silence (a reaper ahead, or a worker behind, by more than STALE_AFTER declares healthy
jobs lost) or hide a real one. The database is the one peer every host reaches, so its clock is the reference: each
new PostgreSQL connection measures this host's offset to it (a SELECT of clock_timestamp(), halfway through the
round trip), and models.utcnow() adds it. SQLite is on this host: no offset. A change under MIN_STEP is left alone,
so the clock does not jitter between connections. Local time stays what file times are compared with."""
from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)
MIN_STEP = 0.05          # seconds: smaller moves of the measured offset are round-trip noise
WARN_AFTER = 1.0         # seconds of skew that are logged (once per change)

_offset = 0.0
_lock = threading.Lock()


def offset() -> float:
    """Seconds to add to this host's clock to read the database's."""
    return _offset


def utcnow() -> datetime:
    return datetime.fromtimestamp(time.time() + _offset, UTC).replace(tzinfo=None)


def learn(dbapi_connection: Any) -> None:
    """Measure the offset on a new PostgreSQL connection (SQLAlchemy's connect event); the connection is left with
    no transaction open. A failure leaves the offset as it was."""
    global _offset
    try:
        cursor = dbapi_connection.cursor()
        t0 = time.time()
        cursor.execute("SELECT extract(epoch FROM clock_timestamp())")
        t1 = time.time()
        server = float(cursor.fetchone()[0])
        cursor.close()
        dbapi_connection.rollback()
    except Exception as exc:                     # the connection's own use will say what is wrong
        log.debug("clock offset not measured: %s", exc)
        return
    measured = server - (t0 + t1) / 2
    with _lock:
        if abs(measured - _offset) < MIN_STEP:
            return
        _offset = measured
    if abs(measured) >= WARN_AFTER:
        log.warning("this host's clock is %.1f s %s the database server's; the service's timestamps follow the "
                    "database's", abs(measured), "behind" if measured > 0 else "ahead of")
