"""Tasks shaped the way real workflow engines send them: Nextflow (bash wrapper, file:// staged work directory,
glob outputs without path_prefix, /v1 endpoints), Snakemake (content inputs, job script under /tmp) and cwl-tes
(staging directories, stdout file, DIRECTORY output of the output directory, volumes)."""
from __future__ import annotations

from .conftest import BUCKET, TOKENS, Tes, unique

COMMAND_RUN = """#!/bin/bash
# a cut-down .command.run: run the task script, keep its streams and exit status beside it
set -u
bash .command.sh > .command.out 2> .command.err
status=$?
printf '%s' "$status" > .exitcode
exit $status
"""


def _nextflow_task(workdir, name: str, script: str) -> dict:
    """As Nextflow's TesTaskHandler builds it (WORK_DIR /work, file:// URIs of the task's work directory)."""
    (workdir / ".command.sh").write_text(script)
    (workdir / ".command.run").write_text(COMMAND_RUN)
    uri = f"file://{workdir}"
    data = workdir.parent / "inputs" / "sample.txt"

    def out(name):
        return {"path": f"/work/{name}", "url": f"{uri}/{name}", "type": "FILE"}

    return {
        "name": name,
        "inputs": [{"url": f"{uri}/.command.sh", "path": "/work/.command.sh", "type": "FILE"},
                   {"url": f"{uri}/.command.run", "path": "/work/.command.run", "type": "FILE"},
                   {"url": f"file://{data}", "path": "/work/sample.txt", "type": "FILE"}],
        "outputs": [out(".command.out"), out(".command.err"), out(".command.log"), out(".exitcode"),
                    out("count.txt"), out("*.csv")],
        "resources": {"cpu_cores": 1, "ram_gb": 1.0},
        "executors": [{"image": "quay.io/nextflow/bash", "workdir": "/work",
                       "command": ["/bin/bash", "-c", "bash .command.run &> .command.log"]}],
    }


def test_nextflow_task(tes_stack, files):
    workdir = files / "nf-work" / unique("ab") / "cdef"
    workdir.mkdir(parents=True)
    (workdir.parent / "inputs").mkdir()
    (workdir.parent / "inputs" / "sample.txt").write_text("x\ny\nz\n")
    nextflow = Tes(tes_stack[0], TOKENS["alice"], prefix="/v1")      # Nextflow hard-codes /v1/tasks
    script = "wc -l < sample.txt > count.txt\nprintf 'a,b\\n' > t1.csv\nprintf 'c,d\\n' > t2.csv\necho done\n"
    task = nextflow.run(_nextflow_task(workdir, "NF_COUNT (1)", script))
    assert task["state"] == "COMPLETE", task["logs"][0]["system_logs"]
    assert task["logs"][0]["logs"][0]["exit_code"] == 0
    assert (workdir / ".exitcode").read_text() == "0" and (workdir / ".command.out").read_text() == "done\n"
    assert (workdir / "count.txt").read_text().strip() == "3"
    assert (workdir / "t1.csv").read_text() == "a,b\n" and (workdir / "t2.csv").read_text() == "c,d\n"
    assert task["outputs"][-1]["path_prefix"] == "/work"            # the server filled it in
    assert len(task["logs"][0]["outputs"]) == 7


def test_nextflow_failing_task_still_returns_its_exit_file(tes_stack, files):
    workdir = files / "nf-work" / unique("ff") / "0001"
    workdir.mkdir(parents=True)
    (workdir.parent / "inputs").mkdir()
    (workdir.parent / "inputs" / "sample.txt").write_text("x\n")
    nextflow = Tes(tes_stack[0], TOKENS["alice"], prefix="/v1")
    task = nextflow.run(_nextflow_task(workdir, "NF_FAIL (1)", "echo 'oops: no such sample' >&2\nexit 4\n"))
    assert task["state"] == "EXECUTOR_ERROR"
    assert task["logs"][0]["logs"][0]["exit_code"] == 4           # Nextflow reads logs[0].logs[0].exit_code
    assert (workdir / ".exitcode").read_text() == "4"
    assert "oops" in (workdir / ".command.err").read_text()
    assert any("count.txt" in line for line in task["logs"][0]["system_logs"])   # missing, noted, not fatal


