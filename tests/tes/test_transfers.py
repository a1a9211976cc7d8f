"""Inputs and outputs over real servers: http.server, pyftpdlib, moto's S3 server and file:// roots. A transfer
that fails is a SYSTEM_ERROR naming the URL and the reason, never a silent success."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import BUCKET, FTP_PASSWORD, FTP_USER, unique


def _system_logs(task) -> str:
    return "\n".join(task["logs"][0]["system_logs"])


def test_http_input(tes, http_server):
    base, root = http_server
    (root / "reads.txt").write_text("ACGT\nTTGA\n")
    task = tes.run({"inputs": [{"url": f"{base}/reads.txt", "path": "/data/reads.txt"}],
                    "executors": [{"image": "alpine", "command": ["sort", "/data/reads.txt"]}]})
    assert task["state"] == "COMPLETE"
    assert task["logs"][0]["logs"][0]["stdout"] == "ACGT\nTTGA\n"


def test_http_not_found_is_a_system_error_naming_the_url(tes, http_server):
    url = f"{http_server[0]}/missing/{unique('nothing')}.txt"
    task = tes.run({"inputs": [{"url": url, "path": "/data/x.txt"}],
                    "executors": [{"image": "alpine", "command": ["cat", "/data/x.txt"]}]})
    assert task["state"] == "SYSTEM_ERROR" and task["logs"][0]["logs"] == []
    assert url in _system_logs(task) and "HTTP 404" in _system_logs(task)


def test_ftp_inputs_and_outputs(tes, ftp_server):
    host, root = ftp_server
    run = unique("ftp")
    (root / run / "dir" / "sub").mkdir(parents=True)
    (root / run / "a.txt").write_text("alpha\n")
    (root / run / "dir" / "b.txt").write_text("beta\n")
    (root / run / "dir" / "sub" / "c.txt").write_text("gamma\n")
    auth = f"{FTP_USER}:{FTP_PASSWORD}@{host}"
    task = tes.run({
        "inputs": [{"url": f"ftp://{auth}/{run}/a.txt", "path": "/data/a.txt"},
                   {"url": f"ftp://{host}/{run}/dir", "path": "/data/dir", "type": "DIRECTORY"}],   # anonymous
        "outputs": [{"url": f"ftp://{auth}/{run}/results/all.txt", "path": "/out/all.txt"},
                    {"url": f"ftp://{auth}/{run}/results/tree", "path": "/out/tree", "type": "DIRECTORY"}],
        "executors": [{"image": "alpine", "command": [
            "sh", "-c", ("cat /data/a.txt /data/dir/b.txt /data/dir/sub/c.txt > /out/all.txt && "
                         "mkdir -p /out/tree/x && echo one > /out/tree/x/one && echo two > /out/tree/two")]}]})
    assert task["state"] == "COMPLETE", _system_logs(task)
    assert (root / run / "results" / "all.txt").read_text() == "alpha\nbeta\ngamma\n"
    assert (root / run / "results" / "tree" / "x" / "one").read_text() == "one\n"
    outputs = {o["path"]: o for o in task["logs"][0]["outputs"]}
    assert set(outputs) == {"/out/all.txt", "/out/tree/two", "/out/tree/x/one"}
    assert outputs["/out/all.txt"]["size_bytes"] == "17"
    assert outputs["/out/tree/x/one"]["url"] == f"ftp://{auth}/{run}/results/tree/x/one"


def test_s3_inputs_and_outputs_with_wildcards(tes, s3_server):
    _endpoint, s3 = s3_server
    run = unique("s3")
    s3.put_object(Bucket=BUCKET, Key=f"{run}/in/sample.txt", Body=b"3\n1\n2\n")
    for name in ("one.fits", "two.fits", "sub/three.fits"):
        s3.put_object(Bucket=BUCKET, Key=f"{run}/in/images/{name}", Body=name.encode())
    task = tes.run({
        "inputs": [{"url": f"s3://{BUCKET}/{run}/in/sample.txt", "path": "/data/sample.txt"},
                   {"url": f"s3://{BUCKET}/{run}/in/images", "path": "/data/images", "type": "DIRECTORY"}],
        "outputs": [{"url": f"s3://{BUCKET}/{run}/out/sorted.txt", "path": "/out/sorted.txt"},
                    {"url": f"s3://{BUCKET}/{run}/out/images", "path": "/data/images", "type": "DIRECTORY"},
                    {"url": f"s3://{BUCKET}/{run}/out/tables", "path": "/out/*.csv", "path_prefix": "/out"}],
        "executors": [{"image": "alpine", "command": [
            "sh", "-c", ("sort /data/sample.txt > /out/sorted.txt && ls -R /data/images > /out/listing.csv && "
                         "echo x,y > /out/xy.csv && echo skipped > /out/other.txt")]}]})
    assert task["state"] == "COMPLETE", _system_logs(task)

    def body(key):
        return s3.get_object(Bucket=BUCKET, Key=f"{run}/{key}")["Body"].read()

    assert body("out/sorted.txt") == b"1\n2\n3\n"
    assert body("out/images/sub/three.fits") == b"sub/three.fits"
    assert body("out/tables/xy.csv") == b"x,y\n"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{run}/out/")["Contents"]}
    assert keys == {f"{run}/out/{k}" for k in ("sorted.txt", "images/one.fits", "images/two.fits",
                                               "images/sub/three.fits", "tables/xy.csv", "tables/listing.csv")}
    logged = {o["url"]: o for o in task["logs"][0]["outputs"]}
    assert logged[f"s3://{BUCKET}/{run}/out/tables/xy.csv"] == {
        "url": f"s3://{BUCKET}/{run}/out/tables/xy.csv", "path": "/out/xy.csv", "size_bytes": "4"}
    assert logged[f"s3://{BUCKET}/{run}/out/images/sub/three.fits"]["path"] == "/data/images/sub/three.fits"


def test_failed_uploads_are_system_errors_naming_url_and_reason(tes, ftp_server, files):
    host, _root = ftp_server
    task = tes.run({"outputs": [{"url": "s3://no-such-bucket/out.txt", "path": "/out/out.txt"},
                                {"url": f"file://{files}/kept/out.txt", "path": "/out/out.txt"}],
                    "executors": [{"image": "alpine", "command": ["sh", "-c", "echo data > /out/out.txt"]}]})
    assert task["state"] == "SYSTEM_ERROR"
    assert "s3://no-such-bucket/out.txt" in _system_logs(task) and "NoSuchBucket" in _system_logs(task)
    assert [o["url"] for o in task["logs"][0]["outputs"]] == [f"file://{files}/kept/out.txt"]   # the others still go

    task = tes.run({"outputs": [{"url": f"ftp://{FTP_USER}:wrong@{host}/x.txt", "path": "/out/x.txt"}],
                    "executors": [{"image": "alpine", "command": ["sh", "-c", "echo data > /out/x.txt"]}]})
    assert task["state"] == "SYSTEM_ERROR"
    logs = _system_logs(task)
    assert f"ftp://{FTP_USER}:***@{host}/x.txt" in logs and "530" in logs and "wrong" not in logs


def test_a_missing_output_is_a_system_error(tes, files):
    task = tes.run({"outputs": [{"url": f"file://{files}/never.txt", "path": "/out/never.txt"}],
                    "executors": [{"image": "alpine", "command": ["true"]}]})
    assert task["state"] == "SYSTEM_ERROR" and "does not exist" in _system_logs(task)
    assert not (files / "never.txt").exists()


def test_outputs_never_follow_links_out_of_the_task(tes, files):
    target = unique("leak")
    task = tes.run({"outputs": [{"url": f"file://{files}/{target}/link", "path": "/data/link"}],
                    "executors": [{"image": "alpine", "command": ["ln", "-s", "/etc/passwd", "/data/link"]}]})
    assert task["state"] == "SYSTEM_ERROR" and "outside the task" in _system_logs(task)
    tree = tes.run({"outputs": [{"url": f"file://{files}/{target}/tree", "path": "/data/tree", "type": "DIRECTORY"}],
                    "executors": [{"image": "alpine", "command": [
                        "sh", "-c",
                        "mkdir -p /data/tree && echo ok > /data/tree/real && ln -s /etc/passwd /data/tree/link"]}]})
    assert tree["state"] == "COMPLETE"
    assert sorted(os.listdir(files / target / "tree")) == ["real"]


def test_file_urls_stay_inside_the_configured_roots(tes, files):
    (files / "escape").symlink_to("/etc/passwd")
    r = tes.call("POST", "/tasks", json={"inputs": [{"url": f"file://{files}/escape", "path": "/data/x"}],
                                         "executors": [{"image": "alpine", "command": ["cat", "/data/x"]}]})
    assert r.status_code == 400 and r.json()["field"] == "inputs[0].url"
    r = tes.call("POST", "/tasks", json={"outputs": [{"url": f"file://{files}/../elsewhere", "path": "/data/x"}],
                                         "executors": [{"image": "alpine", "command": ["true"]}]})
    assert r.status_code == 400 and r.json()["field"] == "outputs[0].url"


def test_a_short_download_is_a_system_error(tes, http_server):
    url = f"{http_server[0]}/short/{unique('cut')}.bin"
    task = tes.run({"inputs": [{"url": url, "path": "/data/x.bin"}],
                    "executors": [{"image": "alpine", "command": ["true"]}]})
    assert task["state"] == "SYSTEM_ERROR" and url in _system_logs(task)
    assert task["logs"][0]["logs"] == []


def test_cancel_during_staging(tes, http_server):
    task_id = tes.create({"inputs": [{"url": f"{http_server[0]}/slow/{unique('big')}.bin", "path": "/data/x.bin"}],
                          "executors": [{"image": "alpine", "command": ["true"]}]})
    tes.wait(task_id, states=("INITIALIZING",), timeout=30)
    assert tes.call("POST", f"/tasks/{task_id}:cancel").status_code == 200
    task = tes.wait(task_id, timeout=20)
    assert task["state"] == "CANCELED" and task["logs"][0]["logs"] == []


def test_file_roots_are_per_user_or_shared_read_only(tes_stack, tes, files):
    """alice's root is <files>/alice/: bob's directory beside it is refused both ways; the shared root is read
    by everyone and written by no one. Refused at submission, with nothing created."""
    settings = tes_stack[1]
    bobs = tes_stack[2] / "bob"
    bobs.mkdir(exist_ok=True)
    (bobs / "secret.txt").write_text("bob's\n")
    shared = next(r["path"] for r in settings["TES_FILE_ROOTS"] if r["scope"] == "shared")
    Path(shared, "reference.txt").write_text("shared\n")
    cat = {"image": "alpine", "command": ["cat", "/data/x"]}
    for body, field, why in (
            ({"inputs": [{"url": f"file://{bobs}/secret.txt", "path": "/data/x"}], "executors": [cat]},
             "inputs[0].url", f"your directory {tes_stack[2]}/alice/"),
            ({"outputs": [{"url": f"file://{bobs}/secret.txt", "path": "/data/x"}], "executors": [cat]},
             "outputs[0].url", "outside the directories"),
            ({"outputs": [{"url": f"file://{shared}/reference.txt", "path": "/data/x"}], "executors": [cat]},
             "outputs[0].url", "shared read-only")):
        r = tes.call("POST", "/tasks", json=body)
        assert r.status_code == 400 and r.json()["field"] == field and why in r.json()["message"], r.text
    assert (bobs / "secret.txt").read_text() == "bob's\n"
    task = tes.run({"inputs": [{"url": f"file://{shared}/reference.txt", "path": "/data/x"}], "executors": [cat]})
    assert task["state"] == "COMPLETE" and task["logs"][0]["logs"][0]["stdout"] == "shared\n"


def test_old_settings_shapes_stop_the_service_at_start(tmp_path):
    """A plain TES_FILE_ROOTS path used to be shared read-write by all users: refused, saying so, not reread."""
    from caesar_rest import create_app
    from caesar_rest.tes_access import AccessConfigError

    from ..support import embedded_settings

    for bad, words in (({"TES_FILE_ROOTS": [str(tmp_path)]}, "no longer accepted"),
                       ({"TES_FILE_ROOTS": [{"path": str(tmp_path)}]}, "scope"),
                       ({"EGRESS_ALLOWED_NETWORKS": "10.0.0.0/8"}, "a list of networks"),
                       ({"EGRESS_ALLOWED_NETWORKS": ["10.0.0.0/33"]}, "not a network"),
                       ({"TES_S3_BUCKETS": [{"bucket": "caesar", "users": "*", "access": "all"}]}, "'access'"),
                       ({"STORAGE": "s3", "S3_BUCKET": "caesar", "TES_S3_BUCKETS": [
                           {"bucket": "caesar", "users": "*", "access": "read"}]}, "service's own storage"),
                       ({"AUTH_USERS": {"alice": {"s3": {"access_key_id": "k"}}}}, "AUTH_USERS.alice.s3")):
        with pytest.raises(AccessConfigError, match=words):
            create_app(embedded_settings(tmp_path / "var", **bad))
