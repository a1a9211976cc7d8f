"""Submissions Slurm itself refuses are ABORTED with Slurm's own message (the bad partition and the memory no node
has: tests/backends/test_slurm.py), on the real one-node cluster.

A bad account cannot be refused by this cluster: without slurmdbd, Slurm has no accounts to check against.
slurmctld keeps a job's account as a label it never checks (an unknown account runs, as the last test shows), and a
partition's AllowAccounts resolves its accounts through the accounting database: with none, every account is
"not known" alike, the listed one too (jobs pend forever with "Job's account not known, so it can't use this
partition"; with EnforcePartLimits=ALL every submission is refused with "Invalid account or account/partition
combination specified", the listed account's as well). Tried on this cluster (Slurm 22.05). So account enforcement
needs slurmdbd (AccountingStorageEnforce=associations), which the test cluster does not run; the nearest real
refusals, tested here, are the other names a job may choose that Slurm checks at submission: a reservation and a
node feature (constraints) the cluster does not have."""
from __future__ import annotations

from .test_slurm import explain, slurm_record, submit, wait


def test_a_reservation_slurm_does_not_have_is_aborted_with_slurms_message(slurm_stack):
    stack = slurm_stack
    job_id = submit(stack, "sleeper", options={"reservation": "nosuch"}, seconds=0)
    st = wait(stack, job_id)
    assert st["state"] == "ABORTED", explain(stack, job_id)
    assert "Slurm refused the job: Requested reservation is invalid" in st["status"], st
    assert "[Slurm error 2" in st["status"], st         # Slurm's own error number with its words


def test_a_node_feature_slurm_does_not_have_is_aborted_with_slurms_message(slurm_stack):
    stack = slurm_stack
    job_id = submit(stack, "sleeper", options={"constraints": "nosuch"}, seconds=0)
    st = wait(stack, job_id)
    assert st["state"] == "ABORTED", explain(stack, job_id)
    assert "Slurm refused the job: Invalid feature specification" in st["status"], st


def test_without_slurmdbd_an_account_is_passed_to_slurm_and_not_checked(slurm_stack):
    stack = slurm_stack
    job_id = submit(stack, "sleeper", options={"account": "nosuch"}, seconds=0)
    st = wait(stack, job_id)
    assert st["state"] == "SUCCESS", explain(stack, job_id)
    assert slurm_record(stack, job_id)["account"] == "nosuch"
