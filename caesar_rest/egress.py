"""Egress rules for connections the service makes for a user (TES inputs and outputs, later notification callbacks):
which addresses may be reached, and connections (HTTP(S) with redirects, FTP) that check every address they use.

Addresses that are loopback, link-local, private, unique-local, multicast, unspecified, reserved or otherwise not
globally routable are refused unless EGRESS_ALLOWED_NETWORKS lists a network holding them (an operator's switch).
A name is resolved once per connection, every address it gives is checked, and the socket connects to a checked
address, never to the name again (a second lookup could answer differently: DNS rebinding). Redirects are
followed by hand so that every hop is checked the same way, and only to http(s) (never down from https to http).

Python's ipaddress classifies the addresses; urllib3 does HTTP, with its connection's one name lookup replaced by
a checked one (urllib3 has no hook for checking the address it resolved, so that method is written here).
"""
from __future__ import annotations

import ftplib
import ipaddress
import socket
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 10
USER_AGENT = "caesar-rest/1.0"
# Checked in this order; the first that matches names the rule. ipaddress's is_private covers unique-local
# (fc00::/7) and the IANA special-purpose ranges; is_global catches what is left (100.64.0.0/10, ...).
_CLASSES = (("unspecified", "is_unspecified"), ("loopback", "is_loopback"), ("link-local", "is_link_local"),
            ("multicast", "is_multicast"), ("unique-local", None), ("private", "is_private"),
            ("reserved", "is_reserved"))
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")


def redact(url: str) -> str:
    """The URL without a password (ftp://user:secret@host), for messages and logs."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        return parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{hostport}").geturl()
    return url


class EgressError(Exception):
    """A setting of the egress rules is unusable (raised when the rules are built: at start)."""


class EgressRefused(Exception):
    """A connection the rules refuse; str() names the address and the rule."""

    def __init__(self, host: str, address: str, rule: str) -> None:
        super().__init__(f"{host} resolves to {address}, {rule}" if host != address else f"{address}: {rule}")
        self.host, self.address, self.rule = host, address, rule


class Rules:
    """The allowed networks from the settings; refusal(address) says why an address may not be reached."""

    def __init__(self, allowed: Iterable[IPNetwork] = ()) -> None:
        self.allowed = tuple(allowed)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Rules:
        raw = settings.get("EGRESS_ALLOWED_NETWORKS") or []
        if isinstance(raw, str):
            raise EgressError(f"EGRESS_ALLOWED_NETWORKS must be a list of networks (CIDR), not the string {raw!r}")
        networks = []
        for item in raw:
            try:
                networks.append(ipaddress.ip_network(str(item), strict=False))
            except ValueError as exc:
                raise EgressError(f"EGRESS_ALLOWED_NETWORKS: {item!r} is not a network (CIDR): {exc}") from None
        return cls(networks)

    def refusal(self, address: str | IPAddress) -> str | None:
        """None when address may be reached; else the rule that refuses it, as a phrase."""
        ip = ipaddress.ip_address(str(address).split("%", 1)[0])     # fe80::1%eth0: the zone is not the address
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped                                       # ::ffff:127.0.0.1 is 127.0.0.1
        if any(ip in net for net in self.allowed):
            return None
        for name, attr in _CLASSES:
            hit = ip in _UNIQUE_LOCAL if attr is None else getattr(ip, attr)
            if hit:
                article = "an" if name[0] in "aeiou" else "a"
                return f"{article} {name} address, refused (EGRESS_ALLOWED_NETWORKS does not list it)"
        if not ip.is_global:
            return "not a globally routable address, refused (EGRESS_ALLOWED_NETWORKS does not list it)"
        return None

    def check(self, host: str, address: str) -> None:
        rule = self.refusal(address)
        if rule is not None:
            raise EgressRefused(host, address, rule)


def literal_address(host: str | None) -> str | None:
    """The address a URL's host names without any lookup (127.0.0.1, [::1], and the C library's other spellings
    such as 127.1 or 2130706433), or None when the host is a name."""
    if not host:
        return None
    try:
        infos = socket.getaddrinfo(host.strip("[]"), None, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        return None
    return str(infos[0][4][0]) if infos else None


def literal_refusal(rules: Rules, url: str) -> str | None:
    """For a check at submission: why url's host, when it is a literal address, may not be reached; else None."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    address = literal_address(host)
    if address is None:
        return None
    rule = rules.refusal(address)
    return f"{address} is {rule}" if rule else None


def resolve(rules: Rules, host: str, port: int) -> list[tuple[int, int, int, Any]]:
    """(family, type, proto, sockaddr) for host:port, every address checked; EgressRefused when any is refused
    (a name that also points inside is not used at all, whichever address would have been tried first)."""
    infos = socket.getaddrinfo(host.strip("[]"), port, 0, socket.SOCK_STREAM)
    for _family, _type, _proto, _canon, sockaddr in infos:
        rules.check(host, str(sockaddr[0]))
    return [(family, kind, proto, sockaddr) for family, kind, proto, _canon, sockaddr in infos]


