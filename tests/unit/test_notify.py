"""Notifications without a service: the signature a receiver checks, which events each state produces, the
validation of targets (egress rules at submission), and the payload formats."""
from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime

import pytest

from caesar_rest import notify
from caesar_rest.models import Job
from caesar_rest.states import ALL_STATES, TERMINAL_STATES

SECRET = "s3cret"
BODY = b'{"event":"finished","job_id":"x"}'


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body():
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert notify.sign(SECRET, 1700000000, BODY) == f"sha256={expected}"
    headers = notify.headers(SECRET, BODY, "finished", 7, "job-1", now=1700000000.5)
    assert headers[notify.TIMESTAMP_HEADER] == "1700000000"
    assert headers[notify.SIGNATURE_HEADER] == f"sha256={expected}"
    assert headers[notify.EVENT_HEADER] == "finished" and headers[notify.DELIVERY_HEADER] == "7"
    assert notify.SIGNATURE_HEADER not in notify.headers(None, BODY, "finished", 7, "job-1")   # no secret: unsigned


def test_verify_refuses_another_body_key_or_an_old_timestamp():
    signature = notify.sign(SECRET, 1700000000, BODY)
    assert notify.verify(SECRET, "1700000000", signature, BODY, now=1700000100)
    assert not notify.verify(SECRET, "1700000000", signature, BODY + b" ", now=1700000100)     # body changed
    assert not notify.verify("other", "1700000000", signature, BODY, now=1700000100)           # another key
    assert not notify.verify(SECRET, "1700000001", signature, BODY, now=1700000100)            # timestamp changed
    assert not notify.verify(SECRET, "1700000000", signature, BODY, now=1700000000 + 301)      # a replay, later
    assert not notify.verify(SECRET, None, signature, BODY) and not notify.verify(SECRET, "x", signature, BODY)


@pytest.mark.parametrize("state, events", [
    ("PENDING", ("changed",)), ("STARTED", ("changed",)), ("RUNNING", ("started", "changed")),
    ("SUCCESS", ("succeeded", "finished", "changed")), ("FAILURE", ("failed", "finished", "changed")),
    ("TIMED-OUT", ("failed", "finished", "changed")), ("CANCELED", ("failed", "finished", "changed")),
    ("ABORTED", ("failed", "finished", "changed"))])
def test_each_state_produces_its_events(state, events):
    assert notify.events_for(state) == events


def test_every_state_is_mapped_and_every_end_is_finished_and_exactly_one_of_succeeded_or_failed():
    for state in ALL_STATES:
        names = notify.events_for(state)
        assert "changed" in names and set(names) <= set(notify.EVENTS)
        assert ("finished" in names) == (state in TERMINAL_STATES)
        if state in TERMINAL_STATES:
            assert ("succeeded" in names) != ("failed" in names)


def test_a_subscription_gets_the_most_specific_event_it_asked_for_once():
    assert notify.matching("SUCCESS", ["started", "finished"]) == ("finished",)
    assert notify.matching("SUCCESS", ["changed", "succeeded", "finished"]) == ("succeeded", "finished", "changed")
    assert notify.matching("FAILURE", ["succeeded"]) == ()
    assert notify.matching("STARTED", ["started", "finished"]) == ()
    assert notify.matching("RUNNING", ["finished", "started"]) == ("started",)


SETTINGS = {"EGRESS_ALLOWED_NETWORKS": ["127.0.0.2/32"]}


@pytest.mark.parametrize("url, words", [
    ("ftp://example.org/hook", "not an http(s) URL"), ("example.org/hook", "not an http(s) URL"),
    ("http:///hook", "names no host"), ("http://user:pw@example.org/", "no credentials"),
    ("http://example.org:99999/", "not a URL"), ("http://exa mple.org/", "without spaces"),
    ("http://127.0.0.1:8080/hook", "loopback"), ("http://[::1]/hook", "loopback"),
    ("http://10.0.0.5/hook", "private"), ("http://169.254.169.254/latest", "link-local"),
    ("http://2130706433/", "loopback"), (42, "must be an http(s) URL")])
def test_a_bad_or_refused_target_is_refused_naming_the_problem(url, words):
    with pytest.raises(notify.InvalidSubscription, match=re.escape(words)) as info:
        notify.check_url(url, SETTINGS, "notify.url")
    assert info.value.details["field"] == "notify.url"


def test_an_allowed_network_or_a_name_passes_at_submission():
    assert notify.check_url("http://127.0.0.2:8000/hook", SETTINGS) == "http://127.0.0.2:8000/hook"
    assert notify.check_url("https://hooks.example.org/x?y=1", SETTINGS)      # a name is checked when resolved


