"""Notifications against the real API, worker and control-worker processes and real local HTTP receivers: delivered
on started and finished, signed (the receiver checks the HMAC), retried with backoff while the receiver is down,
refused by the egress rules at submission and at delivery, lost messages found by the sweep, visible to the
owner only, and never in a job's way."""
from __future__ import annotations

import socket
import time

from ..support import API, wait_state, wait_until
from .conftest import PEER, Receiver


def _finished(client, job_id: str, timeout: float = 60) -> dict:
    return wait_state(client.status, job_id, timeout=timeout)


def _deliveries(client, job_id: str) -> list[dict]:
    return [d for s in client.notifications(job_id)["subscriptions"] for d in s["deliveries"]]


def _settled(client, job_id: str, count: int):
    """The job's deliveries once `count` of them exist and none is pending."""
    def check():
        found = _deliveries(client, job_id)
        return found if len(found) >= count and all(d["state"] != "pending" for d in found) else None
    return check


def test_started_and_finished_are_delivered_signed_and_recorded(stack, receiver):
    r = stack.alice.submit({"url": receiver.url(), "events": ["started", "finished"]}, message="hi")
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert _finished(stack.alice, job_id)["state"] == "SUCCESS"
    wait_until(lambda: len(receiver.events(job_id)) >= 2, 30, "two notifications")
    assert receiver.events(job_id) == ["started", "finished"]                   # in order, once each
    started, finished = (x for x in receiver.requests if x["headers"].get("X-Caesar-Job") == job_id)
    assert started["signed"] and finished["signed"]                              # the receiver's own HMAC check
    assert started["body"]["state"] == "RUNNING" and started["body"]["job_id"] == job_id
    assert finished["body"]["state"] == "SUCCESS" and finished["body"]["events"] == ["finished"]
    assert finished["body"]["exit_status"] == 0 and finished["body"]["app"] == "sleeper"
    assert finished["headers"]["X-Caesar-Event"] == "finished" and finished["headers"]["Content-Type"] == \
        "application/json"
    report = wait_until(_settled(stack.alice, job_id, 2), 30, "both delivered")
    assert [(d["event"], d["job_state"], d["state"]) for d in report] == [
        ("started", "RUNNING", "delivered"), ("finished", "SUCCESS", "delivered")]
    assert all(len(d["attempts"]) == 1 and d["attempts"][0]["http_status"] == 204 and
               d["attempts"][0]["error"] is None for d in report)


def test_every_change_and_a_tes_task_through_its_tags(stack, receiver):
    r = stack.alice.submit({"url": receiver.url("/all"), "events": ["changed"]})
    job_id = r.json()["job_id"]
    _finished(stack.alice, job_id)
    wait_until(lambda: len(receiver.events(job_id)) >= 3, 30, "three changes")
    assert [x["body"]["state"] for x in receiver.requests if x["path"] == "/all"] == ["STARTED", "RUNNING", "SUCCESS"]

    task = {"executors": [{"image": "alpine", "command": ["true"]}],
            "tags": {"caesar.notify.url": receiver.url("/tes"), "caesar.notify.events": "succeeded"}}
    r = stack.alice.call("POST", "/ga4gh/tes/v1/tasks", json=task)
    assert r.status_code == 200, r.text
    task_id = r.json()["id"]
    wait_until(lambda: receiver.events(task_id), 60, "the TES task's notification")
    (sent,) = [x for x in receiver.requests if x["path"] == "/tes"]
    assert sent["signed"] and sent["body"]["event"] == "succeeded"
    assert sent["body"]["task"]["id"] == task_id and sent["body"]["task"]["state"] == "COMPLETE"
    bad = {**task, "tags": {"caesar.notify.url": "http://10.1.2.3/hook"}}
    r = stack.alice.call("POST", "/ga4gh/tes/v1/tasks", json=bad)
    assert r.status_code == 400 and "private" in r.json()["message"], r.text


def test_a_canceled_job_is_failed_and_finished(stack, receiver):
    job_id = stack.alice.submit({"url": receiver.url("/cancel"), "events": ["failed", "finished", "succeeded"]},
                                seconds=120).json()["job_id"]
    wait_state(stack.alice.status, job_id, ["RUNNING"], timeout=60)
    assert stack.alice.call("POST", f"{API}/job/{job_id}/cancel").status_code == 200
    wait_until(lambda: receiver.events(job_id), 30, "the cancel's notification")
    (sent,) = [x for x in receiver.requests if x["path"] == "/cancel"]        # one request for the change
    assert sent["body"]["event"] == "failed" and sent["body"]["events"] == ["failed", "finished"]
    assert sent["body"]["state"] == "CANCELED" and sent["signed"]


def test_a_receiver_down_at_first_gets_it_after_retries(stack, receivers):
    down = Receiver()                    # its port is known, nothing listens there yet
    receivers.append(down)
    job_id = stack.alice.submit({"url": down.url(), "events": ["finished"]}).json()["job_id"]
    assert _finished(stack.alice, job_id)["state"] == "SUCCESS"       # the job did not wait for its receiver

    def failed_tries():
        found = _deliveries(stack.alice, job_id)
        return found and len(found[0]["attempts"]) >= 3 and found[0]
    pending = wait_until(failed_tries, 30, "three failed tries")
    assert pending["state"] == "pending" and pending["next_try"]
    assert all(a["http_status"] is None and "cannot connect" in a["error"] and a["next_try"]
               for a in pending["attempts"]), pending["attempts"]
    down.start()
    wait_until(lambda: down.events(job_id), 30, "the notification, once the receiver is up")
    (delivery,) = wait_until(_settled(stack.alice, job_id, 1), 30, "delivered")
    assert delivery["state"] == "delivered" and len(delivery["attempts"]) >= 4
    assert delivery["attempts"][-1]["http_status"] == 204 and delivery["attempts"][-1]["next_try"] is None
    times = [a["at"] for a in delivery["attempts"]]
    assert times == sorted(times) and down.requests[0]["signed"] and down.events(job_id) == ["finished"]


