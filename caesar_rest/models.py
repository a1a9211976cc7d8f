"""ORM models: files, jobs, their inputs and the state history. The database is the one source of truth."""
from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from . import clock

# The states are defined by the state machine (caesar_rest/states.py); re-exported for the modules that read them.
from .states import (  # noqa: F401
    ABORTED,
    ACTIVE_STATES,
    ALL_STATES,
    CANCELED,
    FAILURE,
    PENDING,
    RUNNING,
    STARTED,
    SUCCESS,
    TERMINAL_STATES,
    TIMED_OUT,
    JobState,
)


def utcnow() -> datetime:
    """Naive UTC, on the database server's clock (caesar_rest/clock.py): every host stamps and judges alike."""
    return clock.utcnow()


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class File(Base):
    __tablename__ = "files"

    uuid: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    filename_orig: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text, unique=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    crc64nvme: Mapped[str | None] = mapped_column(String(16), nullable=True)   # base64, as S3 shows it
    tag: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "filename_orig": self.filename_orig,
            "format": self.format,
            "size": self.size_bytes / 1024**2,   # MB, as the original caesar-rest reported it
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "crc64nvme": self.crc64nvme,
            "date": self.created_at.isoformat(),
            "path": self.path,
            "tag": self.tag,
            "owner": self.owner,
        }



class Upload(Base):
    """A resumable (tus 1.0) upload in progress: its bytes so far are in the owner's data directory as
    .tus-<id>.part; once whole it becomes the File of the same uuid (caesar_rest/resumable.py)."""
    __tablename__ = "tus_uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(32))
    tag: Mapped[str | None] = mapped_column(String(255), nullable=True)
    length: Mapped[int] = mapped_column(BigInteger)              # Upload-Length: counted against the quota
    offset: Mapped[int] = mapped_column(BigInteger, default=0)   # bytes received and kept
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


_ACTIVE = "state IN ('PENDING', 'STARTED', 'RUNNING')"


class Job(Base):
    __tablename__ = "jobs"
    # Listings go newest first (submit_date DESC, id DESC), all jobs or one owner's (migration 0003).
    __table_args__ = (Index("ix_jobs_submit_date_id", "submit_date", "id"),
                      Index("ix_jobs_owner_submit_date_id", "owner", "submit_date", "id"),
                      # /accounting and /appstats: covering indexes for their GROUP BYs (migration 0007)
                      Index("ix_jobs_owner_state_app_elapsed", "owner", "state", "app", "elapsed"),
                      Index("ix_jobs_app_state_owner_elapsed", "app", "state", "owner", "elapsed"),
                      # the reaper's reads, oldest first: active jobs only (a partial index, migration 0010)
                      Index("ix_jobs_active_state_submit_date_id", "state", "submit_date", "id",
                            postgresql_where=text(_ACTIVE), sqlite_where=text(_ACTIVE)),
                      # TES ListTasks (kind tes) and OGC GET /jobs (kind app), all or one owner's (migration 0012)
                      Index("ix_jobs_kind_submit_date_id", "kind", "submit_date", "id"),
                      Index("ix_jobs_owner_kind_submit_date_id", "owner", "kind", "submit_date", "id"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16), default="app")       # "app" or "tes"
    app: Mapped[str] = mapped_column(String(128), index=True)
    app_version: Mapped[str] = mapped_column(String(64), default="")
    backend: Mapped[str] = mapped_column(String(64), index=True)
    tag: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    job_inputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    argv: Mapped[list[Any]] = mapped_column(JSON, default=list)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)   # resources, image, env, backend options
    state: Mapped[str] = mapped_column(String(16), index=True, default=PENDING.value)
    status: Mapped[str] = mapped_column(Text, default="")
    exit_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    handle: Mapped[str | None] = mapped_column(Text, nullable=True)    # backend's id for the running job
    workdir: Mapped[str] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    submit_date: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    start_date: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    run_date: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    end_date: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    unreachable_since: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    follower: Mapped[str | None] = mapped_column(String(32), nullable=True)   # the poll chain following it
    republished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)   # the reaper's last republish
    elapsed: Mapped[float | None] = mapped_column(Float, nullable=True)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # TES request and logs, etc.
    # A TES task's name, beside its document (extra["tes"]): ListTasks filters on it in SQL (migration 0004).
    tes_name: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Whether the job has notification subscriptions: returned by each transition's UPDATE, so a job without any
    # costs no query to find none (caesar_rest/notify.py, migration 0006).
    notify: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    events: Mapped[list[JobEvent]] = relationship(back_populates="job", order_by="JobEvent.id",
                                                  cascade="all, delete-orphan")
    inputs: Mapped[list[JobInput]] = relationship(back_populates="job", cascade="all, delete-orphan")

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES


class JobEvent(Base):
    """One row per state transition (and per notable event), with its time."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    job: Mapped[Job] = relationship(back_populates="events")


class JobInput(Base):
    """A registered file a job reads: blocks deleting the file while the job is active."""

    __tablename__ = "job_inputs"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    file_uuid: Mapped[str] = mapped_column(String(32), primary_key=True, index=True)
    option: Mapped[str] = mapped_column(String(128), primary_key=True)
    relpath: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    crc64nvme: Mapped[str | None] = mapped_column(String(16), nullable=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)

    job: Mapped[Job] = relationship(back_populates="inputs")


class TesTag(Base):
    """One tag of a TES task (the document's "tags" object, a row per key): ListTasks' tag_key/tag_value filter
    is an EXISTS on this table, so a listing never reads the task documents (migration 0004)."""

    __tablename__ = "tes_tags"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(Text)
    value: Mapped[str] = mapped_column(Text)


class Mark(Base):
    """A time the service keeps for itself, by name: the reaper's last run that reached the database, and since when
    it has reached it without a gap (it judges staleness only after a grace period of that: migration 0005)."""

    __tablename__ = "marks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime)


class NotifySubscription(Base):
    """A notification target of a job: where to POST, on which events, in which payload format (caesar_rest/notify.py,
    migration 0006)."""

    __tablename__ = "notify_subscriptions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[Any]] = mapped_column(JSON, default=list)
    format: Mapped[str] = mapped_column(String(32), default="caesar")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class NotifyDelivery(Base):
    """One notification to send (the outbox): written by the transition it reports, in its transaction, then sent by
    the control worker until delivered or given up. The id orders a subscription's deliveries (sent one at a time,
    in order)."""

    __tablename__ = "notify_deliveries"
    __table_args__ = (Index("ix_notify_deliveries_due", "state", "next_try"),
                      Index("ix_notify_deliveries_subscription", "subscription_id", "id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subscription_id: Mapped[str] = mapped_column(ForeignKey("notify_subscriptions.id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(16))
    job_state: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default="pending")   # pending, delivered, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    next_try: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    leased_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    done_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class NotifyAttempt(Base):
    """One try at a delivery: when, the receiver's HTTP status or the error, and when the next try is due."""

    __tablename__ = "notify_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("notify_deliveries.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    http_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    next_try: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


def table_of(model: type[Base]) -> Table:
    """A model's Core table (typed: the ORM declares __table__ as a FromClause). Core statements serve the hot
    paths (a job's transitions, its creation), where the ORM's unit of work costs as much as the rest."""
    return cast(Table, model.__table__)


#: The duration histogram's bucket bounds (seconds): job_counts has a column le_<bound> for each (migration 0009).
DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)

#: Jobs counted by (app, backend, state), with the histogram of finished jobs' elapsed times, kept by triggers on
#: jobs (migration 0009, where the why is): the rows of a key add up to its counts. No primary key: on PostgreSQL
#: the triggers append deltas (caesar_rest/metrics.py folds them); SQLite's keep one row per key.
JOB_COUNTS = Table(
    "job_counts", Base.metadata,
    Column("app", String(128), nullable=False), Column("backend", String(64), nullable=False),
    Column("state", String(16), nullable=False), Column("n", BigInteger, nullable=False),
    Column("timed", BigInteger, nullable=False), Column("elapsed_sum", Float, nullable=False),
    *(Column(f"le_{bound}", BigInteger, nullable=False) for bound in DURATION_BUCKETS))

#: Notification deliveries counted by state, kept by triggers on notify_deliveries (migration 0011), as job_counts.
NOTIFY_COUNTS = Table("notify_counts", Base.metadata, Column("state", String(16), nullable=False),
                      Column("n", BigInteger, nullable=False))

JOBS, EVENTS, INPUTS, TES_TAGS = table_of(Job), table_of(JobEvent), table_of(JobInput), table_of(TesTag)
SUBSCRIPTIONS, DELIVERIES = table_of(NotifySubscription), table_of(NotifyDelivery)
ATTEMPTS = table_of(NotifyAttempt)