def create_connection(rules: Rules, host: str, port: int, timeout: float | None = None,
                      source_address: tuple[str, int] | None = None,
                      socket_options: Iterable[tuple[int, int, Any]] | None = None) -> socket.socket:
    """A TCP connection to host:port made to a checked address (socket.create_connection, with the check)."""
    error: OSError | None = None
    for family, kind, proto, sockaddr in resolve(rules, host, port):
        sock = socket.socket(family, kind, proto)
        try:
            for level, option, value in socket_options or ():
                sock.setsockopt(level, option, value)
            if timeout is not None:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    raise error or OSError(f"{host} has no address")


# ---- HTTP(S) ------------------------------------------------------------------------------------------------------
def _pools() -> tuple[type, type]:
    """urllib3 pools whose connections connect through create_connection (imported late: workers need it,
    the API only for literal checks)."""
    from urllib3 import HTTPConnectionPool, HTTPSConnectionPool
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

    class Checked:
        def __init__(self, *args: Any, egress_rules: Rules, **kwargs: Any) -> None:
            self.egress_rules = egress_rules
            super().__init__(*args, **kwargs)

        def _new_conn(self) -> socket.socket:
            host, port = self._dns_host, self.port   # type: ignore[attr-defined]
            try:
                return create_connection(self.egress_rules, host, port, self.timeout,  # type: ignore[attr-defined]
                                         self.source_address, self.socket_options)     # type: ignore[attr-defined]
            except TimeoutError as exc:
                raise ConnectTimeoutError(self, f"connecting to {host} timed out") from exc
            except socket.gaierror as exc:
                raise NewConnectionError(self, f"cannot resolve {host}: {exc}") from exc  # type: ignore[arg-type]

    class CheckedHTTPConnection(Checked, HTTPConnection):
        pass

    class CheckedHTTPSConnection(Checked, HTTPSConnection):
        pass

    http = type("CheckedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": CheckedHTTPConnection})
    https = type("CheckedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": CheckedHTTPSConnection})
    return http, https


class RedirectRefused(Exception):
    """A redirect the rules refuse (another scheme, https down to http, too many hops)."""


def http_request(rules: Rules, method: str, url: str, timeout: float, headers: Mapping[str, str] | None = None,
                 body: bytes | None = None, max_redirects: int = MAX_REDIRECTS) -> tuple[str, Any]:
    """Send one request, following redirects with every hop checked; returns (final URL, the urllib3 response,
    its body not read: the caller streams it and must close() it). Raises EgressRefused for a refused
    address, RedirectRefused for a refused redirect, urllib3's errors for the rest. No proxy is used: a proxy
    would connect on the service's behalf where the rules cannot see."""
    from urllib3 import Timeout

    http_pool, https_pool = _pools()
    sent = {"User-Agent": USER_AGENT, **(headers or {})}
    for hop in range(max_redirects + 1):
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise RedirectRefused(f"{url!r} is not an http(s) URL")
        pool_class = https_pool if scheme == "https" else http_pool
        pool = pool_class(parts.hostname, parts.port, egress_rules=rules, timeout=Timeout(connect=timeout,
                          read=timeout), retries=False, maxsize=1, block=False)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            response = pool.urlopen(method, target, body=body, headers=sent, redirect=False, retries=False,
                                    preload_content=False, assert_same_host=False)
        except EgressRefused as exc:
            if hop:                                   # say where the redirect led, not only the address
                exc.args = (f"redirected to {redact(url)}: {exc}",)
            raise
        location = response.headers.get("Location")
        if response.status not in REDIRECTS or not location:
            return url, response
        response.close()                  # unread: a redirect's body could be endless
        pool.close()
        following = urljoin(url, location)
        new = urlsplit(following)
        if new.scheme.lower() not in ("http", "https"):
            raise RedirectRefused(f"redirected to {new.scheme or '?'}://, refused (only http and https are followed)")
        if scheme == "https" and new.scheme.lower() == "http":
            raise RedirectRefused("redirected from https down to http, refused")
        if (new.hostname, new.port) != (parts.hostname, parts.port):
            sent = {k: v for k, v in sent.items() if k.lower() not in ("authorization", "cookie")}
        if response.status == 303 or (response.status in (301, 302) and method == "POST"):
            method, body = "GET", None            # what browsers and requests do
        url = following
    raise RedirectRefused(f"more than {max_redirects} redirects")


# ---- FTP ------------------------------------------------------------------------------------------------------------
class FTP(ftplib.FTP):
    """ftplib.FTP whose control connection goes to a checked address. Data connections go to the same address:
    ftplib ignores the address in a PASV reply (trust_server_pasv_ipv4_address is False, kept so here) and
    EPSV names only a port."""

    trust_server_pasv_ipv4_address = False

    def __init__(self, rules: Rules, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.egress_rules = rules

    def connect(self, host: str = "", port: int = 0, timeout: float = -999,
                source_address: tuple[str, int] | None = None) -> str:
        if host:
            self.host = host
        if port > 0:
            self.port = port
        if timeout != -999:
            self.timeout = timeout
        if source_address is not None:
            self.source_address = source_address
        self.sock = create_connection(self.egress_rules, self.host, self.port, self.timeout, self.source_address)
        self.af = self.sock.family
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome

    def makepasv(self) -> tuple[str, int]:
        host, port = super().makepasv()
        self.egress_rules.check(self.host, host)        # the address really used (the control peer's)
        return host, port
