"""Imported at start-up by a test worker's interpreter alone (tests/test_clock_skew.py puts this directory first on
that worker's PYTHONPATH): its wall clock runs CAESAR_TEST_CLOCK_SKEW seconds off, as on a host whose clock is
wrong. time-machine moves what Python reads of the wall clock (time.time, datetime.now and the rest) and lets it
tick; sleeps and the monotonic clock stay real. libfaketime, which would move the whole process's clock, breaks
Python 3.11's sleeps (its issues 390 and 426: a hang, or EINVAL from clock_nanosleep), seen here too."""
from __future__ import annotations

import os

_skew = float(os.environ.get("CAESAR_TEST_CLOCK_SKEW") or 0)
if _skew:
    import time

    import time_machine

    time_machine.travel(time.time() + _skew, tick=True).start()
