"""checksum app: digests of an input file, written to checksum.txt and printed."""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="caesar-checksum", description=__doc__)
    parser.add_argument("--inputfile", required=True, help="file to digest")
    parser.add_argument("--algorithm", default="sha256", choices=["sha256", "sha512", "md5", "blake2b"])
    parser.add_argument("--output", default="checksum.txt", help="result file (in the working directory)")
    args = parser.parse_args(argv)
    path = Path(args.inputfile)
    if not path.is_file():
        print(f"caesar-checksum: {path} is not a file", file=sys.stderr)
        return 2
    digest = hashlib.new(args.algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(1024 * 1024):
            digest.update(block)
    line = f"{digest.hexdigest()}  {path.name}\n"
    Path(args.output).write_text(line)
    sys.stdout.write(f"{args.algorithm} {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
