"""Every backend in the registry keeps the Backend protocol (caesar_rest/backends.py), read from the classes alone:
no engine, pool or server is needed. Also the boundary: the API's modules import no worker module, and importing
the worker package builds no Celery app (the entry module workers/celery.py does)."""
from __future__ import annotations

import inspect
import json
import subprocess
import sys
import typing

import pytest

from caesar_rest.backends import REGISTRY, Backend, BackendBase, BackendNotConfigured, backend_class, get_backend

from ..support import REPO

#: The protocol's methods, by name: every backend has each, with the protocol's parameter names.
PROTOCOL_METHODS = {name: member for name, member in vars(Backend).items()
                    if callable(member) or isinstance(member, (staticmethod, classmethod))
                    if not name.startswith("_") or name == "__init__"}
CLASS_ATTRIBUTES = {"name": str, "blocking": bool, "job_options": tuple, "runs_images": bool, "tes_batch": bool}


def parameters(member: object) -> list[str]:
    function = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
    return list(inspect.signature(function).parameters)


def test_the_protocol_is_what_the_backends_are_held_to():
    # A guard on this test itself: the methods it checks are the protocol's whole, optional ones included.
    assert set(PROTOCOL_METHODS) == {"__init__", "check_job_options", "check_image", "runs_tes", "health", "submit",
                                     "poll", "wait", "cancel", "fetch_outputs", "cleanup", "adopt"}
    assert set(typing.get_type_hints(Backend)) == set(CLASS_ATTRIBUTES)
    assert set(REGISTRY) == {"local", "container", "pulsar", "condor", "batch", "slurm"}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_each_registered_backend_keeps_the_protocol(name):
    cls = backend_class(name)       # the test venv has every extra: a class that cannot be imported fails here
    assert issubclass(cls, BackendBase) and not inspect.isabstract(cls), cls
    hints = typing.get_type_hints(cls)
    for attribute, kind in CLASS_ATTRIBUTES.items():
        assert typing.get_origin(hints.get(attribute)) is typing.ClassVar, (cls, attribute, hints.get(attribute))
        assert isinstance(getattr(cls, attribute), kind), (cls, attribute)
    assert cls.name == name
    assert all(isinstance(option, str) for option in cls.job_options)
    for method, declared in PROTOCOL_METHODS.items():
        implemented = inspect.getattr_static(cls, method)
        assert isinstance(implemented, staticmethod) == isinstance(declared, staticmethod), (cls, method)
        assert isinstance(implemented, classmethod) == isinstance(declared, classmethod), (cls, method)
        assert parameters(implemented) == parameters(declared), (cls, method)
    # check_job_options answers without the backend being built: None for no options, None or a message for
    # options of the wrong type.
    assert cls.check_job_options({}, {}) is None
    odd = cls.check_job_options({}, {option: object() for option in cls.job_options})
    assert odd is None or isinstance(odd, str), (cls, odd)


def test_an_unknown_backend_is_named():
    with pytest.raises(BackendNotConfigured, match="Unknown backend 'kubernetes'"):
        backend_class("kubernetes")
    with pytest.raises(BackendNotConfigured, match="names no class"):
        backend_class("local", {"class": "workers.backends.local:NoSuchBackend"})


class Recorder(BackendBase):
    """A stand-in that is only built, never run: it remembers which settings it was built with (not the mapping
    itself, so that the mapping can be freed, as most backends let it be)."""

    name = "recorder"
    blocking = True

    def __init__(self, settings, options) -> None:
        self.built_for = settings["MARK"]

    def submit(self, job):
        raise NotImplementedError

    def poll(self, handle):
        raise NotImplementedError

    def cancel(self, handle):
        raise NotImplementedError

    def fetch_outputs(self, handle, dest):
        raise NotImplementedError

    def cleanup(self, handle):
        raise NotImplementedError


def test_an_instance_serves_only_the_settings_it_was_built_for():
    # One instance per name and settings object; a freed mapping's id, reused by the next, gets no old instance.
    for mark in range(200):
        settings = {"MARK": mark, "BACKENDS": {"recorder": {"class": f"{__name__}:Recorder"}}}
        assert get_backend(settings, "recorder").built_for == mark
        assert get_backend(settings, "recorder") is get_backend(settings, "recorder")


def fresh_python(code: str) -> str:
    """code in an interpreter of its own (isolated: no PYTHONPATH, no user site), the repository on its path."""
    done = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(REPO)!r})\n{code}"],
                          cwd="/", capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


# Optional dependency of each backend, blocked in a fresh interpreter: the error names the extra to install.
EXTRAS = {"batch": "boto3", "container": "docker", "pulsar": "requests"}


@pytest.mark.parametrize("name", sorted(EXTRAS))
def test_a_missing_extra_is_named(name):
    told = fresh_python(f"sys.modules[{EXTRAS[name]!r}] = None\n"
                        "from caesar_rest.backends import BackendNotConfigured, backend_class\n"
                        "try:\n"
                        f"    backend_class({name!r})\n"
                        "except BackendNotConfigured as exc:\n"
                        "    print(exc)")
    assert f"pip install 'caesar-rest[{name}]'" in told, told


def test_missing_htcondor_bindings_are_named():
    # The bindings are imported when the backend is built (their import sets up process-wide state).
    told = fresh_python("sys.modules['htcondor2'] = None\n"
                        "from caesar_rest.backends import BackendNotConfigured, backend_class\n"
                        "try:\n"
                        "    backend_class('condor')({}, {})\n"
                        "except BackendNotConfigured as exc:\n"
                        "    print(exc)")
    assert "pip install 'caesar-rest[condor]'" in told, told


def test_the_core_imports_no_worker_module():
    loaded = json.loads(fresh_python(
        "import json\n"
        "import caesar_rest, caesar_rest.backends, caesar_rest.api\n"
        "import caesar_rest.api.ops, caesar_rest.api.jobs, caesar_rest.jobs, caesar_rest.tes_task\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'workers')))"))
    assert loaded == []


def test_importing_the_workers_builds_no_celery_app():
    made = json.loads(fresh_python(
        "import json\n"
        "import workers\n"
        "bare = 'celery' in sys.modules or hasattr(workers, 'app') or hasattr(workers, 'celery')\n"
        "import workers.tasks, workers.backends.local\n"
        "from celery import _state\n"
        "print(json.dumps([bare, len(_state._apps)]))"))
    assert made == [False, 0], "importing workers (or its tasks) built a Celery app; only workers.celery may"
