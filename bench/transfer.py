"""Big transfers over real HTTP (gunicorn): a multipart upload against `cp` of the same file on the same disk,
with the API processes' resident memory sampled from /proc; and a job directory's streamed tar.gz against
`tar -czf` of the same directory. curl is the client in both (it streams from and to disk)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from statistics import median

from sqlalchemy import insert

from caesar_rest import API_PREFIX, storage
from caesar_rest.db import engine_for
from caesar_rest.models import Job, JobEvent, utcnow
from tests.support import free_port

from .report import Figure
from .rows import job_row
from .rss import RssSampler

MiB = 1024 * 1024


def make_random_file(path: Path, size: int) -> str:
    """size bytes of random data; returns its sha256."""
    sha = hashlib.sha256()
    block = 8 * MiB
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            data = os.urandom(min(block, left))
            sha.update(data)
            fh.write(data)
            left -= len(data)
    return sha.hexdigest()


def _timed(cmd: list[str], **kwargs) -> float:
    os.sync()           # dirty pages of the previous step written back first: each step starts from the same state
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, **kwargs)
    return time.perf_counter() - t0


def sha256_seconds(path: Path) -> float:
    """Time to sha256 the file from the page cache in 1 MiB blocks: the floor of any upload that records it."""
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(MiB)
        view = memoryview(buf)
        t0 = time.perf_counter()
        sha = hashlib.sha256()
        while n := fh.readinto(buf):
            sha.update(view[:n])
        return time.perf_counter() - t0


def discard_seconds(src: Path) -> float:
    """The same curl upload to a server that only reads the body (bench/discard.py): the transport ceiling."""
    import socket
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "bench.discard", str(port)],
                              cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        os.sync()
        return _curl(["-o", os.devnull, "-H", "Expect:", "-F", f"file=@{src}", f"http://127.0.0.1:{port}/"])["time_total"]
    finally:
        server.kill()
        server.wait()


def _curl(args: list[str]) -> dict:
    fmt = ('{"code": %{http_code}, "time_total": %{time_total}, "size_upload": %{size_upload}, '
           '"size_download": %{size_download}}')
    done = subprocess.run(["curl", "-sS", "--fail-with-body", "-w", fmt, *args], check=True, capture_output=True,
                          text=True)
    return json.loads(done.stdout[done.stdout.rindex('{"code"'):])


def _discarded(url: str, src: Path) -> float:
    """The same curl upload to bench/discard_wsgi.py on one WSGI server: that server's own ceiling."""
    os.sync()
    out = _curl(["-o", os.devnull, "-H", "Expect:", "-F", f"file=@{src}", url])
    return out["time_total"]


def _upload(server, base: str, src: Path, work: Path) -> tuple[float, int, dict]:
    """One curl upload; (seconds, peak RSS growth of the server's workers, the answer)."""
    with RssSampler(server.worker_pids()) as sampler:
        out = work / "answer.json"
        # No "Expect: 100-continue": uWSGI's HTTP socket does not answer it and curl would wait 1 s (nginx,
        # in front of uWSGI in production, answers it itself).
        os.sync()
        res = _curl(["-o", str(out), "-H", "Expect:", "-F", f"file=@{src}", f"{base}{API_PREFIX}/upload"])
    answer = json.loads(out.read_text())
    Path(answer["path"]).unlink(missing_ok=True)
    return res["time_total"], sampler.growth()[0], answer


