"""The TES API driven by the py-tes client against the real API and worker processes: service-info, create,
views, list with paging and filters, cancel, wait; isolation between users; bad requests."""
from __future__ import annotations

import time

import pytest
import requests
import tes as py_tes

from ..support import API, job_processes
from .conftest import BUCKET, TOKENS, Tes, make_client, unique

pytestmark = pytest.mark.usefixtures("checked_py_tes")


def echo_task(name: str, text: str = "hello", exit_code: int = 0, tags: dict | None = None) -> py_tes.Task:
    return py_tes.Task(
        name=name, tags=tags,
        inputs=[py_tes.Input(path="/data/greeting.txt", content=f"{text}\n")],
        executors=[py_tes.Executor(image="alpine", command=["sh", "-c", f"cat /data/greeting.txt; exit {exit_code}"],
                                   workdir="/data")])


def test_service_info_names_storage_and_backend_parameters(tes_stack, files):
    info = make_client(tes_stack).get_service_info()
    assert info.type["artifact"] == "tes" and info.type["version"].startswith("1.1")
    assert f"file://{tes_stack[2]}" in info.storage and "s3://" in info.storage and "ftp://" in info.storage
    assert "time_limit" in info.tes_resources_backend_parameters
    for prefix in ("/ga4gh/tes/v1", "/v1"):     # public: no token needed, on both prefixes
        r = requests.get(f"{tes_stack[0]}{prefix}/service-info", timeout=10)
        assert r.status_code == 200 and r.json()["id"] == info.id


def test_create_then_each_view(tes_stack, tes):
    client = make_client(tes_stack)
    task_id = client.create_task(echo_task(unique("views"), tags={"project": "caesar"}))
    done = client.wait(task_id, timeout=60)
    assert done.state == "COMPLETE"

    minimal = tes.get(task_id, "MINIMAL")
    assert set(minimal) == {"id", "state"} and minimal["state"] == "COMPLETE"
    assert set(tes.call("GET", f"/tasks/{task_id}").json()) == {"id", "state"}     # MINIMAL is the default

    basic = client.get_task(task_id, "BASIC")
    assert basic.executors[0].command[0] == "sh" and basic.tags == {"project": "caesar"}
    assert basic.inputs[0].content is None and basic.inputs[0].path == "/data/greeting.txt"
    log = basic.logs[0]
    assert log.logs[0].exit_code == 0 and log.logs[0].stdout is None and log.system_logs is None
    assert log.start_time and log.end_time and basic.creation_time

    full = client.get_task(task_id, "FULL")
    assert full.inputs[0].content == "hello\n"
    assert full.logs[0].logs[0].stdout == "hello\n" and full.logs[0].logs[0].stderr == ""
    assert full.logs[0].system_logs == [] and full.logs[0].outputs == []

    # Nextflow's spelling of the API, and the caesar-rest view of the same job
    alias = Tes(tes_stack[0], TOKENS["alice"], prefix="/v1").get(task_id, "BASIC")
    assert alias["state"] == "COMPLETE" and alias["logs"][0]["logs"][0]["exit_code"] == 0
    job = requests.get(f"{tes_stack[0]}{API}/job/{task_id}/status", headers=tes.headers, timeout=10).json()
    assert job["state"] == "SUCCESS" and job["exit_status"] == 0


