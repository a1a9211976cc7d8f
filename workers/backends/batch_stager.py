"""Runs inside an AWS Batch container (sent as `python3 -c <this file> MANIFEST_URL -- ARGV...`, stdlib only):
reads its manifest and deletes it, downloads the inputs from presigned S3 URLs (sha256 checked; each deleted once
read), runs ARGV without a shell, uploads the job directory as a tar.gz (ISA-L's gzip when the image's Python has
python-isal) plus a result record (exit status, sha256 of every output), exits with the app's status. The app's
stdout and stderr go to the container's (CloudWatch); stderr is also kept as stderr.log."""
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request

BLOCK = 1024 * 1024
SKIP = ("inputs", "tmp")
STAGE_FAILED = 97


def say(text):
    sys.stderr.write("caesar-stager: " + text + "\n")
    sys.stderr.flush()


def request(url, data=None, size=None, attempts=4, method=None):
    for attempt in range(attempts):
        try:
            if method is not None:
                return urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=120)
            if data is None:
                return urllib.request.urlopen(url, timeout=120)
            if hasattr(data, "seek"):
                data.seek(0)
            headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
            req = urllib.request.Request(url, data=data, method="PUT", headers=headers)
            return urllib.request.urlopen(req, timeout=600)
        except OSError as exc:
            if attempt == attempts - 1:
                raise
            say("retrying after %s" % exc)
            time.sleep(2 ** attempt)
    raise ValueError("request: attempts must be at least 1")


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_inputs(manifest):
    for item in manifest["inputs"]:
        path = item["path"]
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        digest = hashlib.sha256()
        with request(item["url"]) as answer, open(path, "wb") as out:
            for block in iter(lambda: answer.read(BLOCK), b""):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != item["sha256"]:
            return "input file %s arrived with sha256 %s, expected %s" % (path, digest.hexdigest(), item["sha256"])
        forget(item, "input file %s" % path)
    return None


def forget(item, what):
    """Delete a staged object once read: a URL to it that leaked is of no use after the job has started. Its
    URL expires anyway, and the service removes the job's objects at its end: a failure here does not stop the job."""
    if not item.get("delete_url"):
        return
    try:
        request(item["delete_url"], method="DELETE", attempts=2).close()
    except OSError as exc:
        say("could not delete %s from S3 after reading it: %s" % (what, exc))


def run(argv, env, stderr_path):
    with open(stderr_path, "wb") as keep:
        try:
            proc = subprocess.Popen(argv, stderr=subprocess.PIPE, env=env)
        except OSError as exc:
            message = ("caesar-stager: cannot run %r: %s\n" % (argv[0], exc)).encode()
            keep.write(message)
            sys.stderr.buffer.write(message)
            return 127

        read1 = proc.stderr.read1  # type: ignore[union-attr]  # a BufferedReader: stderr is a PIPE

        def tee():
            for block in iter(lambda: read1(65536), b""):
                keep.write(block)
                sys.stderr.buffer.write(block)
                sys.stderr.flush()

        thread = threading.Thread(target=tee, daemon=True)
        thread.start()
        rc = proc.wait()
        thread.join(30)
    sys.stdout.flush()
    return 128 - rc if rc < 0 else rc


def gzip_writer(tar_path):
    """The result tarball's gzip stream: ISA-L's (python-isal's igzip, level 1: several times zlib's speed, about
    its size) when the image's Python has it, else zlib's at level 1 (stdlib only). Standard gzip either way."""
    try:
        from isal import igzip
    except ImportError:
        import gzip

        return gzip.open(tar_path, "wb", compresslevel=1)
    return igzip.open(tar_path, "wb", compresslevel=1)


def pack(stderr_path, tar_path):
    files = {}
    with gzip_writer(tar_path) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for top, dirs, names in os.walk("."):
            dirs[:] = sorted(d for d in dirs
                             if not (top == "." and d in SKIP) and not os.path.islink(os.path.join(top, d)))
            for d in dirs:
                tar.add(os.path.join(top, d), arcname=os.path.join(top, d)[2:], recursive=False)
            for name in sorted(names):
                path = os.path.join(top, name)
                rel = path[2:]
                if os.path.islink(path) or not os.path.isfile(path) or rel == "stderr.log":
                    continue
                files[rel] = sha256_file(path)
                tar.add(path, arcname=rel, recursive=False)
        files["stderr.log"] = sha256_file(stderr_path)
        tar.add(stderr_path, arcname="stderr.log", recursive=False)
    return files


def put_json(url, record):
    body = json.dumps(record).encode()
    request(url, data=body, size=len(body)).close()


def main():
    manifest_url, argv = sys.argv[1], sys.argv[3:]
    with request(manifest_url) as answer:
        manifest = json.load(answer)
    forget(manifest, "the manifest")
    problem = fetch_inputs(manifest)
    if problem:
        say(problem)
        put_json(manifest["result_url"], {"error": problem})
        return STAGE_FAILED
    os.makedirs(os.path.join("tmp", "home"), exist_ok=True)     # HOME in tmp/, which pack() leaves out
    env = dict(os.environ, HOME=os.path.join(os.getcwd(), "tmp", "home"), TMPDIR=os.path.join(os.getcwd(), "tmp"),
               **manifest.get("env", {}))
    stderr_path = "/tmp/caesar-stderr.log"
    rc = run(argv, env, stderr_path)
    tar_path = "/tmp/caesar-outputs.tar.gz"
    files = pack(stderr_path, tar_path)
    with open(tar_path, "rb") as fh:
        request(manifest["outputs_url"], data=fh, size=os.path.getsize(tar_path)).close()
    put_json(manifest["result_url"], {"exit_code": rc, "files": files})
    return rc if 0 <= rc < 256 else 1


if __name__ == "__main__":
    sys.exit(main())
