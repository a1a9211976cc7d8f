"""caesar submit, status, wait, logs, output, cancel, jobs."""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import click

from ..errors import APIError
from ..models import TERMINAL_STATES
from ..validation import app_of, option_value, validate
from .files import upload_files
from .follow import INTERVAL, fetch_output, follow
from .ui import State, complete_app, complete_job, emit_json, json_option, note, pass_state, table

UUID_RE = re.compile(r"^[0-9a-f]{32}$")


def _pairs(values: tuple[str, ...], what: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not name:
            raise click.UsageError(f"{what} takes name=value, not {value!r}")
        pairs.append((name, text))
    return pairs


def _exit_for(ctx: click.Context, status: dict[str, Any]) -> None:
    from . import EXIT

    code = EXIT.get(str(status.get("state")), 1)
    if code:
        ctx.exit(code)


@click.command()
@click.argument("app", shell_complete=complete_app)
@click.option("--opt", "opts", multiple=True, metavar="NAME=VALUE", help="An option of the app (repeatable).")
@click.option("--file", "file_opts", multiple=True, metavar="NAME=PATH_OR_UUID",
              help="A file option: a local file (uploaded first), an uploaded file's uuid or its server path.")
@click.option("--backend", help="Run on this backend (one of the app's).")
@click.option("--tag", help="Tag the job (caesar jobs --tag lists them).")
@click.option("--wait", "wait_", is_flag=True, help="Follow the job to its end; exit with its exit code.")
@click.option("--output", "output_dir", type=click.Path(file_okay=False, path_type=Path),
              help="At the end, download the job's output and extract it here (implies --wait).")
@click.option("--no-validate", is_flag=True, help="Send the options unchecked (the service checks them anyway).")
@json_option
@pass_state
@click.pass_context
def submit(ctx: click.Context, state: State, app: str, opts: tuple[str, ...], file_opts: tuple[str, ...],
           backend: str | None, tag: str | None, wait_: bool, output_dir: Path | None, no_validate: bool) -> None:
    """Submit a job of APP. The options are checked against `describe` before anything is sent or uploaded, by the
    service's own rules (the same message, the same option named)."""
    description = state.client.describe(app)
    options = app_of(description).options
    inputs: dict[str, Any] = {}
    for name, text in _pairs(opts, "--opt"):
        inputs[name] = option_value(options.get(name), text)
    local: dict[str, Path] = {}
    for name, text in _pairs(file_opts, "--file"):
        inputs[name] = text
        if not UUID_RE.match(text) and os.path.isfile(text):
            local[name] = Path(text)
    for name, value in inputs.items():        # a local path given with --opt to a file option is uploaded too
        option = options.get(name)
        if option is not None and option.type == "file" and name not in local and isinstance(value, str) \
                and not UUID_RE.match(value) and os.path.isfile(value):
            local[name] = Path(value)
    if not no_validate:
        validate(description, inputs, backend)
    if local:
        records = upload_files(state, list(local.values()), tag)
        for name, record in zip(local, records, strict=True):
            inputs[name] = record["uuid"]
    job = dict(state.client.submit(app, inputs, tag=tag, backend=backend))
    job_id = str(job["job_id"])
    if not (wait_ or output_dir):
        if state.json:
            emit_json(job)
        else:
            click.echo(job_id)
            note(f"job {job_id} {job.get('state')}: caesar wait {job_id}")
        return
    if not state.json:
        note(f"job {job_id} submitted")
    final = dict(follow(state, job_id))
    result: dict[str, Any] = {**job, **final}
    if output_dir is not None:
        try:
            result["output"] = str(fetch_output(state, job_id, None, output_dir))
        except APIError as exc:
            if final.get("state") == "SUCCESS":
                raise
            # A job that could not start may have no directory to send: its end is still what the exit code says.
            note(f"no output for job {job_id}: {exc.message}")
    if state.json:
        emit_json(result)
    else:
        _report(final, result.get("output"))
    _exit_for(ctx, final)


def _report(status: dict[str, Any], output: str | None = None) -> None:
    exit_status = status.get("exit_status")
    click.echo(f"job {status.get('job_id')} {status.get('state')}"
               f"{'' if exit_status is None else f' (exit status {exit_status})'}"
               f"{'' if not status.get('elapsed_time') else ' in ' + str(status['elapsed_time']) + ' s'}: "
               f"{status.get('status', '')}")
    if output:
        click.echo(f"output in {output}")


@click.command()
@click.argument("job_id", metavar="JOB", shell_complete=complete_job)
@click.option("--metadata", is_flag=True, help="The job's whole provenance record instead.")
@json_option
@pass_state
def status(state: State, job_id: str, metadata: bool) -> None:
    """A job's state, exit status and elapsed time (--metadata: app version, argv, host, timings, history)."""
    answer: dict[str, Any] = state.client.metadata(job_id) if metadata else dict(state.client.status(job_id))
    if state.json or metadata:
        emit_json(answer)
    else:
        _report(answer)


@click.command()
@click.argument("job_id", metavar="JOB", shell_complete=complete_job)
@json_option
@pass_state
@click.pass_context
def wait(ctx: click.Context, state: State, job_id: str) -> None:
    """Follow JOB to its end; the exit code says how it ended (0 SUCCESS, 1 FAILURE/ABORTED, 2 CANCELED,
    3 TIMED-OUT)."""
    final = dict(follow(state, job_id))
    if state.json:
        emit_json(final)
    else:
        _report(final)
    _exit_for(ctx, final)


@click.command()
@click.argument("job_id", metavar="JOB", shell_complete=complete_job)
@click.option("-f", "--follow", "follow_", is_flag=True, help="Keep printing new lines until the job ends.")
@click.option("--tail", type=click.IntRange(0), help="Only the last N lines (of each stream).")
@json_option
@pass_state
def logs(state: State, job_id: str, follow_: bool, tail: int | None) -> None:
    """A job's stdout (on stdout) and stderr (on stderr). With --json and -f: one JSON object per new chunk."""
    if not follow_:
        answer = state.client.logs(job_id, tail)
        if state.json:
            emit_json(answer)
            return
        click.echo(answer["stdout"], nl=False)
        click.echo(answer["stderr"], nl=False, err=True)
        return
    seen: dict[str, str] = {"stdout": "", "stderr": ""}
    first = True
    while True:
        answer = state.client.logs(job_id)
        for stream in ("stdout", "stderr"):
            text = answer[stream]
            new = _unseen(seen[stream], text)
            seen[stream] = text
            if first and tail is not None:
                new = "".join(new.splitlines(keepends=True)[-tail:]) if tail else ""
            if new:
                if state.json:
                    click.echo(json.dumps({"stream": stream, "text": new}))
                else:
                    click.echo(new, nl=False, err=stream == "stderr")
        first = False
        if answer["state"] in TERMINAL_STATES:
            return
        time.sleep(INTERVAL)


#: The service answers at most the last MiB of each log: once past it the window slides, and what is new is found
#: after the end of what was seen before (its last MARK characters) instead of by length.
MARK = 4096


def _unseen(before: str, now: str) -> str:
    if now.startswith(before):
        return now[len(before):]
    mark = before[-MARK:]
    at = now.rfind(mark)
    return now[at + len(mark):] if at >= 0 else now


@click.command()
@click.argument("job_id", metavar="JOB", shell_complete=complete_job)
@click.option("-o", "--output", "dest", type=click.Path(path_type=Path),
              help="Write the tar.gz here (a file or a directory); default: job_<id>.tar.gz here.")
@click.option("--extract", type=click.Path(file_okay=False, path_type=Path), help="Extract it into this directory.")
@json_option
@pass_state
def output(state: State, job_id: str, dest: Path | None, extract: Path | None) -> None:
    """Download a finished job's directory as tar.gz, with progress (409 while it runs)."""
    if dest is not None and extract is not None:
        raise click.UsageError("give either -o FILE or --extract DIR, not both")
    path = fetch_output(state, job_id, dest, extract)
    if state.json:
        emit_json({"job_id": job_id, "path": str(path), "extracted": extract is not None})
    else:
        click.echo(str(path))


@click.command()
@click.argument("job_id", metavar="JOB", shell_complete=complete_job)
@json_option
@pass_state
def cancel(state: State, job_id: str) -> None:
    """Cancel a job wherever it runs (refused once it has finished)."""
    answer = dict(state.client.cancel(job_id))
    if state.json:
        emit_json(answer)
    else:
        click.echo(f"job {job_id} {answer.get('state')}: {answer.get('status')}")


@click.command("jobs")
@click.option("--state", "states", help="Only jobs in these states (comma-separated).")
@click.option("--app", help="Only jobs of this app.")
@click.option("--tag", help="Only jobs with this tag.")
@click.option("--backend", help="Only jobs on this backend.")
@click.option("--limit", type=click.IntRange(1, 100000), default=20, show_default=True, help="At most this many.")
@click.option("--page-token", help="Continue after the last job of an earlier listing (it prints the token).")
@json_option
@pass_state
def jobs(state: State, states: str | None, app: str | None, tag: str | None, backend: str | None, limit: int,
         page_token: str | None) -> None:
    """Your jobs, newest first, paged by keyset token (stable while new jobs arrive)."""
    rows: list[dict[str, Any]] = []
    token = page_token
    while len(rows) < limit:
        page = state.client.jobs(state=states, app=app, tag=tag, backend=backend,
                                 per_page=min(1000, limit - len(rows)), page_token=token)
        rows.extend(dict(j) for j in page.get("jobs", []))
        token = page.get("next_page_token")
        if not token:
            break
    if state.json:
        emit_json({"jobs": rows, "next_page_token": token})
        return
    table(["job", "app", "state", "submitted", "ended", "tag", "backend"],
          [[j.get("job_id"), j.get("app"), j.get("state"), str(j.get("submit_date") or "")[:19],
            str(j.get("end_date") or "")[:19], j.get("tag"), j.get("backend")] for j in rows])
    if token:
        note(f"more: caesar jobs --page-token {token}")


COMMANDS = [submit, status, wait, logs, output, cancel, jobs]
