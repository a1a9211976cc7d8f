"""An engine job as OGC API - Processes shows it: its statusInfo, its results document, and the SQL of the job list's
filters. Only app jobs are OGC jobs (type "process"); TES tasks are left out of /ogcapi/jobs (the 1.0 schema knows
no other type), and served by their own API."""
from __future__ import annotations

import base64
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Row, Select, and_, false, or_

from ..errors import BadRequest
from ..models import Job, utcnow
from ..states import ABORTED, CANCELED, FAILURE, PENDING, RUNNING, STARTED, SUCCESS, TIMED_OUT
from .processes import ARCHIVE, Output, is_text

API_V1 = "/caesar/api/v1.0"
#: OGC status -> the engine states it covers (a dismissed job is CANCELED, or a finished job dismissed through OGC).
STATES: dict[str, tuple[str, ...]] = {
    "accepted": (PENDING.value,), "running": (STARTED.value, RUNNING.value), "successful": (SUCCESS.value,),
    "failed": (FAILURE.value, TIMED_OUT.value, ABORTED.value), "dismissed": (CANCELED.value,)}
_OF_STATE = {state: code for code, states in STATES.items() for state in states}
#: A job as a statusInfo is made from: the ORM instance, or a row of the columns it shows (the job list, the status).
Shown = Job | Row[Any]


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat() + "Z"


def dismissed_expr():
    """SQL: the job was dismissed through OGC after it had ended (extra.ogc_dismissed set)."""
    return Job.extra["ogc_dismissed"].as_string().is_not(None)


def status_of(job: Shown) -> str:
    # A row of the job list or status has extra's ogc_dismissed alone (api/ogc_jobs.SHOWN), an instance all of extra.
    if job.ogc_dismissed if isinstance(job, Row) else (job.extra or {}).get("ogc_dismissed"):
        return "dismissed"
    return _OF_STATE[job.state]


def status_info(job: Shown, base: str, root: str) -> dict[str, Any]:
    """root: the service's root URL (for the caesar-rest logs and metadata links)."""
    status = status_of(job)
    href = f"{base}/jobs/{job.id}"
    times = [t for t in (job.submit_date, job.start_date, job.run_date, job.end_date) if t is not None]
    message = job.status or job.state
    if status == "dismissed" and job.state != CANCELED.value:
        message = f"Dismissed after it had ended {job.state}: {message}"
    info: dict[str, Any] = {"processID": job.app, "type": "process", "jobID": job.id, "status": status,
                            "message": message, "created": iso(job.submit_date)}
    if job.start_date is not None:
        info["started"] = iso(job.run_date or job.start_date)
    if job.end_date is not None:
        info["finished"] = iso(job.end_date)
    info["updated"] = iso(max(times))
    if status == "successful":
        info["progress"] = 100
    elif status == "accepted":
        info["progress"] = 0
    links = [{"href": href, "rel": "self", "type": "application/json", "title": "job status"},
             {"href": f"{href}?f=html", "rel": "alternate", "type": "text/html", "title": "job status as HTML"},
             {"href": f"{base}/processes/{job.app}", "rel": "up", "type": "application/json", "title": "the process"}]
    if status in ("successful", "failed"):
        links.append({"href": f"{href}/results", "rel": "http://www.opengis.net/def/rel/ogc/1.0/results",
                      "type": "application/json", "title": "job results"})
    links += [{"href": f"{root}{API_V1}/job/{job.id}/logs", "rel": "related", "type": "application/json",
               "title": "stdout and stderr (caesar-rest logs)"},
              {"href": f"{root}{API_V1}/job/{job.id}/metadata", "rel": "describedby", "type": "application/json",
               "title": "provenance (caesar-rest metadata)"}]
    info["links"] = links
    return info


def requested(job: Job, known: Mapping[str, Output]) -> tuple[dict[str, str], str]:
    """(output id -> transmission mode, response mode) the job was executed with; an app job submitted through
    caesar-rest's own API gets every output (archive by reference) as a document."""
    ogc = (job.extra or {}).get("ogc") or {}
    chosen = ogc.get("outputs") or {ident: ("reference" if ident == ARCHIVE else "value") for ident in known}
    return {k: v for k, v in chosen.items() if k in known}, ogc.get("response", "document")