def test_list_pages_and_filters(tes_stack, tes):
    client = make_client(tes_stack)
    prefix = unique("list")
    ids = [client.create_task(echo_task(f"{prefix}-{i}", tags={"batch": prefix, "i": str(i)},
                                        exit_code=1 if i == 4 else 0)) for i in range(5)]
    for task_id in ids:
        client.wait(task_id, timeout=60)

    seen, token = [], None
    while True:                                   # py-tes paging, two at a time, newest first
        page = client.list_tasks(view="MINIMAL", page_size=2, page_token=token)
        seen += [t.id for t in page.tasks]
        token = page.next_page_token
        if not token:
            break
    assert [i for i in seen if i in ids] == ids[::-1] and len(seen) == len(set(seen))

    def listed(**params):
        return [t["id"] for t in tes.call("GET", "/tasks", params={"view": "BASIC", **params}).json()["tasks"]]

    assert listed(name_prefix=prefix) == ids[::-1]
    assert listed(name_prefix=f"{prefix}-3") == [ids[3]]
    assert listed(name_prefix=prefix, state="EXECUTOR_ERROR") == [ids[4]]
    assert listed(name_prefix=prefix, state="COMPLETE") == ids[3::-1]
    assert listed(tag_key="batch", tag_value=prefix) == ids[::-1]
    assert listed(tag_key=["batch", "i"], tag_value=[prefix, "2"]) == [ids[2]]
    assert listed(tag_key=["i", "batch"], tag_value=["", prefix]) == ids[::-1]     # empty value: any value
    assert listed(tag_key="batch", tag_value="nope") == []
    full = tes.call("GET", "/tasks", params={"view": "FULL", "name_prefix": prefix, "page_size": 1}).json()
    assert len(full["tasks"]) == 1 and full["tasks"][0]["logs"][0]["logs"][0]["stdout"] == "hello\n"
    assert full["next_page_token"]


def test_cancel_stops_a_running_task(tes_stack, tes):
    client = make_client(tes_stack)
    task_id = client.create_task(py_tes.Task(name=unique("cancel"), executors=[
        py_tes.Executor(image="alpine", command=["sleep", "120"])]))
    tes.wait(task_id, states=("RUNNING",), timeout=30)
    client.cancel_task(task_id)
    seen = client.get_task(task_id, "MINIMAL").state
    assert seen in ("CANCELING", "CANCELED")
    started = time.time()
    full = tes.wait(task_id, timeout=30)       # py-tes's wait() stops at CANCELING already
    assert full["state"] == "CANCELED" and time.time() - started < 15
    assert any("canceled" in line.lower() for line in full["logs"][0]["system_logs"])
    assert not job_processes(task_id)
    assert tes.call("POST", f"/tasks/{task_id}:cancel").json() == {}       # again: nothing to do, no error


def test_users_see_only_their_own_tasks(tes_stack, tes):
    alice, bob, admin = (make_client(tes_stack, u) for u in ("alice", "bob", "root"))
    task_id = alice.create_task(echo_task(unique("private")))
    bob_raw = Tes(tes_stack[0], TOKENS["bob"])
    assert bob_raw.call("GET", f"/tasks/{task_id}").status_code == 404
    assert bob_raw.call("POST", f"/tasks/{task_id}:cancel").status_code == 404
    assert task_id not in [t.id for t in bob.list_tasks(page_size=2047).tasks]
    assert task_id in [t.id for t in admin.list_tasks(page_size=2047).tasks]
    assert admin.get_task(task_id, "MINIMAL").id == task_id
    r = requests.get(f"{tes_stack[0]}/ga4gh/tes/v1/tasks", timeout=10)
    assert r.status_code == 401
    alice.wait(task_id, timeout=60)


