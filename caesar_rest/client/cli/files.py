"""caesar upload, files, download, rm."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .ui import State, bars, emit_json, human_bytes, json_option, note, pass_state, table


def upload_files(state: State, paths: list[Path], tag: str | None,
                 resumable: bool | None = None) -> list[dict[str, Any]]:
    """Upload each file with its own progress bar; the records the service answered, in order. Resumable (tus)
    where the service offers it, unless resumable is False."""
    if state.interactive and resumable is not False and state.client.resumable_uploads() is None:
        note("this service offers no resumable uploads: one request per file (a cut starts it again)")
    records: list[dict[str, Any]] = []
    with bars(state) as shown:
        for path in paths:
            size = path.stat().st_size
            records.append(dict(state.client.upload(path, tag=tag, progress=shown.callback(path.name, size),
                                                    resumable=resumable)))
    return records


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tag", help="Tag the files (caesar files --tag lists them).")
@click.option("--one-request", is_flag=True,
              help="Send each file in one POST /upload, even where the service offers resumable uploads.")
@json_option
@pass_state
def upload(state: State, paths: tuple[Path, ...], tag: str | None, one_request: bool) -> None:
    """Upload FILE... (a progress bar per file); prints each file's uuid.

    Where the service offers resumable uploads (tus 1.0), each file goes in 16 MiB chunks, each checked by its
    sha1; an upload cut off (Ctrl-C, a lost connection, a killed terminal) resumes where it stopped when the same
    file is uploaded again (its upload URL is kept in the config directory's uploads.json)."""
    records = upload_files(state, list(paths), tag, False if one_request else None)
    if state.json:
        emit_json(records if len(records) > 1 else records[0])
        return
    for record in records:
        click.echo(f"{record['uuid']}  {record['filename_orig']}  {human_bytes(record.get('size_bytes'))}  "
                   f"sha256 {record.get('sha256', '')}")


@click.command()
@click.option("--tag", help="Only the files with this tag.")
@json_option
@pass_state
def files(state: State, tag: str | None) -> None:
    """Your uploaded files."""
    records = state.client.files(tag)
    if state.json:
        emit_json(records)
        return
    table(["uuid", "name", "size", "format", "tag", "uploaded"],
          [[r.get("uuid"), r.get("filename_orig"), human_bytes(r.get("size_bytes")), r.get("format"), r.get("tag"),
            str(r.get("date", ""))[:19]] for r in records])


@click.command()
@click.argument("file_uuid", metavar="UUID")
@click.option("-o", "--output", "dest", type=click.Path(path_type=Path),
              help="Where to write it (a file, or a directory); default: its original name here.")
@json_option
@pass_state
def download(state: State, file_uuid: str, dest: Path | None) -> None:
    """Download an uploaded file by its UUID, with progress."""
    with bars(state) as shown:
        path = state.client.download(file_uuid, dest, progress=shown.callback(file_uuid[:8]))
    if state.json:
        emit_json({"uuid": file_uuid, "path": str(path), "size_bytes": path.stat().st_size})
    else:
        click.echo(str(path))


@click.command("rm")
@click.argument("file_uuids", nargs=-1, required=True, metavar="UUID...")
@json_option
@pass_state
def rm(state: State, file_uuids: tuple[str, ...]) -> None:
    """Delete uploaded files (refused while a queued or running job uses one)."""
    answers = [state.client.delete_file(u) for u in file_uuids]
    if state.json:
        emit_json(answers if len(answers) > 1 else answers[0])
    else:
        for answer in answers:
            click.echo(answer.get("status", f"deleted {answer.get('uuid')}"))


COMMANDS = [upload, files, download, rm]
