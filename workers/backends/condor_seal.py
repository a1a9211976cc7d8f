#!/usr/bin/env python3
"""The outputs' seal of an HTCondor job with file transfer: run on the execute node after the job (the job ad's
PostCmd, this file transferred in beside the inputs), it writes MANIFEST, the size and sha256 of every file the job
leaves, which HTCondor then transfers back with the outputs; the worker holds what it received to it (verify())
before the schedd's copy is removed.

Left out: the staged inputs (the job directory holds them already), HTCondor's own files at the top of the
sandbox (names starting with "_condor_" or "."; so a job's own top-level dotfile is not sealed) and this script.
The job's stdout and stderr (_condor_stdout, _condor_stderr) are sealed under the names the worker gives them.
Standard library only: the file is copied to the execute node alone, where nothing else of the service exists.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

MANIFEST = ".caesar-outputs.json"
LOGS = {"_condor_stdout": "stdout.log", "_condor_stderr": "stderr.log"}
INPUTS = "inputs"
CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def seal(root: Path, script: str) -> dict[str, dict[str, object]]:
    """{path relative to root: {"size", "sha256"}} of the files the job leaves (see the module's docstring)."""
    files: dict[str, dict[str, object]] = {}
    for top in sorted(os.listdir(root)):
        if top in LOGS:
            path = root / top
            files[LOGS[top]] = {"size": path.stat().st_size, "sha256": sha256_of(path)}
            continue
        if top.startswith((".", "_condor_")) or top in (INPUTS, script):
            continue
        start = root / top
        paths = [start] if not start.is_dir() else \
            [Path(dirpath) / name for dirpath, _dirs, names in os.walk(start) for name in names]
        for path in paths:
            if not path.is_symlink() and path.is_file():
                files[path.relative_to(root).as_posix()] = {"size": path.stat().st_size, "sha256": sha256_of(path)}
    return files


def verify(dest: Path) -> list[str]:
    """What of MANIFEST in dest does not match the files there (empty: all sealed files arrived whole)."""
    try:
        manifest = json.loads((dest / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"no {MANIFEST} arrived: the job's post step did not run, or its output was lost"]
    except (OSError, ValueError) as exc:
        return [f"{MANIFEST} is unreadable: {exc}"]
    if "error" in manifest:
        return [f"the outputs could not be sealed on the execute node: {manifest['error']}"]
    problems = []
    for rel, want in sorted(manifest.get("files", {}).items()):
        path = dest / rel
        if ".." in Path(rel).parts or path.is_symlink() or not path.is_file():
            problems.append(f"{rel} is missing")
        elif path.stat().st_size != want["size"]:
            problems.append(f"{rel} has {path.stat().st_size} bytes, not {want['size']}")
        elif sha256_of(path) != want["sha256"]:
            problems.append(f"{rel} has sha256 {sha256_of(path)}, not {want['sha256']}")
    return problems


def main() -> int:
    root, script = Path.cwd(), Path(sys.argv[0]).name
    try:
        doc: dict[str, object] = {"files": seal(root, script)}
    except Exception as exc:        # said in the manifest, so the worker can tell why; the job's end is its own
        doc = {"error": f"{type(exc).__name__}: {exc}"}
    tmp = root / f"{MANIFEST}.part"
    tmp.write_text(json.dumps(doc), encoding="utf-8")
    os.replace(tmp, root / MANIFEST)
    return 0


if __name__ == "__main__":
    sys.exit(main())
