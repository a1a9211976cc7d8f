"""HTCondor backend: jobs go to a schedd through the htcondor2 bindings and are followed in its queue, then history.

Settings (BACKENDS["condor"]):
    collector         host:port of the pool's collector (default: COLLECTOR_HOST of the host's condor config)
    schedd            name of the schedd to submit to (default: the one the collector knows)
    token_dir         directory of IDTOKENS for the submitting identity (sets IDTOKENS client authentication)
    config            further client config knobs for the bindings, e.g. {"SEC_CLIENT_AUTHENTICATION_METHODS": "SSL"}
    transfer          how files move: "spool" (default; inputs are uploaded to the schedd, outputs retrieved
                      from it: no filesystem shared with the pool), "files" (HTCondor file transfer from and to
                      the job directory, which the schedd must see at the same path) or "shared" (no transfer:
                      execute nodes see the job directory at the same path and run in it)
    accounting_group  fair-share group prefix (default "caesar"); each user is accounted as <prefix>.<owner>
    workdir_owner     "uid:gid" the job directory is given to before submit ("files" and "shared" modes), for
                      pools where the submitting identity maps to another account than the worker's
    requirements      ClassAd requirements expression added to every job (submit language: the operator's macros
                      expand in it). A job's own `requirements` option is set on the job ad verbatim instead.
    environment       extra environment variables of every job
    disk_mb           scratch disk requested beyond the inputs' size (default 1024)
    submit            further submit commands merged last, e.g. {"periodic_hold": "...", "+ProjectName": '"x"'}

Executables run in place on the execute side (transfer_executable = false): a relative argv[0] is resolved on
the worker host, venv first, so execute nodes must see the same paths (a shared software area).
"""
from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar

from . import condor_seal
from .base import (
    CANCELLED,
    EXITED,
    FAILED,
    LOST,
    QUEUED,
    RUNNING,
    BackendBase,
    BackendError,
    BackendNotConfigured,
    BackendStatus,
    BackendUnavailable,
    JobSpec,
    host_executable,
    translate_errors,
)

TRANSFER_MODES = ("spool", "files", "shared")
# JobStatus codes of a job ad
IDLE, RUN, REMOVED, COMPLETED, HELD, TRANSFERRING_OUTPUT, SUSPENDED = 1, 2, 3, 4, 5, 6, 7
HOLD_SPOOLING_INPUT = 16    # HoldReasonCode while a spooled job's inputs are still being uploaded
PROJECTION = ["ClusterId", "ProcId", "JobStatus", "ExitCode", "ExitBySignal", "ExitSignal", "HoldReason",
              "HoldReasonCode", "RemoveReason", "RemoteHost", "LastRemoteHost", "CaesarJobId"]
USER_RE = re.compile(r"[^A-Za-z0-9_-]")
SEAL_SCRIPT = os.path.abspath(condor_seal.__file__)