SNAKEMAKE_SCRIPT = """#!/bin/sh
# properties = {"type": "single", "rule": "upper", "input": ["data/in.txt"], "output": ["results/out.txt"]}
set -eu
cd /tmp
mkdir -p results logs
tr a-z A-Z < data/in.txt > results/out.txt
wc -c < results/out.txt > logs/upper.log
"""


def test_snakemake_task(tes, http_server, s3_server):
    base, root = http_server
    (root / "snake-in.txt").write_text("snakes and ladders\n")
    run = unique("snake")
    task = tes.run({
        "name": "snakejob.upper.1.sh",
        "description": "Snakemake rule upper, job 1",
        "inputs": [{"path": "/tmp/run_snakemake.sh", "content": SNAKEMAKE_SCRIPT, "type": "FILE"},
                   {"path": "/tmp/Snakefile", "content": "rule upper:\n    input: 'data/in.txt'\n", "type": "FILE"},
                   {"url": f"{base}/snake-in.txt", "path": "/tmp/data/in.txt", "type": "FILE"}],
        "outputs": [{"url": f"s3://{BUCKET}/{run}/results/out.txt", "path": "/tmp/results/out.txt", "type": "FILE"},
                    {"url": f"s3://{BUCKET}/{run}/logs", "path": "/tmp/logs", "type": "DIRECTORY"}],
        "executors": [{"image": "snakemake/snakemake:v8.0.0", "command": ["/bin/sh", "/tmp/run_snakemake.sh"],
                       "workdir": "/tmp"}],
        "resources": {"cpu_cores": 1, "ram_gb": 1.0, "disk_gb": 0.01},
    })
    assert task["state"] == "COMPLETE", task["logs"][0]["system_logs"]
    s3 = s3_server[1]
    assert s3.get_object(Bucket=BUCKET, Key=f"{run}/results/out.txt")["Body"].read() == b"SNAKES AND LADDERS\n"
    assert s3.get_object(Bucket=BUCKET, Key=f"{run}/logs/upper.log")["Body"].read().strip() == b"19"


def test_cwl_tes_task(tes, files):
    (files / "cwl").mkdir(exist_ok=True)
    (files / "cwl" / "whale.txt").write_text("Call me Ishmael.\nSome years ago\nnever mind how long\n")
    outdir = files / unique("cwl-out")
    task = tes.run({
        "name": "wc",
        "description": "CommandLineTool: wc-tool.cwl",
        "inputs": [{"name": "file1", "url": f"file://{files}/cwl/whale.txt",
                    "path": "/var/lib/cwl/stgd1a2b3c4/whale.txt", "type": "FILE"},
                   {"name": "args.txt", "content": "-l\n", "path": "/var/spool/cwl/args.txt", "type": "FILE"}],
        "outputs": [{"name": "outdir", "url": f"file://{outdir}", "path": "/var/spool/cwl", "type": "DIRECTORY"}],
        "executors": [{"image": "docker.io/debian:stable-slim", "workdir": "/var/spool/cwl",
                       "command": ["wc", "-l", "/var/lib/cwl/stgd1a2b3c4/whale.txt"],
                       "stdout": "/var/spool/cwl/output.txt",
                       "env": {"HOME": "/var/spool/cwl", "TMPDIR": "/tmp"}}],
        "volumes": ["/var/spool/cwl", "/tmp"],
        "tags": {"CWLDocumentId": "wc-tool.cwl"},
    })
    assert task["state"] == "COMPLETE", task["logs"][0]["system_logs"]
    assert (outdir / "output.txt").read_text() == "3 /var/lib/cwl/stgd1a2b3c4/whale.txt\n"
    assert (outdir / "args.txt").read_text() == "-l\n"
    assert {o["path"] for o in task["logs"][0]["outputs"]} == {"/var/spool/cwl/output.txt", "/var/spool/cwl/args.txt"}