BAD = [
    ({"executors": []}, "executors"),
    ({"name": "x"}, "executors"),
    ({"executors": [{"command": ["true"]}]}, "executors[0].image"),
    ({"executors": [{"image": "alpine"}]}, "executors[0].command"),
    ({"executors": [{"image": "alpine", "command": "echo hi"}]}, "executors[0].command"),
    ({"executors": [{"image": "alpine", "command": ["true"], "workdir": "data"}]}, "executors[0].workdir"),
    ({"executors": [{"image": "alpine", "command": ["true"], "stdout": "out.txt"}]}, "executors[0].stdout"),
    ({"executors": [{"image": "alpine", "command": ["true"], "env": {"A": 1}}]}, "executors[0].env"),
    ({"executors": [{"image": "alpine", "command": ["true"]}], "inputs": [{"path": "data/in", "content": "x"}]},
     "inputs[0].path"),
    ({"executors": [{"image": "alpine", "command": ["true"]}],
      "inputs": [{"path": "/data/../../etc/x", "content": "x"}]},
     "inputs[0].path"),
    ({"executors": [{"image": "alpine", "command": ["true"]}], "inputs": [{"path": "/data/in"}]}, "inputs[0].url"),
    ({"executors": [{"image": "alpine", "command": ["true"]}], "inputs": [{"path": "/data/in", "url": "gs://b/k"}]},
     "inputs[0].url"),
    ({"executors": [{"image": "alpine", "command": ["true"]}], "inputs": [{"path": "/data/in", "url": "file:///etc/passwd"}]},
     "inputs[0].url"),
    ({"executors": [{"image": "alpine", "command": ["true"]}], "outputs": [{"path": "/data/out", "url": "http://h/x"}]},
     "outputs[0].url"),
    ({"executors": [{"image": "alpine", "command": ["true"]}],
      "inputs": [{"path": "/data/d", "url": "http://h/d/", "type": "DIRECTORY"}]}, "inputs[0].url"),
    ({"executors": [{"image": "alpine", "command": ["true"]}], "inputs": [{"path": "/data/d", "content": "x",
                                                                          "type": "DIRECTORY"}]}, "inputs[0].content"),
    ({"executors": [{"image": "alpine", "command": ["true"]}],
      "outputs": [{"path": "/data/*.txt", "url": "s3://b/p", "path_prefix": "/elsewhere"}]}, "outputs[0].path_prefix"),
    ({"executors": [{"image": "alpine", "command": ["true"]}], "tags": {"a": 1}}, "tags"),
    ({"executors": [{"image": "alpine", "command": ["true"], "ignore_error": "yes"}]}, "executors[0].ignore_error"),
    ({"executors": [{"image": "alpine", "command": ["true"]}], "outputs": [{"path": "/data/out"}]}, "outputs[0].url"),
    ({"executors": [{"image": "alpine", "command": ["true"]}], "outputs": [{"path": "/out.txt", "url": f"s3://{BUCKET}/k"}]},
     "outputs[0].path"),
    ({"executors": [{"image": "alpine", "command": ["true"]}], "volumes": ["/usr"]}, "volumes"),
    ({"executors": [{"image": "alpine", "command": ["true"]}],
      "resources": {"backend_parameters": {"VmSize": "big"}, "backend_parameters_strict": True}},
     "resources.backend_parameters.VmSize"),
    ({"executors": [{"image": "alpine", "command": ["true"]}], "resources": {"cpu_cores": 0}}, "resources.cpu_cores"),
    ({"executors": [{"image": "alpine", "command": ["true"]}], "resources": {"ram_gb": "lots"}}, "resources.ram_gb"),
    ({"executors": [{"image": "alpine", "command": ["true"]}],
      "resources": {"backend_parameters": {"time_limit": "soon"}}}, "resources.backend_parameters.time_limit"),
    ([{"executors": []}], "task"),
]


def test_bad_requests_are_400_naming_the_field_and_create_nothing(tes_stack):
    admin = Tes(tes_stack[0], TOKENS["root"])
    alice = Tes(tes_stack[0], TOKENS["alice"])

    def count():
        return len(admin.call("GET", "/tasks", params={"page_size": 2047}).json()["tasks"])

    before = count()
    for body, field in BAD:
        r = alice.call("POST", "/tasks", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["field"] == field and field in r.json()["message"], (body, r.json())
    not_json = alice.call("POST", "/tasks", data="{not json", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400
    assert alice.call("GET", "/tasks", params={"view": "EVERYTHING"}).status_code == 400
    assert alice.call("GET", "/tasks", params={"state": "DONE"}).status_code == 400
    assert alice.call("GET", "/tasks", params={"page_token": "garbage!"}).status_code == 400
    assert alice.call("GET", "/tasks/not-a-task").status_code == 404
    assert count() == before


def test_unsupported_backend_parameters_are_dropped_unless_strict(tes_stack, tes):
    task = tes.run({"executors": [{"image": "alpine", "command": ["true"]}],
                    "resources": {"cpu_cores": 1,
                                  "backend_parameters": {"VmSize": "Standard_D64_v3", "TIME_LIMIT": "30"}}})
    assert task["state"] == "COMPLETE"
    assert task["resources"]["backend_parameters"] == {"time_limit": "30"}      # keys are case-insensitive
    assert any("VmSize" in line for line in task["logs"][0]["system_logs"])
