"""A job's HTCondor `requirements` option as an oracle on the worker's environment, against the real personal pool:
through the submit language, `$ENV(NAME)` in it would be the worker's value, and whether the job matches would
tell its owner. The expression must reach the job ad as written."""
from __future__ import annotations

import time

from ..support import API, client_status, wait_state
from .security_fixtures import WORKER_SECRET, SecurityStack

JOB_TIMEOUT = 180          # a condor job takes seconds to match; the machine is shared
NAME = "CAESAR_S3_SECRET_ACCESS_KEY"


def submit(stack: SecurityStack, requirements: str) -> str:
    r = stack.client.post(f"{API}/job", json={"app": "sleeper", "backend": "condor", "job_inputs": {"seconds": 0},
                                             "backend_options": {"requirements": requirements}})
    assert r.status_code == 202, r.get_json()
    return r.get_json()["job_id"]


def ad_requirements(stack: SecurityStack, job_id: str) -> str:
    """The Requirements of the job's ad in the schedd, once the worker has submitted it (the handle is recorded)."""
    from workers.backends.htcondor import HTCondorBackend

    deadline = time.monotonic() + JOB_TIMEOUT
    while not stack.client.get(f"{API}/job/{job_id}/metadata").get_json().get("handle"):
        assert time.monotonic() < deadline, f"job {job_id} never reached the pool"
        time.sleep(0.2)
    condor = HTCondorBackend(stack.settings, stack.settings["BACKENDS"]["condor"])
    schedd, _ = condor._schedd(None)
    ads = schedd.query(f'CaesarJobId == "{job_id}"', ["Requirements"]) \
        or schedd.history(f'CaesarJobId == "{job_id}"', ["Requirements"], match=1)
    assert ads, f"job {job_id} is in neither the queue nor the history"
    return str(ads[0]["Requirements"])


def test_requirements_cannot_read_the_workers_environment(condor_secret_stack):
    stack = condor_secret_stack
    # Would match only if the worker's secret starts with "s3cret-": one bit per job, the whole secret in a few hundred.
    guess = submit(stack, f'regexp("^s3cret-", "$ENV({NAME})")')
    requirements = ad_requirements(stack, guess)
    assert WORKER_SECRET not in requirements, requirements
    assert f'"$ENV({NAME})"' in requirements, requirements          # the expression as the user wrote it
    assert "Arch" in requirements, requirements                      # the submit's own clauses are kept
    assert stack.client.post(f"{API}/job/{guess}/cancel").status_code == 200
    assert wait_state(client_status(stack.client), guess, timeout=JOB_TIMEOUT)["state"] == "CANCELED"

    # The literal text, compared with itself, matches: the job runs (through the submit language it would not).
    literal = submit(stack, f'"$ENV({NAME})" == strcat("$", "ENV({NAME})")')
    status = wait_state(client_status(stack.client), literal, timeout=JOB_TIMEOUT)
    assert status["state"] == "SUCCESS", status


def test_requirements_that_are_not_one_expression_are_a_400(condor_secret_stack):
    for bad in ("true) || (true", "$ENV(HOME) == 1"):
        r = condor_secret_stack.client.post(f"{API}/job", json={
            "app": "sleeper", "backend": "condor", "job_inputs": {"seconds": 0},
            "backend_options": {"requirements": bad}})
        assert r.status_code == 400 and "requirements" in r.get_json()["message"], r.get_json()
