"""caesar_rest.paging: keyset page tokens. A token round-trips, a forged one is a 400 naming page_token, and pages
walked with tokens cover every job once, newest first, even with equal submit dates and jobs added meanwhile
(an in-memory SQLite database with the models' tables: no migration, no file)."""
from __future__ import annotations

import base64
import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from caesar_rest.errors import BadRequest
from caesar_rest.models import Base, Job
from caesar_rest.paging import after_token, decode_token, encode_token

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901)      # noqa: DTZ001 (the columns hold naive UTC, as models.utcnow)


def job(when: datetime, job_id: str | None = None) -> Job:
    return Job(id=job_id or str(uuid.uuid4()), owner="u", app="a", backend="local", workdir="/w", submit_date=when)


def test_a_token_gives_back_the_job_it_ends_at():
    j = job(T0, "69ca62d7-5098-4fe7-a675-63895a2d06b1")
    token = encode_token(j)
    assert "=" not in token and decode_token(token) == (T0, j.id)


@pytest.mark.parametrize("token", ["", "!!!", "bm90IGpzb24", base64.urlsafe_b64encode(b'["x", "y"]').decode(),
                                   base64.urlsafe_b64encode(b'[1, 2, 3]').decode(),
                                   base64.urlsafe_b64encode(b'{"a": 1}').decode(),
                                   base64.urlsafe_b64encode(b"\xff\xfe").decode()])
def test_a_token_the_server_never_gave_is_a_400_naming_it(token):
    with pytest.raises(BadRequest) as caught:
        decode_token(token, key="field")
    assert "page_token" in caught.value.message and caught.value.details == {"field": "page_token"}


@pytest.fixture
def session():
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        yield s
    engine.dispose()


def pages(session: Session, size: int) -> list[list[str]]:
    out: list[list[str]] = []
    token = None
    while True:
        rows = session.scalars(after_token(select(Job), token).limit(size)).all()
        if not rows:
            return out
        out.append([r.id for r in rows])
        token = encode_token(rows[-1])


def test_pages_cover_every_job_once_newest_first_with_ties_broken_by_id(session):
    # Three jobs share each submit date: only the (date, id) pair orders them.
    jobs = [job(T0 + timedelta(seconds=i // 3)) for i in range(11)]
    session.add_all(jobs)
    session.commit()
    wanted = [j.id for j in sorted(jobs, key=lambda j: (j.submit_date, j.id), reverse=True)]
    for size in (1, 2, 3, 4, 11, 50):
        walked = pages(session, size)
        assert [i for page in walked for i in page] == wanted, size
        assert all(len(page) == size for page in walked[:-1])


def test_a_job_submitted_between_two_pages_shifts_nothing(session):
    session.add_all([job(T0 + timedelta(seconds=i)) for i in range(6)])
    session.commit()
    first = session.scalars(after_token(select(Job), None).limit(3)).all()
    session.add(job(T0 + timedelta(hours=1)))          # newer than all: belongs before page one
    session.commit()
    second = session.scalars(after_token(select(Job), encode_token(first[-1])).limit(3)).all()
    assert not {j.id for j in first} & {j.id for j in second}
    assert [j.submit_date for j in second] == [T0 + timedelta(seconds=i) for i in (2, 1, 0)]