def test_events_and_the_request_field_are_checked():
    assert notify.check_events(["finished", "started", "finished"]) == ["finished", "started"]
    for bad, words in ((["done"], "unknown event 'done'"), ([], "non-empty list"), ("started", "non-empty list")):
        with pytest.raises(notify.InvalidSubscription, match=words):
            notify.check_events(bad)
    assert notify.parse_request({"url": "http://h/"}) == [
        {"url": "http://h/", "events": ["started", "finished"], "fmt": "caesar", "field": "notify"}]
    assert [t["field"] for t in notify.parse_request([{"url": "a"}, {"url": "b"}])] == ["notify[0]", "notify[1]"]
    with pytest.raises(notify.InvalidSubscription, match="unknown field 'secret'"):
        notify.parse_request({"url": "http://h/", "secret": "x"})
    with pytest.raises(notify.InvalidSubscription, match="must be an object"):
        notify.parse_request("http://h/")


def test_the_payload_formats():
    at = datetime(2026, 12, 3, 6, 1, tzinfo=UTC).replace(tzinfo=None)      # stored naive, in UTC
    job = Job(id="j1", owner="alice", kind="tes", app="tes", state="SUCCESS", status="Done", exit_status=0,
              cancel_requested=False, tag=None, extra={"tes": {"name": "t", "executors": []}}, backend="local",
              submit_date=at, start_date=None, end_date=at,
              run_date=None, elapsed=None, pid=None, host=None)
    ev = notify.Event("finished", ("finished",), "SUCCESS", "Done", at)
    caesar = notify.RENDERERS["caesar"](job, ev)
    assert caesar["event"] == "finished" and caesar["job_id"] == "j1" and caesar["state"] == "SUCCESS"
    assert caesar["at"] == "2026-12-03T06:01:00Z" and caesar["status"] == "Done"
    tes = notify.RENDERERS["tes"](job, ev)
    assert tes["event"] == "finished" and tes["task"]["id"] == "j1" and tes["task"]["state"] == "COMPLETE"
    assert "system_logs" not in tes["task"]["logs"][0]                                         # the BASIC view


def test_backoff_doubles_up_to_its_cap():
    from workers.notify import backoff

    settings = {"NOTIFY_BACKOFF": 2.0, "NOTIFY_BACKOFF_MAX": 20.0}
    assert [backoff(settings, n) for n in range(1, 7)] == [2, 4, 8, 16, 20, 20]


def test_a_format_registered_elsewhere_is_imported_where_it_is_first_used(monkeypatch):
    """A worker may never import the module of another API's format: RENDERER_MODULES names it, renderer() loads
    it (here the standard json module stands in: it registers nothing, so the name stays unknown)."""
    monkeypatch.setitem(notify.RENDERER_MODULES, "x-test", "json")
    assert notify.renderer("x-test") is None and notify.renderer("caesar") is notify.RENDERERS["caesar"]

    def render(job, ev):
        return {"event": ev.name}

    notify.register_renderer("x-test", render, module="json")
    try:
        assert notify.renderer("x-test") is render
    finally:
        notify.RENDERERS.pop("x-test")


def test_a_try_at_a_refused_address_connects_nowhere_and_is_not_retried():
    from workers.notify import attempt

    settings = {"NOTIFY_TIMEOUT": 1, "NOTIFY_SECRET": None, "EGRESS_ALLOWED_NETWORKS": []}
    status, error, permanent, _took = attempt(settings, "http://127.0.0.1:9/hook", 1, "job-1", "finished", {})
    assert status is None and permanent
    assert error == ("refused by the egress rules: 127.0.0.1: a loopback address, refused "
                     "(EGRESS_ALLOWED_NETWORKS does not list it)")


@pytest.mark.parametrize("key, value", [("NOTIFY_ATTEMPTS", 0), ("NOTIFY_THREADS", 0), ("NOTIFY_TIMEOUT", 0),
                                        ("NOTIFY_BACKOFF", -1), ("NOTIFY_SWEEP_INTERVAL", 0), ("NOTIFY_SECRET", "")])
def test_unusable_notify_settings_stop_the_service_at_start(tmp_path, key, value):
    from caesar_rest import create_app
    from caesar_rest.config import SettingsError

    from ..support import embedded_settings

    with pytest.raises(SettingsError, match=key):
        create_app(embedded_settings(tmp_path / "var", **{key: value}))
