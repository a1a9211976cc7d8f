"""The real `caesar` program in a pseudo-terminal (pexpect): a 200 MB upload draws a progress bar that moves, and
`submit --wait` shows the job's live state and ends with the job's exit code."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import pexpect

from .conftest import TOKENS

CAESAR = shutil.which("caesar", path=str(Path(sys.executable).parent)) or "caesar"
# Rich's DownloadColumn: "12.3/209.7 MB"
BYTES = re.compile(r"(\d+\.\d)/(\d+\.\d) MB")


def _spawn(stack, tmp_path, *args: str) -> pexpect.spawn:
    env = {**os.environ, "CAESAR_URL": stack["base"], "CAESAR_TOKEN": TOKENS["alice"], "TERM": "xterm-256color",
           "COLUMNS": "120", "LINES": "40", "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env.pop("NO_COLOR", None)
    return pexpect.spawn(CAESAR, list(args), env=env, encoding="utf-8", timeout=120, dimensions=(40, 120),
                         preexec_fn=_as_a_shell_starts_it)


def _as_a_shell_starts_it() -> None:
    """The program gets Ctrl-C as it would from a terminal's shell: a test run started in the background by a
    non-interactive shell (`... &`, as CI may) inherits SIGINT ignored, and so would the program, whose Ctrl-C
    then does nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _finish(child: pexpect.spawn) -> tuple[str, int]:
    child.expect(pexpect.EOF)
    child.close()
    return child.before or "", child.exitstatus if child.exitstatus is not None else -1


def test_upload_of_200_mb_shows_a_moving_progress_bar(stack, tmp_path):
    big = tmp_path / "big.fits"
    with open(big, "wb") as fh:
        for _ in range(200):
            fh.write(os.urandom(1024 * 1024))
    child = _spawn(stack, tmp_path, "upload", str(big), "--tag", "tty")
    text, code = _finish(child)
    assert code == 0, text
    frames = [float(done) for done, total in BYTES.findall(text) if total == "209.7"]
    assert len(set(frames)) >= 3, text[-2000:]              # several distinct positions: the bar moved
    assert frames == sorted(frames) and frames[-1] == 209.7
    assert "MB/s" in text and "━" in text and "big.fits" in text        # rate, the bar itself, the file's name
    assert re.search(r"[0-9a-f]{32}  big.fits  209.7 MB", text)           # the record, printed at the end
    # --json, at the same terminal: the record alone, no bar
    child = _spawn(stack, tmp_path, "upload", str(big), "--json")
    text, code = _finish(child)
    assert code == 0 and json.loads(text)["size_bytes"] == 200 * 1024 * 1024 and "━" not in text


def test_submit_wait_shows_the_live_state_and_ends_with_the_exit_code(stack, tmp_path):
    child = _spawn(stack, tmp_path, "submit", "sleeper", "--opt", "seconds=3", "--opt", "message=tick",
                   "--opt", "exit-code=9", "--wait")
    child.expect("RUNNING")
    child.expect(r"\d+\.\d s")                   # the elapsed time, live
    child.expect(r"\| tick")                     # the last log line
    text, code = _finish(child)
    assert code == 1                             # FAILURE
    assert "FAILURE (exit status 9)" in text
    ok = _spawn(stack, tmp_path, "submit", "sleeper", "--opt", "seconds=0.5", "--wait")
    ok.expect("SUCCESS")
    _text, code = _finish(ok)
    assert code == 0


def test_ctrl_c_while_following_exits_130_and_leaves_the_job(stack, tmp_path):
    child = _spawn(stack, tmp_path, "submit", "sleeper", "--opt", "seconds=60", "--wait")
    child.expect("RUNNING")
    job_id = re.search(r"job ([0-9a-f-]{36})", child.before + child.after).group(1)
    child.sendintr()
    text, code = _finish(child)
    assert code == 130 and "interrupted" in text
    cancel = _spawn(stack, tmp_path, "cancel", job_id, "--json")     # the job ran on: a Ctrl-C stops the following
    text, code = _finish(cancel)
    assert code == 0 and json.loads(text)["job_id"] == job_id
