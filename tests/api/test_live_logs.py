"""Live logs across hosts (STORAGE s3), against moto's S3 server: a worker's relay copies a running job's log tails
to S3 only when they changed, bounded in size, and removes them when told; the API reads them when the job's
directory is not on its disk, and its own disk or the archive otherwise. tests/test_multihost.py drives the same
through real hosts (a job running on host 2 or 3, its logs read on host 1)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from caesar_rest import joblogs, s3store
from caesar_rest.config import load_settings
from workers.live_logs import LogRelay

from ..backends.batch_fixtures import aws, s3_settings


@pytest.fixture
def cfg(tmp_path, aws_setup):
    return load_settings(s3_settings(tmp_path, aws_setup, LIVE_LOG_INTERVAL=0.05), environ={})


def job_like(workdir: Path, state: str = "RUNNING", extra: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(id=str(uuid.uuid4()), owner="alice", workdir=str(workdir), state=state, extra=extra)


def objects(cfg, job) -> dict[str, bytes]:
    store = s3store.store_for(cfg)
    bucket, prefix = s3store.split_url(joblogs.live_url(store, job.owner, job.id))
    s3 = aws("s3", cfg["S3_ENDPOINT_URL"])
    found = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix):]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in found}


def test_the_relay_sends_what_changed_and_the_api_reads_it_when_the_directory_is_elsewhere(cfg, tmp_path):
    on_worker = tmp_path / "worker" / "job"
    on_worker.mkdir(parents=True)
    job = job_like(tmp_path / "api" / "job")            # the API host's view: the path holds nothing
    relay = LogRelay(cfg, job.id, job.owner, on_worker)
    assert relay.push() == 0 and objects(cfg, job) == {}         # no log yet: nothing sent
    (on_worker / "stdout.log").write_text("step 1\n")
    assert relay.push() == 1 and relay.push() == 0               # unchanged: not sent again
    assert joblogs.read(cfg, job, None) == {"stdout": "step 1\n", "stderr": ""}
    with open(on_worker / "stdout.log", "a") as fh:
        fh.write("step 2\n")
    (on_worker / "stderr.log").write_text("warning\n")
    assert relay.push() == 2
    assert joblogs.read(cfg, job, 1) == {"stdout": "step 2", "stderr": "warning"}
    # A log past the cap: only its tail goes (what an answer carries anyway).
    big = os.urandom(joblogs.MAX_BYTES // 2).hex().encode()      # 1 MiB of hex, then a last line
    (on_worker / "stdout.log").write_bytes(big + b"\nlast line\n")
    relay.push()
    sent = objects(cfg, job)["stdout.log"]
    assert len(sent) == joblogs.MAX_BYTES and sent.endswith(b"\nlast line\n")
    relay.remove()
    assert objects(cfg, job) == {}


def test_the_relay_thread_follows_a_growing_log_and_sends_the_last_of_it_on_stop(cfg, tmp_path):
    job = job_like(tmp_path / "elsewhere")
    relay = LogRelay(cfg, job.id, job.owner, tmp_path).start()
    from ..support import wait_until
    try:
        (tmp_path / "stdout.log").write_text("started\n")
        wait_until(lambda: objects(cfg, job).get("stdout.log") == b"started\n", 10, "the first line relayed")
    finally:
        with open(tmp_path / "stdout.log", "a") as fh:
            fh.write("ended\n")
        relay.stop()
    assert objects(cfg, job)["stdout.log"] == b"started\nended\n"
    relay.stop()                    # again: nothing more
    relay.remove()
    assert objects(cfg, job) == {}
    # The end that archives the directory stops the relay with no last copy: a job shorter than the interval
    # costs no S3 call for its live logs, not even the removal.
    quick = job_like(tmp_path / "elsewhere-too")
    short = LogRelay(cfg, quick.id, quick.owner, tmp_path).start()
    short.stop(last_copy=False)
    assert short.sent == 0 and objects(cfg, quick) == {}
    short.remove()


def test_the_api_prefers_its_own_disk_and_the_archive(cfg, tmp_path):
    here = tmp_path / "job"
    here.mkdir()
    (here / "stdout.log").write_text("local\n")
    job = job_like(here)
    relay = LogRelay(cfg, job.id, job.owner, here)
    relay.push()
    (here / "stdout.log").write_text("local, newer\n")
    assert joblogs.read(cfg, job, None)["stdout"] == "local, newer\n"      # the directory is here: read it
    # Ended and archived: the archive's copy counts, whatever is on disk or relayed.
    store = s3store.store_for(cfg)
    archive = f"s3://{store.bucket}/{store.prefix}jobs/alice/{job.id}/"
    s3store.put_job_file(store, archive, "stdout.log", b"archived\n")
    ended = SimpleNamespace(**{**vars(job), "state": "SUCCESS", "extra": {"output_store": archive}})
    assert joblogs.read(cfg, ended, None)["stdout"] == "archived\n"
    # Not started yet: no directory anywhere and nothing asked of S3.
    pending = job_like(tmp_path / "nowhere", state="PENDING")
    assert joblogs.read(cfg, pending, None) == {"stdout": "", "stderr": ""}
    relay.remove()


def test_off_without_s3_or_with_a_zero_interval(tmp_path, aws_setup):
    local = load_settings({**s3_settings(tmp_path, aws_setup), "STORAGE": "local"}, environ={})
    off = load_settings(s3_settings(tmp_path, aws_setup, LIVE_LOG_INTERVAL=0), environ={})
    on = load_settings(s3_settings(tmp_path, aws_setup), environ={})
    assert not joblogs.relays(local) and not joblogs.relays(off) and joblogs.relays(on)
    assert on["LIVE_LOG_INTERVAL"] == 2.0