def test_a_refused_literal_address_is_a_400_and_no_job(stack):
    def mine() -> int:
        return stack.alice.call("GET", f"{API}/jobs").json()["total"]

    before = mine()
    for notify, field, words in (
            ({"url": "http://127.0.0.1:8080/hook"}, "notify.url", "loopback"),
            ({"url": "http://[::ffff:10.0.0.1]/hook"}, "notify.url", "private"),
            ({"url": "ftp://example.org/hook"}, "notify.url", "not an http(s) URL"),
            ({"url": "https://example.org/hook", "events": ["done"]}, "notify.events", "unknown event 'done'"),
            ([{"url": "https://example.org/a"}, {"url": "http://169.254.169.254/"}], "notify[1].url", "link-local"),
            ({"url": "https://example.org/hook", "method": "PUT"}, "notify.method", "unknown field")):
        r = stack.alice.submit(notify)
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["field"] == field and words in body["message"], body
    assert mine() == before


def test_a_name_resolving_to_loopback_is_a_failed_attempt_naming_the_rule(stack):
    """The control worker resolves internal.test to 127.0.0.1 (its /etc/hosts), where a service listens: the
    API takes the name (a name is checked when resolved), the delivery is refused, named, and not retried."""
    inside = socket.create_server(("127.0.0.1", 0))
    inside.settimeout(0.1)
    try:
        port = inside.getsockname()[1]
        job_id = stack.alice.submit({"url": f"http://internal.test:{port}/hook", "events": ["finished"]}
                                    ).json()["job_id"]
        assert _finished(stack.alice, job_id)["state"] == "SUCCESS"
        (delivery,) = wait_until(_settled(stack.alice, job_id, 1), 30, "the refused delivery")
        assert delivery["state"] == "failed" and len(delivery["attempts"]) == 1
        error = delivery["attempts"][0]["error"]
        assert "internal.test resolves to 127.0.0.1" in error and "loopback" in error and \
            "EGRESS_ALLOWED_NETWORKS" in error, error
        try:
            inside.accept()
            raise AssertionError("the service on 127.0.0.1 was reached")
        except TimeoutError:
            pass
    finally:
        inside.close()


def test_a_name_resolving_where_it_may_is_delivered(stack, receiver):
    job_id = stack.alice.submit({"url": receiver.url(host="receiver.test"), "events": ["finished"]}).json()["job_id"]
    _finished(stack.alice, job_id)
    wait_until(lambda: receiver.events(job_id), 30, "delivered by name")
    assert receiver.requests[-1]["headers"]["Host"] == f"receiver.test:{receiver.port}"


def test_another_users_notifications_are_a_404_and_an_admin_sees_them(stack, receiver):
    job_id = stack.alice.submit({"url": receiver.url(), "events": ["finished"]}).json()["job_id"]
    r = stack.bob.call("GET", f"{API}/job/{job_id}/notifications")
    assert r.status_code == 404
    assert r.json() == stack.bob.call("GET", f"{API}/job/{job_id}/status").json()      # as for any of her jobs
    assert r.json()["message"] == f"Job {job_id} not found"
    listed = stack.root_user.notifications(job_id)
    assert listed["subscriptions"][0]["url"] == receiver.url()


def test_a_receiver_that_never_answers_delays_only_its_own_deliveries(stack, receiver):
    """A receiver that accepts and never answers (NOTIFY_TIMEOUT 2 s a try): its job still ends as fast, and
    another job's receiver is told meanwhile."""
    silent = socket.create_server((PEER, 0))            # the kernel accepts; nobody ever reads or answers
    try:
        url = f"http://{PEER}:{silent.getsockname()[1]}/hook"
        t0 = time.monotonic()
        job_id = stack.alice.submit({"url": url, "events": ["changed"]}).json()["job_id"]
        assert _finished(stack.alice, job_id)["state"] == "SUCCESS"
        took = time.monotonic() - t0
        assert took < 15, took                               # three changes, never waiting on 2 s tries
        other = stack.alice.submit({"url": receiver.url(), "events": ["finished"]}).json()["job_id"]
        _finished(stack.alice, other)
        wait_until(lambda: receiver.events(other), 15, "the other receiver's notification")
        found = wait_until(lambda: (d := _deliveries(stack.alice, job_id)) and d[0]["attempts"] and d, 30,
                           "a timed-out try")
        assert found[0]["attempts"][0]["error"] == "no answer in 2 s"
        assert all(d["state"] == "pending" for d in found)   # in order: the later ones wait for the first
        assert all(not d["attempts"] for d in found[1:])
    finally:
        silent.close()


def test_a_lost_message_is_sent_by_the_sweep(stack, receiver):
    """Deliveries published while the control worker is down, and then lost by the broker (the control queue
    emptied), are found by the sweep once it runs again: nothing lost."""
    job_id = None

    def while_down() -> None:
        nonlocal job_id
        job_id = stack.alice.submit({"url": receiver.url("/lost"), "events": ["started", "finished"]}).json()["job_id"]
        _finished(stack.alice, job_id)
        wait_until(lambda: len(_deliveries(stack.alice, job_id)) == 2, 10, "two deliveries written")
        assert stack.lose_control_messages() >= 2

    stack.restart_control(between=while_down)
    assert job_id is not None
    wait_until(lambda: len(receiver.events(job_id)) == 2, 30, "both notifications, by the sweep")
    assert receiver.events(job_id) == ["started", "finished"]
    assert "notify sweep" in stack.control.log()