def _tus_upload(base: str, src: Path, chunk: int = 64 * MiB) -> tuple[float, float, float, dict]:
    """One resumable upload (tus 1.0, one keep-alive connection, `chunk` bytes a PATCH, as a tus client sends it):
    (seconds in all, seconds of the last PATCH, seconds of the PATCH before it, the file's record). The one before
    is the baseline: late chunks of a big file wait for the disk's writeback (here 80-110 ms early, 250-380 ms
    past 800 MiB), which a median of all of them would hide."""
    import base64

    import requests

    tus = {"Tus-Resumable": "1.0.0"}
    size = src.stat().st_size
    name = base64.b64encode(src.name.encode()).decode()
    os.sync()
    with requests.Session() as http, open(src, "rb") as fh:
        t0 = time.perf_counter()
        made = http.post(f"{base}{API_PREFIX}/uploads", headers={**tus, "Upload-Length": str(size),
                                                                 "Upload-Metadata": f"filename {name}"}, timeout=60)
        made.raise_for_status()
        url = made.headers["Location"]
        url = url if url.startswith("http") else base + url
        times, offset = [], 0
        while offset < size:
            data = fh.read(chunk)
            t = time.perf_counter()
            r = http.patch(url, data=data, timeout=600, headers={
                **tus, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"})
            times.append(time.perf_counter() - t)
            r.raise_for_status()
            offset += len(data)
        total = time.perf_counter() - t0
        record = http.get(url, headers=tus, timeout=60).json()["file"]
    Path(record["path"]).unlink(missing_ok=True)
    return total, times[-1], (times[:-1] or times)[-1], record


def _warm_up(server, base: str, warm: Path, work: Path) -> None:
    """Concurrent small uploads, a few per server process, so every process has served one."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> None:
        slot = work / f"warm-{i}"
        slot.mkdir(exist_ok=True)
        _upload(server, base, warm, slot)

    with ThreadPoolExecutor(max_workers=server.processes * 2) as pool:
        list(pool.map(one, range(server.processes * 4)))


def measure_upload(stack, base: str, size: int, repeats: int) -> list[Figure]:
    """cp, the upload through gunicorn, through uWSGI, sha256 of the file and the discard server, interleaved
    round by round (the disk's writeback and the machine's load move all of them alike), medians reported."""
    from tests.deploy.stack import Nginx, ensure_nginx

    from .stack import UWSGI, Gunicorn

    work = stack.root / "upload"
    work.mkdir(exist_ok=True)
    src = work / "big.bin"
    sha = make_random_file(src, size)
    warm = work / "warm.bin"
    make_random_file(warm, MiB)           # each server process's first upload (imports, buffers) is not measured
    _warm_up(stack.api, base, warm, work)
    uwsgi = UWSGI(stack.overrides, stack.root, stack.api.processes, stack.api.threads)
    # Each server's own ceiling: the discard app under the same server and settings, up beside the API.
    g_discard = Gunicorn(stack.overrides, stack.logs / "gunicorn-discard.log", stack.api.processes,
                         stack.api.threads, app="bench.discard_wsgi:app")
    u_discard = UWSGI(stack.overrides, stack.root, stack.api.processes, stack.api.threads,
                      app="bench.discard_wsgi:app")
    # Production's pair: nginx (nginx/caesar-rest.conf, request buffering off) in front of each uWSGI's socket.
    nginx_bin = ensure_nginx()
    nginx = Nginx(nginx_bin, work / "nginx-api", free_port(), str(uwsgi.rundir / "uwsgi.sock"),
                  stack.settings["DATA_DIR"])
    n_discard = Nginx(nginx_bin, work / "nginx-discard", free_port(), str(u_discard.rundir / "uwsgi.sock"),
                      stack.settings["DATA_DIR"])
    cp_times, runs, uwsgi_runs, nginx_runs, sha_times, discard_times = [], [], [], [], [], []
    g_ceiling, u_ceiling, n_ceiling, tus_runs = [], [], [], []
    try:
        uwsgi_base = uwsgi.start()
        _warm_up(uwsgi, uwsgi_base, warm, work)
        g_discard.start()
        g_base, u_base = f"http://127.0.0.1:{g_discard.port}/discard", u_discard.start() + "/discard"
        nginx.start()
        n_discard.start()
        n_discard_base = f"{n_discard.base}{API_PREFIX}/upload"        # a location with buffering off
        _warm_up(uwsgi, nginx.base, warm, work)
        for base_ in (g_base, u_base, n_discard_base):
            _discarded(base_, warm)
        for _ in range(repeats):
            dst = work / "copy.bin"
            cp_times.append(_timed(["cp", str(src), str(dst)]))
            dst.unlink()
            runs.append(_upload(stack.api, base, src, work))
            tus_runs.append(_tus_upload(base, src))
            uwsgi_runs.append(_upload(uwsgi, uwsgi_base, src, work))
            sha_times.append(sha256_seconds(src))
            discard_times.append(discard_seconds(src))
            g_ceiling.append(_discarded(g_base, src))
            u_ceiling.append(_discarded(u_base, src))
            nginx_runs.append(_upload(uwsgi, nginx.base, src, work))
            n_ceiling.append(_discarded(n_discard_base, src))
    finally:
        nginx.stop()
        n_discard.stop()
        uwsgi.stop()
        g_discard.stop()
        u_discard.stop()
    src.unlink()
    warm.unlink()
    cp_time, up_time, uwsgi_time = median(cp_times), median(r[0] for r in runs), median(r[0] for r in uwsgi_runs)
    growth = max(r[1] for r in runs)
    correct = all(r[2].get("size_bytes") == size and r[2].get("sha256") == sha
                  for r in runs + uwsgi_runs + nginx_runs)
    rate = lambda seconds: size / seconds / MiB
    throughput, baseline, uwsgi_throughput = rate(up_time), rate(cp_time), rate(uwsgi_time)
    sha_rate, discard_rate = rate(median(sha_times)), rate(median(discard_times))
    g_ceiling_rate, u_ceiling_rate = rate(median(g_ceiling)), rate(median(u_ceiling))
    nginx_throughput, n_ceiling_rate = rate(median(r[0] for r in nginx_runs)), rate(median(n_ceiling))
    tus_correct = all(r[3].get("size_bytes") == size and r[3].get("sha256") == sha for r in tus_runs)
    tus_rate = rate(median(r[0] for r in tus_runs))
    tus_last, tus_chunk = median(r[1] for r in tus_runs) * 1000, median(r[2] for r in tus_runs) * 1000
    details = {"size_bytes": size, "repeats": repeats, "upload_s": [r[0] for r in runs], "cp_s": cp_times,
               "rss_growth_bytes": [r[1] for r in runs], "sha256_and_size_match": correct,
               "client": "curl -H 'Expect:' -F file=@... (multipart, Content-Length)", "server": "gunicorn",
               "uwsgi_upload_s": [r[0] for r in uwsgi_runs], "uwsgi_rss_growth_bytes": [r[1] for r in uwsgi_runs],
               "sha256_of_file_s": sha_times, "curl_to_discard_server_s": discard_times,
               "sha256_MiB_per_s": round(sha_rate, 1), "curl_to_discard_MiB_per_s": round(discard_rate, 1),
               "ratio_to_sha256_floor": round(throughput / sha_rate, 3),
               "ratio_to_transport_ceiling": round(throughput / discard_rate, 3),
               "discard_app_gunicorn_s": g_ceiling, "discard_app_uwsgi_s": u_ceiling,
               "cp_MiB_per_s": round(baseline, 1),
               "how": "os.sync() before every timed step; cp, gunicorn, uWSGI, sha256, discard interleaved per round"}
    return [
        Figure("upload_throughput", f"upload {size // MiB:,} MiB (POST /upload, gunicorn)", throughput, "MiB/s",
               g_ceiling_rate, "the discard app on gunicorn", "≥ 0.9x baseline",
               bool(correct and throughput >= 0.9 * g_ceiling_rate), details=details),
        Figure("upload_rss_growth", "upload: API process RSS growth", growth / MiB, "MiB", None, "", "≤ 50 MiB",
               growth <= 50 * MiB),
        Figure("upload_throughput_uwsgi", "upload, same file, uWSGI (uwsgi.ini)", uwsgi_throughput, "MiB/s",
               u_ceiling_rate, "the discard app on uWSGI", "≥ 0.9x baseline",
               bool(correct and uwsgi_throughput >= 0.9 * u_ceiling_rate),
               details={"rss_growth_mib": round(max(r[1] for r in uwsgi_runs) / MiB, 2),
                        "ratio_to_sha256_floor": round(uwsgi_throughput / sha_rate, 3)}),
        Figure("upload_throughput_nginx", "upload, same file, nginx + uWSGI (production)", nginx_throughput,
               "MiB/s", n_ceiling_rate, "the discard app behind nginx + uWSGI", "≥ 0.9x baseline",
               bool(correct and nginx_throughput >= 0.9 * n_ceiling_rate),
               details={"upload_s": [r[0] for r in nginx_runs], "discard_s": n_ceiling,
                        "ratio_to_sha256_floor": round(nginx_throughput / sha_rate, 3)}),
        Figure("upload_tus_throughput", "resumable upload (tus, 64 MiB PATCHes, gunicorn)", tus_rate, "MiB/s",
               throughput, "POST /upload of the same file", "(reported)", None,
               details={"total_s": [r[0] for r in tus_runs], "sha256_and_size_match": tus_correct}),
        Figure("upload_tus_last_chunk", "resumable upload: its last PATCH (makes the file)", tus_last, "ms",
               tus_chunk, "the PATCH before it", "≤ 1.5x baseline (no re-read of the file)",
               bool(tus_correct and tus_last <= 1.5 * tus_chunk),
               details={"last_patch_ms": [round(r[1] * 1000, 1) for r in tus_runs],
                        "patch_before_ms": [round(r[2] * 1000, 1) for r in tus_runs],
                        "sha256_of_file_ms": [round(t * 1000, 1) for t in sha_times]}),
        Figure("upload_ceiling_gunicorn", "gunicorn's ceiling: curl -F to the discard app", g_ceiling_rate, "MiB/s",
               baseline, "cp, same disk", "(reported)", None),
        Figure("upload_ceiling_uwsgi", "uWSGI's ceiling: curl -F to the discard app", u_ceiling_rate, "MiB/s",
               baseline, "cp, same disk", "(reported)", None),
        Figure("upload_sha256_floor", "upload's floor: sha256 of the file", sha_rate, "MiB/s", baseline,
               "cp, same disk", "(reported: no upload recording sha256 beats it)", None),
        Figure("upload_transport_ceiling", "curl -F to a raw-socket discard server", discard_rate, "MiB/s",
               baseline, "cp, same disk", "(reported)", None),
    ]


def _job_directory(root: Path, size: int) -> None:
    """A job directory like a real one: logs, a text catalog (compressible) and binary images (barely)."""
    import numpy as np

    root.mkdir(parents=True)
    rng = np.random.default_rng(7)
    (root / "stdout.log").write_text("".join(f"step {i}: source {i * 7 % 1000} flux {i * 0.37:.4f}\n"
                                             for i in range(20000)))
    (root / "stderr.log").write_text("")
    text_size = size // 2
    lines = rng.normal(0, 1, size=(min(200000, max(1000, text_size // 60)), 5))     # ~60 bytes a line
    block = "".join(f"{i},{a:.6f},{b:.6f},{c:.6f},{d:.6f},{e:.6f}\n" for i, (a, b, c, d, e) in enumerate(lines))
    block_bytes = block.encode()
    with open(root / "catalog.csv", "wb") as fh:
        left = text_size
        while left > 0:
            fh.write(block_bytes[:left])
            left -= min(left, len(block_bytes))
    images = root / "images"
    images.mkdir()
    binary = size - text_size
    count = 4
    for k in range(count):
        chunk = binary // count
        with open(images / f"image_{k}.fits", "wb") as fh:
            left = chunk
            while left > 0:
                n = min(left, 16 * MiB)
                # float32 noise with a smooth background: gzip gains a little, as on real images
                fh.write((rng.normal(100, 5, n // 4).astype(np.float32)).tobytes()[:n])
                left -= n


def measure_download(stack, base: str, size: int, repeats: int) -> list[Figure]:
    settings = stack.settings
    job_id = str(uuid.uuid4())
    workdir = storage.user_dir(settings["JOBS_DIR"], "anonymous") / job_id
    _job_directory(workdir, size)
    total = sum(p.stat().st_size for p in workdir.rglob("*") if p.is_file())
    with engine_for(settings["DATABASE_URL"]).begin() as conn:
        conn.execute(insert(Job.__table__), [job_row(settings, job_id, state="SUCCESS", workdir=str(workdir))])
        conn.execute(insert(JobEvent.__table__), [{"job_id": job_id, "state": "SUCCESS", "message": "bench",
                                                    "at": utcnow()}])
    out_dir = stack.root / "download"
    out_dir.mkdir(exist_ok=True)
    level = int(settings["OUTPUT_GZIP_LEVEL"])
    tar_times, dl_times, tar_sizes, dl_sizes, rss = [], [], [], [], []
    for _ in range(repeats):
        target = out_dir / "tar.tar.gz"
        # The baseline is what a user would run: tar -czf (gzip's level 6), whatever the service's level.
        tar_times.append(_timed(["tar", "-czf", str(target), "-C", str(workdir.parent), job_id]))
        tar_sizes.append(target.stat().st_size)
        target.unlink()
        target = out_dir / "api.tar.gz"
        os.sync()
        with RssSampler(stack.api.worker_pids()) as sampler:
            res = _curl(["-o", str(target), f"{base}{API_PREFIX}/job/{job_id}/output"])
        rss.append(sampler.growth()[0])
        dl_times.append(res["time_total"])
        dl_sizes.append(target.stat().st_size)
        listing_ok = subprocess.run(["tar", "-tzf", str(target)], capture_output=True, check=False).returncode == 0 \
            if size <= 64 * MiB else None
        target.unlink()
    shutil.rmtree(workdir, ignore_errors=True)
    t_dl, t_tar = median(dl_times), median(tar_times)
    size_ratio = median(dl_sizes) / median(tar_sizes)
    growth = max(rss)
    details = {"directory_bytes": total, "repeats": repeats, "download_s": dl_times, "tar_czf_s": tar_times,
               "download_bytes": dl_sizes, "tar_czf_bytes": tar_sizes, "isal_level": level,
               "size_ratio_to_tar_czf": round(size_ratio, 4), "rss_growth_bytes": rss,
               "archive_lists_ok": listing_ok, "client": "curl -o file (same disk)",
               "download_MiB_per_s": round(total / t_dl / MiB, 1)}
    return [Figure("download_tgz_time", f"tar.gz of a {size // MiB:,} MiB job dir (GET output, ISA-L)", t_dl, "s",
                   t_tar, "tar -czf", "≤ 0.15x baseline, size within 2%",
                   bool(t_dl <= 0.15 * t_tar and size_ratio <= 1.02), details=details),
            Figure("download_tgz_size", "its size", median(dl_sizes) / MiB, "MiB", median(tar_sizes) / MiB,
                   "tar -czf", "≤ 1.02x baseline", bool(size_ratio <= 1.02)),
            Figure("download_rss_growth", "download: API process RSS growth", growth / MiB, "MiB", None, "",
                   "≤ 50 MiB", growth <= 50 * MiB)]