@dataclass(frozen=True)
class JobFile:
    """A file at the top of a job's directory: on the local disk (path), or in S3 once the directory moved there
    (url, read through the store)."""

    name: str
    size: int
    path: Path | None = None
    url: str | None = None

    def chunks(self, store: Any = None) -> Iterator[bytes]:
        if self.path is not None:
            with open(self.path, "rb") as fh:
                while block := fh.read(1024 * 1024):
                    yield block
        else:
            yield from store.open_stream(self.url)[0]


def job_files(job: Job, store: Any = None) -> list[JobFile]:
    """The files at the top of the job's directory, by name. A directory archived to S3 (extra.output_store) is
    listed from the bucket when a store is given (the API); without one (a worker rendering a callback at the
    end, when the directory is still on its disk) from the disk."""
    archived = (job.extra or {}).get("output_store")
    if archived and store is not None:
        from ..s3store import job_objects, split_url

        bucket, folder = split_url(archived)
        return sorted((JobFile(obj["Key"][len(folder):], int(obj["Size"]), url=f"s3://{bucket}/{obj['Key']}")
                       for obj in job_objects(store, archived) if "/" not in obj["Key"][len(folder):]),
                      key=lambda f: f.name)
    workdir = Path(job.workdir)
    if not workdir.is_dir():
        return []
    return [JobFile(p.name, p.stat().st_size, path=p) for p in sorted(workdir.iterdir()) if p.is_file()]


def file_of(out: Output, files: list[JobFile]) -> JobFile | None:
    """The file an output names (the first match of its glob), if the job wrote one."""
    return next((f for f in files if out.matches(f.name)), None)


def result_value(out: Output, job: Job, mode: str, base: str, cap: int, files: list[JobFile],
                 store: Any = None) -> dict[str, Any] | None:
    """One output of a successful job as inline data or a link; None when the job wrote no such file. A value
    larger than cap is given by reference."""
    href = f"{base}/jobs/{job.id}/results/{out.id}"
    link = {"href": href, "type": out.media_type, "rel": "related", "title": out.id}
    if out.glob is None:
        return link if mode == "reference" else _archive_value(job, cap) or link
    found = file_of(out, files)
    if found is None:
        return None
    if mode == "reference" or found.size > cap:
        return link
    data = b"".join(found.chunks(store))
    if is_text(out.media_type):
        try:
            return {"value": data.decode("utf-8"), "mediaType": out.media_type}
        except UnicodeDecodeError:
            pass
    return {"value": base64.b64encode(data).decode(), "mediaType": out.media_type, "encoding": "base64"}


def _archive_value(job: Job, cap: int) -> dict[str, Any] | None:
    """The job's tar.gz inline, when it fits cap (built as the download builds it); None otherwise."""
    from ..tarball import stream_tar_gz

    workdir = Path(job.workdir)
    if not workdir.is_dir():
        return None
    data = bytearray()
    for chunk in stream_tar_gz(workdir, f"job_{job.id}", exclude=("inputs",)):
        data += chunk
        if len(data) > cap:
            return None
    return {"value": base64.b64encode(bytes(data)).decode(), "mediaType": "application/gzip", "encoding": "base64"}


# ---- the job list's filters ----------------------------------------------------------------------------------------
def _many(args: Any, name: str) -> list[str]:
    values: list[str] = []
    for raw in args.getlist(name):
        values += [v.strip() for v in raw.split(",") if v.strip()]
    return values


_YEAR = "(?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])"
_MONTH_DAY = ("(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
              "|02-(?:0[1-9]|1[0-9]|2[0-8]))")
_LEAP_DAY = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)-02-29"
#: An RFC 3339 date-time (a real day of the Gregorian calendar, years 1-9999, a zone or Z), as a regex without
#: lookahead: the document's pattern and the check here are this one.
DATE_TIME = (f"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_DAY})[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:[.][0-9]+)?"
             "(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])")
