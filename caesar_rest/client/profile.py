"""Where `caesar login` keeps the service URL and credentials: <config dir>/caesar/config.json, mode 0600
(the config dir is $XDG_CONFIG_HOME, else ~/.config). CAESAR_URL and CAESAR_TOKEN override what it holds."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .client import Client
from .errors import ClientError

DEFAULT_URL = "http://127.0.0.1:8080"


@dataclass
class Profile:
    url: str = DEFAULT_URL
    auth: str = "none"               # none | token | basic
    token: str | None = None
    user: str | None = None
    password: str | None = None

    def client(self, timeout: float = 60.0) -> Client:
        basic = (self.user or "", self.password or "") if self.auth == "basic" else None
        return Client(self.url, token=self.token if self.auth == "token" else None, basic=basic, timeout=timeout)


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "caesar"


def config_file() -> Path:
    return config_dir() / "config.json"


def load(environ: dict[str, str] | None = None) -> Profile:
    """The stored profile (or the default one), with CAESAR_URL and CAESAR_TOKEN applied over it."""
    env = os.environ if environ is None else environ
    profile = Profile()
    path = config_file()
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ClientError(f"{path} is not readable JSON ({exc}); run caesar login again") from None
        known = set(Profile.__dataclass_fields__)
        profile = Profile(**{k: v for k, v in data.items() if k in known})
    if env.get("CAESAR_URL"):
        profile.url = env["CAESAR_URL"]
    if env.get("CAESAR_TOKEN"):
        profile.auth, profile.token = "token", env["CAESAR_TOKEN"]
    return profile


def save(profile: Profile) -> Path:
    """Write the profile readable by its owner only (the directory 0700, the file 0600, never world-readable even
    for a moment: created with that mode, then replaced atomically)."""
    directory = config_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = config_file()
    scratch = path.with_name(f".config.{os.getpid()}.json")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({k: v for k, v in asdict(profile).items() if v is not None}, fh, indent=2)
        os.chmod(scratch, 0o600)
        os.replace(scratch, path)
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise
    return path
