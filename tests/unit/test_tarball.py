"""caesar_rest.tarball: a job directory as a streamed tar.gz that tar(1) and Python read back, with links kept as
links, odd files left out, exclusions and in-memory files honoured, and files that change while read kept whole."""
from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from caesar_rest.tarball import files_in_memory, stream_tar_gz, tar_gz

PREFIX = "job_69ca62d7-5098-4fe7-a675-63895a2d06b1"


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    root = tmp_path / "job"
    (root / "inputs").mkdir(parents=True)
    (root / "out" / "deep").mkdir(parents=True)
    (root / "inputs" / "image.fits").write_bytes(b"SIMPLE" * 100)
    (root / "stdout.log").write_text("hello\n")
    (root / "out" / "deep" / "catalog.csv").write_bytes(os.urandom(70_000))
    (root / "caesar_job.json").write_text('{"old": true}')
    (root / "link").symlink_to("/etc/passwd")
    os.mkfifo(root / "pipe")
    return root


def read(chunks) -> tarfile.TarFile:
    data = b"".join(chunks)
    assert len(gzip.decompress(data)) % tarfile.RECORDSIZE == 0       # whole records, as tar(1) writes
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")


def test_every_member_is_under_the_prefix_in_a_stable_order(job_dir):
    with read(stream_tar_gz(job_dir, PREFIX)) as tar:
        names = tar.getnames()
    assert names == [PREFIX] + [f"{PREFIX}/{n}" for n in
                                ["inputs", "out", "caesar_job.json", "link", "stdout.log", "inputs/image.fits",
                                 "out/deep", "out/deep/catalog.csv"]]
    with read(stream_tar_gz(job_dir, PREFIX)) as again:
        assert again.getnames() == names


def test_contents_and_modes_come_back(job_dir):
    (job_dir / "stdout.log").chmod(0o640)
    with read(stream_tar_gz(job_dir, PREFIX, level=1, chunk=4096)) as tar:
        csv = tar.extractfile(f"{PREFIX}/out/deep/catalog.csv").read()
        log = tar.getmember(f"{PREFIX}/stdout.log")
        assert csv == (job_dir / "out" / "deep" / "catalog.csv").read_bytes()
        assert log.mode == 0o640 and tar.extractfile(log).read() == b"hello\n"


def test_a_symlink_is_stored_as_a_link_never_followed_and_a_fifo_is_left_out(job_dir):
    with read(stream_tar_gz(job_dir, PREFIX)) as tar:
        link = tar.getmember(f"{PREFIX}/link")
        assert link.issym() and link.linkname == "/etc/passwd" and link.size == 0
        assert f"{PREFIX}/pipe" not in tar.getnames()


def test_excluded_directories_and_in_memory_files(job_dir):
    chunks = stream_tar_gz(job_dir, PREFIX, exclude=["inputs"], extra={"caesar_job.json": b'{"new": true}'})
    with read(chunks) as tar:
        names = tar.getnames()
        assert not any(n.startswith(f"{PREFIX}/inputs") for n in names)
        assert names.count(f"{PREFIX}/caesar_job.json") == 1
        assert tar.extractfile(f"{PREFIX}/caesar_job.json").read() == b'{"new": true}'


def test_a_file_that_grows_or_shrinks_while_read_keeps_its_header_s_size():
    def member(name: str, size: int, blocks: list[bytes]):
        info = tarfile.TarInfo(name)
        info.size = size
        return info, lambda: iter(blocks)

    chunks = tar_gz([member("grew", 5, [b"12345", b"678"]), member("shrank", 6, [b"ab"]),
                     *files_in_memory("mem", {"b.txt": b"B", "a.txt": b"A"}, 0)])
    with read(chunks) as tar:
        assert tar.extractfile("grew").read() == b"12345"
        assert tar.extractfile("shrank").read() == b"ab\0\0\0\0"
        assert tar.getnames()[2:] == ["mem/a.txt", "mem/b.txt"]


def test_a_missing_directory_is_an_empty_archive():
    with read(stream_tar_gz(Path("/nonexistent-job-dir"), PREFIX)) as tar:
        assert tar.getnames() == []


def test_the_stream_comes_in_pieces_not_at_once(tmp_path):
    (tmp_path / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    chunks = list(stream_tar_gz(tmp_path, PREFIX, level=1, chunk=256 * 1024))
    assert len(chunks) > 3 and max(len(c) for c in chunks) < 2 * 1024 * 1024


@pytest.mark.parametrize("level", [0, 1, 2, 3, 6, 9])
def test_every_level_is_standard_gzip_that_tar_and_gunzip_read(tmp_path, level):
    """ISA-L makes the stream (0-3 its levels; zlib's 4-9 from an older configuration count as 3): gzip -t and
    tar -xzf, the system's own programs, take it, and the files come back byte for byte."""
    import subprocess

    root = tmp_path / "job"
    (root / "d").mkdir(parents=True)
    text = "".join(f"{i},{i * 0.37:.6f},{i % 97}\n" for i in range(50_000)).encode()
    (root / "d" / "catalog.csv").write_bytes(text)
    (root / "noise.bin").write_bytes(os.urandom(300_000))
    archive = tmp_path / "out.tar.gz"
    archive.write_bytes(b"".join(stream_tar_gz(root, PREFIX, level=level)))
    assert subprocess.run(["gzip", "-t", str(archive)], check=False).returncode == 0
    dest = tmp_path / "x"
    dest.mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(dest)], check=True)
    assert (dest / PREFIX / "d" / "catalog.csv").read_bytes() == text
    assert (dest / PREFIX / "noise.bin").read_bytes() == (root / "noise.bin").read_bytes()
    if level >= 1:     # text compresses (level 0 is ISA-L's fastest, not meant to be small)
        assert archive.stat().st_size < len(text) / 2 + 300_000 * 1.01


def test_a_zlib_scale_level_counts_as_isa_l_s_smallest():
    from caesar_rest.tarball import isal_level

    assert [isal_level(v) for v in (-1, 0, 1, 2, 3, 4, 6, 9)] == [0, 0, 1, 2, 3, 3, 3, 3]