def without_match_time_expansion(value: str) -> str:
    """`$$(x)` in a job ad is replaced when the job is matched; `$$(DOLLARDOLLAR)` stands for a literal `$$`.
    Dollars pair up from the left, as the schedd reads them."""
    out, i = [], 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$$(DOLLARDOLLAR)(" if value.startswith("(", i + 2) else "$$")
            i += 3 if value.startswith("(", i + 2) else 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def condor_arguments(args: list[str]) -> str:
    """The job ad's Arguments (new syntax) that hand args over verbatim, without any shell.

    Each argument is single-quoted, so spaces stay inside it; a literal single quote is written twice. It is set
    on the job ad itself (Schedd.edit), never through the submit language, whose macros ($(x), $ENV(x)) would
    rewrite it; only the schedd's match-time $$(x) needs escaping."""
    for arg in args:
        if "\n" in arg or "\r" in arg or "\0" in arg:
            raise BackendError(f"HTCondor cannot pass an argument containing a newline or NUL: {arg!r}")
    return " ".join("'" + without_match_time_expansion(arg).replace("'", "''") + "'" for arg in args)


def condor_environment(env: Mapping[str, str]) -> str:
    """The job ad's Environment (new syntax): NAME=value pairs quoted like arguments."""
    for name in env:
        if not name or "=" in name or not name.replace("_", "a").isalnum():
            raise BackendError(f"Invalid environment variable name for HTCondor: {name!r}")
    return condor_arguments([f"{name}={value}" for name, value in env.items()])


def ad_string(value: str) -> str:
    """A string literal as the schedd parses an edited attribute (old ClassAd syntax: only `"` is escaped)."""
    return '"' + value.replace('"', '\\"') + '"'


def _plain(value: str, what: str) -> str:
    """A value for the submit language, which would expand `$` macros in it."""
    if "$" in value or "\n" in value:
        raise BackendError(f"HTCondor {what} may not contain '$' or a newline: {value!r}")
    return value


def _import_bindings() -> Any:
    try:
        import htcondor2
    except ImportError as exc:
        raise BackendNotConfigured("The condor backend needs the HTCondor Python bindings: "
                                   "pip install 'caesar-rest[condor]'") from exc
    return htcondor2


class HTCondorBackend(BackendBase):
    name: ClassVar[str] = "condor"
    blocking: ClassVar[bool] = False
    job_options: ClassVar[tuple[str, ...]] = ("requirements",)

    @staticmethod
    def check_job_options(backend_settings: Mapping[str, Any], options: Mapping[str, Any]) -> str | None:
        expr = options.get("requirements")
        if expr is None:
            return None
        if not isinstance(expr, str) or not expr.strip():
            return "'requirements' must be a ClassAd expression (a string)"
        try:
            import classad2
            classad2.ExprTree(expr)
        except ImportError:
            return None
        except Exception:
            return f"'requirements' is not a valid ClassAd expression: {expr!r}"
        return None

    def __init__(self, settings: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        self.htcondor = _import_bindings()
        self.transfer = options.get("transfer", "spool")
        if self.transfer not in TRANSFER_MODES:
            raise BackendNotConfigured(f"BACKENDS.condor.transfer must be one of {TRANSFER_MODES}, "
                                       f"not {self.transfer!r}")
        self.collector: str | None = options.get("collector")
        self.schedd_name: str | None = options.get("schedd")
        self.accounting_group = str(options.get("accounting_group", "caesar"))
        self.requirements: str | None = options.get("requirements")
        self.environment = {str(k): str(v) for k, v in (options.get("environment") or {}).items()}
        self.disk_mb = int(options.get("disk_mb", 1024))
        self.extra_submit = {str(k): str(v) for k, v in (options.get("submit") or {}).items()}
        self.workdir_owner: tuple[int, int] | None = None
        if options.get("workdir_owner"):
            uid, _, gid = str(options["workdir_owner"]).partition(":")
            self.workdir_owner = (int(uid), int(gid or uid))
        knobs = dict(options.get("config") or {})
        if options.get("token_dir"):
            knobs.setdefault("SEC_CLIENT_AUTHENTICATION_METHODS", "IDTOKENS")
            knobs["SEC_TOKEN_DIRECTORY"] = str(options["token_dir"])
        for knob, value in knobs.items():    # process-wide client config of the bindings
            self.htcondor.param[str(knob)] = str(value)
        self.where = self.collector or self.htcondor.param.get("COLLECTOR_HOST") or "the default collector"

    # ---- talking to the pool ------------------------------------------------------------------------------
    def _reaching(self, what: str) -> AbstractContextManager[None]:
        """Errors of the bindings become BackendUnavailable (retried by the runner), naming what and where."""
        return translate_errors(self.htcondor.HTCondorException, lambda exc: BackendUnavailable(
            f"HTCondor unreachable while {what} (collector {self.where}): {exc}"))

    def _schedd(self, name: str | None) -> tuple[Any, str]:
        """Locate the schedd through the collector (its address changes when it restarts)."""
        with self._reaching(f"locating schedd {name or '(default)'}"):
            collector = self.htcondor.Collector(self.collector) if self.collector else self.htcondor.Collector()
            schedd_type = self.htcondor.DaemonType.Schedd
            ad = collector.locate(schedd_type, name) if name else collector.locate(schedd_type)
        if ad is None:
            raise BackendUnavailable(f"HTCondor collector {self.where} knows no schedd"
                                     f"{' named ' + repr(name) if name else ''} (is the schedd down?)")
        return self.htcondor.Schedd(ad), str(ad.get("Name") or name or "")

    @staticmethod
    def _parse(handle: str) -> tuple[str, str]:
        job, _, schedd = handle.partition("@")
        if not re.fullmatch(r"\d+\.\d+", job):
            raise BackendError(f"Not an HTCondor job handle: {handle!r}")
        return job, schedd

    @staticmethod
    def _constraint(job: str) -> str:
        cluster, proc = job.split(".")
        return f"ClusterId == {cluster} && ProcId == {proc}"

    # ---- the protocol -----------------------------------------------------------------------------------------
    def health(self) -> dict[str, str]:
        """The collector answers and knows the schedd jobs go to."""
        _schedd, name = self._schedd(self.schedd_name)
        return {"collector": self.where, "schedd": name, "transfer": self.transfer}

    def submit(self, job: JobSpec) -> str:
        workdir = Path(job.workdir)
        description, arguments, environment = self._description(job, workdir)
        wanted = self._job_requirements(job.options.get("requirements"))
        if self.workdir_owner and self.transfer != "spool":
            self._give_to_job_user(workdir, *self.workdir_owner)
        schedd, schedd_name = self._schedd(self.schedd_name)
        spool = self.transfer == "spool"
        # Refused (bad description, not authorized) or down: not retried, the job is ABORTED.
        with translate_errors(self.htcondor.HTCondorException, lambda exc: BackendError(
                f"HTCondor schedd {schedd_name} did not take job {job.job_id}: {exc}")):
            result = schedd.submit(self.htcondor.Submit(description), spool=spool)
        job_id = f"{result.cluster()}.{result.first_proc()}"
        # The job cannot start yet (held: by us, or by the schedd until its inputs are spooled).
        try:
            with self._reaching(f"completing job {job_id} on schedd {schedd_name}"):
                schedd.edit(job_id, "Arguments", ad_string(arguments))
                schedd.edit(job_id, "Environment", ad_string(environment))
                schedd.edit(job_id, "CaesarOwner", ad_string(job.owner))
                if wanted is not None:
                    # On the ad, never in the submit description: the submit language would expand $ENV(NAME)
                    # and $(NAME) in it from this worker's environment and config, and a job that matches (or
                    # not) would tell its owner their values. The submit-made clauses (arch, disk...) stay.
                    made = result.clusterad().get("Requirements")
                    schedd.edit(job_id, "Requirements", f"({wanted}) && ({made})" if made is not None else wanted)
                if spool:
                    schedd.spool(result)        # uploads inputs/; the schedd then lets the job run
                else:
                    schedd.act(self.htcondor.JobAction.Release, job_id, "caesar-rest: job complete")
        except BackendUnavailable:
            with self._reaching(f"removing job {job_id}, which could not be completed"):
                schedd.act(self.htcondor.JobAction.Remove, job_id, "caesar-rest: submission failed")
            raise
        return f"{job_id}@{schedd_name}"

    def poll(self, handle: str) -> BackendStatus:
        job, name = self._parse(handle)
        schedd, _ = self._schedd(name or None)
        with self._reaching(f"querying job {job} on schedd {name}"):
            ads = schedd.query(self._constraint(job), PROJECTION)
            if not ads:     # left the queue: its last word is in the history (asked second, so no gap)
                ads = schedd.history(self._constraint(job), PROJECTION, match=1)
        if not ads:
            return BackendStatus(LOST, reason=f"HTCondor job {job} is in neither the queue nor the history "
                                              f"of schedd {name}")
        return self._status(ads[0], job)

    def cancel(self, handle: str) -> None:
        job, name = self._parse(handle)
        schedd, _ = self._schedd(name or None)
        with self._reaching(f"removing job {job} from schedd {name}"):
            schedd.act(self.htcondor.JobAction.Remove, job, "Canceled by the caesar-rest user")

    def fetch_outputs(self, handle: str, dest: Path) -> None:
        """shared: HTCondor ran the job in the job directory. files: HTCondor transferred the outputs into it. spool:
        retrieve them. Transferred outputs are held to the seal the execute node made (condor_seal.py): a file that
        differs from it is an error naming the file (spool: retried, the schedd still holds its copy)."""
        if self.transfer == "shared":
            return
        job, name = self._parse(handle)
        schedd, _ = self._schedd(name or None)
        with self._reaching(f"retrieving the outputs of job {job} from schedd {name}"):
            ads = schedd.query(self._constraint(job), ["JobStatus"])
            if not ads and self.transfer == "files":    # done and gone from the queue: its last word
                ads = schedd.history(self._constraint(job), ["JobStatus"], match=1)
            if not ads or ads[0].get("JobStatus") != COMPLETED:
                return              # removed or held: nothing was sealed, nothing to retrieve
            if self.transfer == "spool":
                schedd.retrieve(job)    # written to the job's submit-time iwd, which is dest: the job directory
        problems = condor_seal.verify(dest)
        if problems:
            shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
            error = BackendUnavailable if self.transfer == "spool" else BackendError
            raise error(f"the outputs of HTCondor job {job} do not match what the execute node sealed: {shown}")
        (dest / condor_seal.MANIFEST).unlink(missing_ok=True)

    def cleanup(self, handle: str) -> None:
        """Take the job out of the queue: a held job, or a finished spooled one kept for its outputs."""
        job, name = self._parse(handle)
        schedd, _ = self._schedd(name or None)
        with self._reaching(f"removing job {job} from schedd {name}"):
            if schedd.query(self._constraint(job), ["JobStatus"]):
                schedd.act(self.htcondor.JobAction.Remove, job, "caesar-rest: job finished")

    # ---- helpers ------------------------------------------------------------------------------------------------
    def _description(self, job: JobSpec, workdir: Path) -> tuple[dict[str, str], str, str]:
        """The submit description, and the Arguments and Environment to set on the job ad afterwards."""
        import classad2

        executable = self._executable(job.argv[0])
        env = {"MPLBACKEND": "Agg", "OMP_NUM_THREADS": str(max(1, int(job.cpus))), "LANG": "C.UTF-8",
               "PATH": f"{os.path.dirname(executable)}:/usr/local/bin:/usr/bin:/bin",
               **self.environment, **job.env, "CAESAR_JOB_ID": job.job_id}
        inputs_bytes = sum(item.size_bytes for item in job.inputs)
        description = {
            "universe": "vanilla",
            "executable": _plain(executable, "executable path"),
            "transfer_executable": "false",
            "iwd": _plain(str(workdir), "job directory"),
            "output": "stdout.log",
            "error": "stderr.log",
            "request_cpus": str(max(1, math.ceil(job.cpus))),
            "request_disk": f"{inputs_bytes // 1024 + self.disk_mb * 1024}",     # KiB
            "accounting_group": self.accounting_group,
            "accounting_group_user": USER_RE.sub("_", job.owner) or "anonymous",
            "batch_name": f"caesar-{job.app}",
            "+CaesarJobId": classad2.quote(job.job_id),
            "+CaesarApp": classad2.quote(job.app),
        }
        if job.memory_mb:
            description["request_memory"] = str(int(job.memory_mb))
        if self.transfer == "shared":
            description["should_transfer_files"] = "NO"
        else:
            description["should_transfer_files"] = "YES"
            description["when_to_transfer_output"] = "ON_EXIT"
            # The outputs' seal runs after the job on the execute node (condor_seal.py); its manifest comes back.
            seal = _plain(SEAL_SCRIPT, "seal script path")
            description["transfer_input_files"] = f"inputs,{seal}" if (workdir / "inputs").is_dir() else seal
            description["+PostCmd"] = classad2.quote(os.path.basename(SEAL_SCRIPT))
        if self.transfer != "spool":
            description["hold"] = "true"    # released once Arguments and Environment are set
        if self.requirements:
            description["requirements"] = f"({self.requirements})"
        description.update(self.extra_submit)
        return description, condor_arguments(job.argv[1:]), condor_environment(env)

    @staticmethod
    def _job_requirements(expr: Any) -> str | None:
        """A job's requirements as one parsed ClassAd expression (its canonical text), or None when it gives none."""
        if expr is None:
            return None
        import classad2

        try:
            return str(classad2.ExprTree(str(expr)))
        except Exception as exc:
            raise BackendError(f"'requirements' is not a valid ClassAd expression: {expr!r}") from exc

    @staticmethod
    def _give_to_job_user(workdir: Path, uid: int, gid: int) -> None:
        """The job's account writes into the job directory and reads its inputs. Staged inputs are hard links
        to the user's stored files (read-only to their owner): the job gets its own copies, the store is kept."""
        os.chown(workdir, uid, gid)
        inputs = workdir / "inputs"
        if not inputs.is_dir():
            return
        os.chown(inputs, uid, gid)
        for path in sorted(p for p in inputs.rglob("*") if p.is_file() and p.stat().st_uid != uid):
            copy = path.with_name(f".{path.name}.caesar-copy")
            shutil.copyfile(path, copy)
            os.chown(copy, uid, gid)
            os.chmod(copy, 0o440)
            os.replace(copy, path)

    @staticmethod
    def _executable(command: str) -> str:
        found = host_executable(command)
        if found is None:
            raise BackendError(f"Command {command!r} not found on the worker host; HTCondor runs executables in "
                               "place, so it must exist at the same path on the execute nodes")
        return found

    def _status(self, ad: Mapping[str, Any], job: str) -> BackendStatus:
        state = ad.get("JobStatus")
        host = str(ad.get("RemoteHost") or ad.get("LastRemoteHost") or "").rpartition("@")[2] or None
        if state == IDLE:
            return BackendStatus(QUEUED)
        if state in (RUN, TRANSFERRING_OUTPUT, SUSPENDED):
            return BackendStatus(RUNNING, host=host)
        if state == HELD:
            if ad.get("HoldReasonCode") == HOLD_SPOOLING_INPUT:
                return BackendStatus(QUEUED)
            return BackendStatus(FAILED, reason=f"HTCondor held job {job}: {ad.get('HoldReason')}", host=host)
        if state == COMPLETED:
            if ad.get("ExitBySignal") is True:
                return BackendStatus(EXITED, exit_code=-int(ad.get("ExitSignal") or 9), host=host)
            code = ad.get("ExitCode")
            return BackendStatus(EXITED, exit_code=int(code) if isinstance(code, int) else None, host=host)
        if state == REMOVED:
            why = str(ad.get("RemoveReason") or "no reason given")
            if "periodic_remove" in why.lower():    # a pool policy removed it: the job failed
                return BackendStatus(FAILED, reason=f"HTCondor removed job {job}: {why}", host=host)
            return BackendStatus(CANCELLED, reason=f"Job {job} was removed on HTCondor: {why}", host=host)
        return BackendStatus(LOST, reason=f"HTCondor job {job} has an unknown JobStatus {state!r}")
