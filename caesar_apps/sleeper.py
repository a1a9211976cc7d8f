"""sleeper app: prints, sleeps and exits with a chosen status; for cancel, time-limit and failure tests."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="caesar-sleeper", description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="how long to sleep")
    parser.add_argument("--message", default="hello", help="printed before sleeping")
    parser.add_argument("--exit-code", type=int, default=0, help="exit status at the end")
    parser.add_argument("--allocate-mb", type=int, default=0, help="allocate this much memory first")
    parser.add_argument("--output", default="sleeper.txt", help="file written at the end")
    args = parser.parse_args(argv)
    print(args.message, flush=True)
    if args.allocate_mb:
        block = bytearray(args.allocate_mb * 1024 * 1024)
        block[::4096] = b"x" * len(block[::4096])
    time.sleep(args.seconds)
    Path(args.output).write_text(f"{args.message}\n")
    print(f"slept {args.seconds} s", flush=True)
    if args.exit_code:
        print(f"exiting with status {args.exit_code}", file=sys.stderr, flush=True)
    return args.exit_code


if __name__ == "__main__":
    sys.exit(main())
