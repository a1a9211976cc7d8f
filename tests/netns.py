"""Hosts of our own on one machine (issue 18's multi-host drill): each a network namespace on a bridge, with its own
mount namespace (a private tmpfs over the shared ROOT path, so no host sees another's files) and its own hostname.

The services of the root namespace listen on 127.0.0.1 only (RabbitMQ's guest and PostgreSQL's pg_hba accept
loopback alone), so the fabric forwards the bridge address's ports to them with socat: a host reaches
`<bridge address>:5672` as it would a broker on another machine. Everything made here (namespaces, veths, the
bridge, the forwarders, the hosts' processes) is removed by close(), at exit, and by sweep() in a later run when the
run that made it died (its pid is in the names). Needs root and iproute2, util-linux (unshare, nsenter) and socat."""
from __future__ import annotations

import atexit
import ipaddress
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from .support import REPO, Proc

PREFIX = "cmh"      # namespaces cmh-<owner pid>-<tag>-<host>; bridge cmb<tag>; host side of a veth cmv<tag><n>
#: <tag>: the pid of the run that owns the bridge and veths of that tag, then one line "<pid> <start time>" for each
#: process of the root namespace it started (the forwarders, moto), killed by sweep() when the owner died
OWNERS = Path("/run/caesar-netns")


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace(ns: str) -> None:
    """SIGKILL whatever still runs in the network namespace, then remove it (its veth ends go with it)."""
    pids = _ip("netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    _ip("netns", "del", ns, check=False)


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner(tag: str) -> tuple[int | None, list[tuple[int, str]]]:
    """The owner's pid of a tag (None: no file, or unreadable) and the root-namespace processes it recorded."""
    try:
        lines = (OWNERS / tag).read_text().split("\n")
        owner = int(lines[0])
    except (OSError, ValueError):
        return None, []
    procs = []
    for line in lines[1:]:
        pid, _sep, started = line.partition(" ")
        if pid.isdigit():
            procs.append((int(pid), started))
    return owner, procs


def _young(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime < 60
    except OSError:
        return False


def sweep() -> list[str]:
    """Remove the namespaces, bridges, veths and root-namespace processes of earlier runs whose process is gone (a
    run killed before its cleanup): each run's tag names its owner's pid in OWNERS, and its namespaces carry it in
    their names. A recorded process is killed only if it is the same process (its start time matches)."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        found = re.fullmatch(rf"{PREFIX}-(\d+)-([0-9a-f]+)-\w+", name)
        if found and not _alive(int(found.group(1))):
            _kill_namespace(name)
            removed.append(name)
    tags = {path.name for path in OWNERS.iterdir()} if OWNERS.is_dir() else set()
    for tag in tags:
        owner, procs = _owner(tag)
        if owner is not None and _alive(owner):
            continue
        if owner is None and _young(OWNERS / tag):       # being written by a run starting now
            continue
        for pid, started in procs:
            if started and _start_time(pid) == started:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                removed.append(f"pid {pid}")
        (OWNERS / tag).unlink(missing_ok=True)
    for line in _ip("-o", "link", check=False).stdout.splitlines():
        found = re.match(r"\d+: (cm[bv])([0-9a-f]{4})(\d*)[@:]", line)
        if found:
            owner, _procs = _owner(found.group(2))
            if owner is None or not _alive(owner):
                _ip("link", "del", "".join(found.groups()), check=False)
                removed.append("".join(found.groups()))
    return removed


def _free_subnet() -> ipaddress.IPv4Network:
    taken = [ipaddress.ip_interface(word).network for line in _ip("-4", "-o", "addr").stdout.splitlines()
             for word in line.split()[3:4]]
    for third in [int.from_bytes(os.urandom(1), "big") for _ in range(64)]:
        net = ipaddress.IPv4Network(f"10.213.{third}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise RuntimeError("no free 10.213.x.0/24 subnet for the bridge")


class Host:
    """One host: a network namespace with eth0 on the bridge, and a holder process whose mount and UTS namespaces
    every process of the host joins (nsenter), so they share one private ROOT and one hostname."""

    def __init__(self, fabric: Fabric, name: str, index: int, root: Path) -> None:
        self.fabric, self.name = fabric, name
        self.ns = f"{PREFIX}-{os.getpid()}-{fabric.tag}-{name}"
        self.address = str(fabric.subnet.network_address + 10 + index)
        self.root = root
        self.procs: list[Proc] = []
        self.veth = f"cmv{fabric.tag}{index}"
        self.holder: subprocess.Popen[bytes] | None = None
        try:
            self._make(index)
        except BaseException:       # half made: removed before the error goes on
            self.close()
            raise

    def _make(self, index: int) -> None:
        fabric, name, root, veth, peer = self.fabric, self.name, self.root, self.veth, f"cmp{self.fabric.tag}{index}"
        _ip("netns", "add", self.ns)
        fabric.namespaces.append(self.ns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", self.ns)
        _ip("link", "set", veth, "master", fabric.bridge)
        _ip("link", "set", veth, "up")
        _ip("link", "set", peer, "name", "eth0", ns=self.ns)
        _ip("addr", "add", f"{self.address}/{fabric.subnet.prefixlen}", "dev", "eth0", ns=self.ns)
        _ip("link", "set", "eth0", "up", ns=self.ns)
        _ip("link", "set", "lo", "up", ns=self.ns)
        _ip("route", "add", "default", "via", fabric.gateway, ns=self.ns)
        # /etc/hosts of its own: its name resolves at once (no DNS is reachable from the namespace).
        hosts = fabric.scratch / f"hosts-{name}"
        hosts.write_text(f"127.0.0.1 localhost\n{self.address} {name}\n")
        root.mkdir(parents=True, exist_ok=True)
        script = (f"hostname {name} && mount -t tmpfs -o mode=0755 tmpfs {root} && mount --bind {hosts} /etc/hosts "
                  f"&& touch {root}/.host-{name} && exec sleep infinity")
        # Not `ip netns exec`: it mounts a sysfs of its own over /sys, which hides the cgroup hierarchies the
        # job sandbox needs.
        holder = self.holder = subprocess.Popen(["unshare", "--mount", "--uts", "--propagation", "private",
                                                 "nsenter", f"--net=/run/netns/{self.ns}", "sh", "-c", script],
                                                start_new_session=True, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not self._holder_ready():
            if holder.poll() is not None:
                error = holder.stderr.read().decode() if holder.stderr else ""
                raise RuntimeError(f"host {name}: its namespace holder exited: {error}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"host {name}: its private ROOT was not mounted in 10 s")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        """The holder's pid: its namespaces are the host's."""
        if self.holder is None:
            raise RuntimeError(f"host {self.name} has no holder")
        return self.holder.pid

    def _holder_ready(self) -> bool:
        return self.path(self.root / f".host-{self.name}").exists()

    def command(self, argv: list[str]) -> list[str]:
        """argv run inside this host (its network, mount and UTS namespaces), in the repository."""
        return ["nsenter", "-t", str(self.pid), "-n", "-m", "-u", f"--wd={REPO}", "--", *argv]

    def spawn(self, argv: list[str], env: Mapping[str, str], log: Path) -> Proc:
        """A process of this host (its own process group), stopped by close()."""
        proc = Proc(self.command(argv), env, log)
        self.procs.append(proc)
        return proc

    def run(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(argv), capture_output=True, text=True, timeout=timeout, check=False)

    def path(self, inside: str | Path) -> Path:
        """Where a path of this host's mount namespace is seen from here (through its holder's root)."""
        return Path(f"/proc/{self.pid}/root{inside}")

    def close(self) -> None:
        for proc in reversed(self.procs):
            try:
                proc.stop(signal.SIGTERM, timeout=20)
            except Exception:       # a cleanup error must not keep the rest from being removed
                pass
        self.procs.clear()
        if self.holder is not None and self.holder.poll() is None:
            os.killpg(self.holder.pid, signal.SIGKILL)
            self.holder.wait()
        _kill_namespace(self.ns)
        # A namespace lives on while anything holds it (seen: a veth outliving its deleted namespace): its pair goes
        # by name.
        _ip("link", "del", self.veth, check=False)


class Fabric:
    """The bridge (with the gateway address, where the forwarded services are reached) and its hosts.
    Use as a context manager; close() is idempotent and also runs at exit."""

    def __init__(self, scratch: Path, forward: Mapping[int, int] | None = None) -> None:
        sweep()
        self.scratch = scratch
        scratch.mkdir(parents=True, exist_ok=True)
        OWNERS.mkdir(parents=True, exist_ok=True)
        while True:
            self.tag = uuid.uuid4().hex[:4]
            try:
                with open(OWNERS / self.tag, "x") as fh:
                    fh.write(str(os.getpid()))
                break
            except FileExistsError:
                continue
        self.bridge = f"cmb{self.tag}"
        self.subnet = _free_subnet()
        self.gateway = str(self.subnet.network_address + 1)
        self.namespaces: list[str] = []
        self.hosts: dict[str, Host] = {}
        self.forwarders: list[subprocess.Popen[bytes]] = []
        self._closed = False
        atexit.register(self.close)
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for port, target in (forward or {}).items():
                self.forward(port, target)
        except BaseException:
            self.close()
            raise

    def forward(self, port: int, target: int, target_host: str = "127.0.0.1") -> None:
        """gateway:port → target_host:target (socat, one child per connection; the peer sees a loopback client)."""
        log = open(self.scratch / f"socat-{port}.log", "ab")  # noqa: SIM115  (socat writes to it until close)
        proc = subprocess.Popen(["socat", f"TCP-LISTEN:{port},bind={self.gateway},fork,reuseaddr,backlog=512",
                                 f"TCP:{target_host}:{target}"], stdout=log, stderr=log, start_new_session=True)
        log.close()
        self.forwarders.append(proc)
        self.own(proc.pid)
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex((self.gateway, port)) == 0:
                    return
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"socat forwarder for port {port} did not start "
                                   f"({(self.scratch / f'socat-{port}.log').read_text()[-500:]})")
            time.sleep(0.02)

    def own(self, pid: int) -> None:
        """A process of the root namespace (the leader of its own process group) that sweep() kills if this run
        dies before close(); close() leaves it to its starter."""
        started = _start_time(pid)
        if started:
            with open(OWNERS / self.tag, "a") as fh:
                fh.write(f"\n{pid} {started}")

    def add_host(self, name: str, root: Path) -> Host:
        """A host whose ROOT (the same path on every host) is a tmpfs of its own."""
        host = Host(self, name, len(self.hosts) + 1, root)
        self.hosts[name] = host
        return host

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for host in reversed(list(self.hosts.values())):
            try:
                host.close()
            except Exception:
                pass
        for ns in self.namespaces:      # a host that failed half-way through its setup
            _kill_namespace(ns)
        for proc in self.forwarders:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        _ip("link", "del", self.bridge, check=False)
        (OWNERS / self.tag).unlink(missing_ok=True)
        atexit.unregister(self.close)

    def __enter__(self) -> Fabric:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
