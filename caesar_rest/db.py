"""Database engine and sessions (no Flask here: the workers use it too), and Alembic upgrades."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, bindparam, create_engine, event, exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.functions import FunctionElement

from . import clock

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}
_connect_args: dict[str, dict[str, Any]] = {}       # per database URL, from the settings (configure)


def configure(settings: Any) -> None:
    """What the settings say of this process's connections to their database, before the first is made:
    DB_IDLE_IN_TRANSACTION_TIMEOUT on PostgreSQL (a server-side limit: it holds even when the client is frozen)."""
    url = str(settings["DATABASE_URL"])
    idle = float(settings.get("DB_IDLE_IN_TRANSACTION_TIMEOUT") or 0)
    if url.startswith("postgresql") and idle > 0:
        with _lock:
            _connect_args[url] = {"options": f"-c idle_in_transaction_session_timeout={int(idle * 1000)}"}


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the API read while a worker writes; busy_timeout waits instead of failing on a lock.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


#: A pooled connection checked out again within this many seconds of its last use is not pinged first. The
#: ping (SQLAlchemy's pre-ping: BEGIN + SELECT 1) is a round trip per checkout, several per job and about a
#: fifth of a POST /job under load; one idle longer is still pinged, so the connections a database restart or
#: a cut network left dead are replaced without the request seeing it.
PING_IDLE_AFTER = 0.25


def _note_checkin(_dbapi_conn, record) -> None:
    record.info["caesar_checkin"] = time.monotonic()


def _ping_when_idle(engine: Engine):
    def checkout(dbapi_conn, record, _proxy) -> None:
        last = record.info.get("caesar_checkin")
        if last is None or time.monotonic() - last < PING_IDLE_AFTER:
            return                  # a new connection, or one in use a moment ago
        try:
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as err:
            if engine.dialect.is_disconnect(err, dbapi_conn, None):
                # As pre-ping does: replace this connection and every older one in the pool.
                raise exc.InvalidatePoolError() from err
            raise
    return checkout


def engine_for(url: str) -> Engine:
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            if url.startswith("sqlite"):
                path = url.split("///", 1)[-1]
                if path and path != ":memory:":
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
                event.listen(engine, "connect", _sqlite_pragmas)
            else:
                args = {"connect_timeout": 5, **_connect_args.get(url, {})} if url.startswith("postgresql") else {}
                engine = create_engine(url, pool_size=10, max_overflow=20, connect_args=args)
                event.listen(engine, "checkin", _note_checkin)
                event.listen(engine, "checkout", _ping_when_idle(engine))
                if url.startswith("postgresql"):
                    event.listen(engine, "connect", lambda conn, _record: clock.learn(conn))
                    _first_connection(engine)
            _engines[url] = engine
            _factories[url] = sessionmaker(engine, expire_on_commit=False)
        return engine


def _first_connection(engine: Engine) -> None:
    """Open the engine's first connection now, so this process has its clock's offset (clock.learn) before the
    caller stamps a time with it; a database that does not answer is left to the caller's own statement."""
    try:
        with engine.connect():
            pass
    except exc.SQLAlchemyError:
        pass


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    engine_for(url)
    session = _factories[url]()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def read_connection(url: str) -> Iterator[Connection]:
    """A connection for reads outside a transaction (autocommit): a statement is one round trip, with no COMMIT
    after it. For one statement, or reads that need not see one snapshot."""
    with engine_for(url).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        yield conn


def dispose_all() -> None:
    """Drop pooled connections (after fork, or in tests)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _factories.clear()


class json_merge(FunctionElement):  # noqa: N801 (a SQL function: named as it reads in a query)
    """`column` with the top-level keys of `patch` set, computed by the database: a JSON column updated in
    the same UPDATE as the rest of the row, with no SELECT and read-modify-write first. The patch's values
    are scalars or lists (SQLite's json_patch would merge objects recursively and drop nulls)."""
    type = JSON()
    inherit_cache = True
    name = "json_merge"

    def __init__(self, column: Any, patch: dict[str, Any]) -> None:
        super().__init__(column, bindparam(None, patch, type_=JSON))


@compiles(json_merge, "postgresql")
def _json_merge_pg(element: json_merge, compiler, **kw) -> str:
    column, patch = (compiler.process(c, **kw) for c in element.clauses)
    return f"CAST(COALESCE(CAST({column} AS jsonb), '{{}}'::jsonb) || CAST({patch} AS jsonb) AS json)"


@compiles(json_merge)
def _json_merge_sqlite(element: json_merge, compiler, **kw) -> str:
    # json_patch (RFC 7396) is SQLite's merge; the patches here never hold null values (which would delete).
    column, patch = (compiler.process(c, **kw) for c in element.clauses)
    return f"json_patch(COALESCE({column}, '{{}}'), {patch})"


def upgrade(url: str) -> None:
    """Bring the schema to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    with engine_for(url).begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