#: datetime: one instant, or an interval whose open ends are '..' or empty.
DATETIME_PARAM = f"^(?:{DATE_TIME}|(?:{DATE_TIME}|[.][.])?/(?:{DATE_TIME}|[.][.])?)$"
_DATETIME_RE = re.compile(DATETIME_PARAM)
#: minDuration/maxDuration: whole seconds, up to 68 years.
DURATION_MAX = 2**31 - 1


def _parse_time(text: str) -> datetime:
    """An RFC 3339 date-time (matched by DATE_TIME) in UTC without a zone, as the database keeps it; one beyond
    the calendar's ends once in UTC (0001-01-01T00:00:00+01:00) is its end."""
    date, _, rest = text.upper().partition("T")
    zone_at = len(rest) - 1 if rest.endswith("Z") else len(rest) - 6
    clock, zone = rest[:zone_at], rest[zone_at:]
    whole, _, fraction = clock.partition(".")
    value = datetime.fromisoformat(f"{date}T{whole}.{(fraction + '000000')[:6]}")
    offset = timedelta(0) if zone == "Z" else (1 if zone[0] == "+" else -1) * timedelta(
        hours=int(zone[1:3]), minutes=int(zone[4:6]))
    try:
        return value - offset
    except OverflowError:
        # naive: the database keeps UTC without a zone
        return datetime.min if offset > timedelta(0) else datetime.max  # noqa: DTZ901


def _seconds(args: Any, name: str, pick: Any) -> int | None:
    """The values of minDuration or maxDuration (each whole seconds, 0..DURATION_MAX): all of them must hold, so
    the largest minimum or the smallest maximum (pick)."""
    values = _many(args, name)
    if not values:
        return None
    for value in values:
        if not (value.isdigit() and value.isascii()) or int(value) > DURATION_MAX:
            raise BadRequest(f"'{name}' is whole seconds, 0 to {DURATION_MAX}, not {value!r}", parameter=name)
    return int(pick(int(v) for v in values))


def filtered(query: Select, args: Any) -> Select:
    """query with the job list's filters: type, processID, status, datetime (on creation), min/maxDuration
    (seconds of running: to the end, or to now while it runs; 0 before it runs)."""
    types = _many(args, "type")
    if any(t != "process" for t in types):
        raise BadRequest("'type' can only be process here (TES tasks are not OGC jobs)", parameter="type")
    processes = _many(args, "processID")
    if processes:
        query = query.where(Job.app.in_(processes))
    codes = _many(args, "status")
    if codes:
        bad = [c for c in codes if c not in STATES]
        if bad:
            raise BadRequest(f"Unknown status {bad[0]!r}; statuses are {', '.join(STATES)}", parameter="status")
        dismissed = dismissed_expr()
        clauses = [and_(Job.state.in_(STATES[c]), ~dismissed) if c != "dismissed"
                   else or_(Job.state.in_(STATES[c]), dismissed) for c in codes]
        query = query.where(or_(*clauses))
    when = args.get("datetime")
    if when is not None:
        if not _DATETIME_RE.fullmatch(when):
            raise BadRequest(f"'datetime': {when!r} is not an RFC 3339 date-time or an interval of them (open ends "
                             "'..')", parameter="datetime")
        if "/" in when:
            start, _, end = when.partition("/")
            if start not in ("", ".."):
                query = query.where(Job.submit_date >= _parse_time(start))
            if end not in ("", ".."):
                query = query.where(Job.submit_date <= _parse_time(end))
        else:
            query = query.where(Job.submit_date == _parse_time(when))
    now = utcnow()
    low, high = _seconds(args, "minDuration", max), _seconds(args, "maxDuration", min)
    if low is not None and low > 0:
        query = query.where(or_(and_(Job.end_date.is_not(None), Job.elapsed >= low),
                                and_(Job.end_date.is_(None), Job.run_date.is_not(None),
                                     Job.run_date <= now - timedelta(seconds=low))))
    if high is not None:
        query = query.where(or_(and_(Job.end_date.is_not(None), or_(Job.elapsed.is_(None), Job.elapsed <= high)),
                                and_(Job.end_date.is_(None), or_(Job.run_date.is_(None),
                                                                 Job.run_date >= now - timedelta(seconds=high)))))
    if low is not None and high is not None and low > high:
        query = query.where(false())
    return query
