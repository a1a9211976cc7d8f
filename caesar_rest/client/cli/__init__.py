"""`caesar`: the command-line client of caesar-rest, on caesar_rest.client. Exit codes: EXIT below (README, The
caesar command)."""
from __future__ import annotations

import sys

import click

from ... import __version__
from ..errors import APIError, ClientError, TransportError, Unauthorized
from ..profile import DEFAULT_URL, Profile, config_file, save
from .ui import State, emit_json, json_option, note, pass_state

#: The exit codes, documented in the README: a job's end (wait, submit --wait), then the command's own failures.
EXIT = {
    "SUCCESS": 0,
    "FAILURE": 1, "ABORTED": 1,
    "CANCELED": 2,
    "TIMED-OUT": 3,
    "refused": 4,          # the service (or the client-side check of the same rules) refused the request: 4xx
    "auth": 5,             # 401 / 403: not logged in, wrong credentials, not allowed
    "service": 6,          # unreachable, timed out, or a 5xx
    "local": 7,            # a local file missing or unwritable, a config file unreadable
    "usage": 64,           # the command line itself is wrong
    "interrupted": 130,    # Ctrl-C
}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, "--version", prog_name="caesar")
@click.option("--json", "as_json", is_flag=True, help="Machine output only (every command also takes --json).")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for an answer.")
@click.pass_context
def cli(ctx: click.Context, as_json: bool, timeout: float) -> None:
    """Client of a caesar-rest service: upload files, run apps, follow jobs, fetch their output.

    The service and the credentials come from `caesar login` (CAESAR_URL and CAESAR_TOKEN override them).
    Shell completion: eval "$(_CAESAR_COMPLETE=bash_source caesar)" (zsh_source, fish_source)."""
    state = ctx.ensure_object(State)
    state.json = state.json or as_json
    state.timeout = timeout
    ctx.call_on_close(state.close)


@cli.command()
@click.argument("url")
@click.option("--token", help="An API token (AUTH_MODE token or oidc); asked for when --user is not given.")
@click.option("--user", help="HTTP Basic user name (AUTH_MODE basic).")
@click.option("--password", help="HTTP Basic password; asked for when not given.")
@click.option("--anonymous", is_flag=True, help="No credentials (a service with AUTH_MODE none).")
@json_option
@pass_state
def login(state: State, url: str, token: str | None, user: str | None, password: str | None,
          anonymous: bool) -> None:
    """Store URL and your credentials (in the config dir, mode 0600), after checking them against the service.

    With neither --token, --user nor --anonymous, it asks for what the service wants: nothing when it takes
    anonymous requests, else a token or a user name and password."""
    if not url.startswith(("http://", "https://")):
        raise click.UsageError(f"URL must start with http:// or https://, not {url!r}")
    if not (anonymous or user or token):
        scheme = _asks_for(url, state.timeout)
        anonymous = scheme is None
        if scheme == "Basic":
            user = click.prompt("User")
    if anonymous:
        profile = Profile(url=url, auth="none")
    elif user:
        if password is None:
            password = click.prompt("Password", hide_input=True)
        profile = Profile(url=url, auth="basic", user=user, password=password)
    else:
        if token is None:
            token = click.prompt("API token", hide_input=True)
        profile = Profile(url=url, auth="token", token=token)
    with profile.client(state.timeout) as client:
        client.files()          # a 401 here means the credentials do not work: nothing is stored
    path = save(profile)
    if state.json:
        emit_json({"url": url, "auth": profile.auth, "config": str(path)})
    else:
        note(f"logged in to {url} ({profile.auth}); saved in {path}")


def _asks_for(url: str, timeout: float) -> str | None:
    """The authentication scheme the service asks for ("Basic", "Bearer"), or None when it serves anyone."""
    with Profile(url=url).client(timeout) as client:
        try:
            client.files()
        except Unauthorized as exc:
            return exc.challenge or "Bearer"
    return None


@cli.command()
@json_option
@pass_state
def whoami(state: State) -> None:
    """The service and authentication mode in use, and where they come from."""
    profile = state.profile
    where = str(config_file()) if config_file().exists() else "defaults"
    info = {"url": profile.url, "auth": profile.auth, "user": profile.user, "config": where}
    if state.json:
        emit_json(info)
    else:
        click.echo(f"{profile.url} ({profile.auth}{', ' + profile.user if profile.user else ''}) from {where}")


def _register() -> None:
    from .apps import COMMANDS as APP_COMMANDS
    from .files import COMMANDS as FILE_COMMANDS
    from .jobs import COMMANDS as JOB_COMMANDS

    for command in (*FILE_COMMANDS, *APP_COMMANDS, *JOB_COMMANDS):
        cli.add_command(command)


_register()


def _error_code(exc: APIError) -> int:
    if exc.status in (401, 403):
        return EXIT["auth"]
    return EXIT["service"] if exc.status >= 500 else EXIT["refused"]


def main(argv: list[str] | None = None) -> int:
    """The console script: run the command, turn every failure into a message on stderr (and, with --json, its
    JSON on stdout) and a documented exit code."""
    state = State()
    try:
        result = cli.main(args=argv, prog_name="caesar", standalone_mode=False, obj=state)
        return result if isinstance(result, int) else 0
    except click.UsageError as exc:
        exc.show()
        return EXIT["usage"]
    except click.ClickException as exc:
        exc.show()
        return EXIT["local"]
    except (click.Abort, KeyboardInterrupt):
        note("interrupted")
        return EXIT["interrupted"]
    except APIError as exc:
        if state.json:
            emit_json({"error": exc.body, "status": exc.status})
        named = f" [{exc.option}]" if exc.option else ""
        note(f"caesar: {exc.message}{named} ({exc.status} {exc.error})")
        return _error_code(exc)
    except TransportError as exc:
        if state.json:
            emit_json({"error": {"error": "transport", "message": str(exc)}})
        note(f"caesar: {exc}")
        return EXIT["service"]
    except (ClientError, OSError) as exc:
        if state.json:
            emit_json({"error": {"error": "local", "message": str(exc)}})
        note(f"caesar: {exc}")
        return EXIT["local"]


def run() -> None:
    sys.exit(main())


__all__ = ["DEFAULT_URL", "EXIT", "cli", "main", "run"]
