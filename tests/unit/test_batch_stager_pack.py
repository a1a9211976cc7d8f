"""The AWS Batch stager's result tarball (workers/backends/batch_stager.py, run by the image's Python): ISA-L's gzip
when python-isal is importable there, zlib's otherwise; standard gzip that `tar -xzf` reads either way, with the
sha256 of every file it holds."""
from __future__ import annotations

import builtins
import hashlib
import os
import subprocess
import tarfile

import pytest
from isal import igzip

from workers.backends import batch_stager


def _job_dir(root):
    (root / "out").mkdir()
    (root / "inputs").mkdir()                       # skipped: staged inputs are not outputs
    (root / "inputs" / "big.fits").write_bytes(b"x" * 1000)
    (root / "out" / "image.fits").write_bytes(os.urandom(200_000) + bytes(300_000))
    (root / "stdout.log").write_text("done\n")
    stderr = root.parent / "stderr.log"
    stderr.write_text("warning: none\n")
    return stderr


def _without_isal(monkeypatch):
    real_import = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name == "isal" or name.startswith("isal."):
            raise ImportError("no python-isal in this image")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)


@pytest.mark.parametrize("image_has_isal", [True, False])
def test_the_result_tarball_is_standard_gzip_with_every_output(tmp_path, monkeypatch, image_has_isal):
    work = tmp_path / "job"
    work.mkdir()
    stderr = _job_dir(work)
    if not image_has_isal:
        _without_isal(monkeypatch)
    monkeypatch.chdir(work)
    tar_path = tmp_path / "result.tar.gz"
    writer = batch_stager.gzip_writer(tmp_path / "probe.gz")
    writer.close()
    assert isinstance(writer, igzip.IGzipFile) is image_has_isal
    files = batch_stager.pack(str(stderr), str(tar_path))
    assert set(files) == {"out/image.fits", "stdout.log", "stderr.log"}
    listed = subprocess.run(["tar", "-tzf", str(tar_path)], capture_output=True, text=True, check=True).stdout.split()
    assert set(listed) == {"out/", "out/image.fits", "stdout.log", "stderr.log"}
    subprocess.run(["gzip", "-t", str(tar_path)], check=True)
    with tarfile.open(tar_path, "r:gz") as tar:
        for name, digest in files.items():
            member = tar.extractfile(name)
            assert member is not None
            assert hashlib.sha256(member.read()).hexdigest() == digest
    assert files["out/image.fits"] == hashlib.sha256((work / "out" / "image.fits").read_bytes()).hexdigest()
