"""prometheus-client's multiprocess mode for ``chainfeed serve --workers N``.

Each uvicorn worker is a separate process with its own metric values; /metrics must report the
sum (counters, histograms, ``livesum`` gauges) or the max (Redis-derived gauges, ``livemax``) over
them. prometheus-client does that through files in PROMETHEUS_MULTIPROC_DIR, which must be set
before a worker first imports ``prometheus_client``; Litestar's PrometheusController then reads
the multiprocess registry by itself.

A worker that died (uvicorn starts another) leaves its files behind: its open connections and its
last lag would stay in the totals, and alerts on them stick. :func:`forget_dead_workers` removes
the live-gauge files of processes that no longer exist (``mark_process_dead``); counters and
histograms keep what the dead worker counted, as totals should.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator

from prometheus_client import multiprocess

__all__ = ["MULTIPROC_ENV", "forget_dead_workers", "multiprocess_metrics"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db")


def forget_dead_workers() -> list[int]:
    """Drop the live gauges of worker processes that have exited; the pids forgotten.

    Called before every multiprocess scrape: a directory listing, and a signal-0 probe per pid.
    """
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return []
    pids = set()
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            if match := _LIVE_GAUGE_FILE.fullmatch(name):
                pids.add(int(match.group(1)))
    dead = sorted(pid for pid in pids if not _alive(pid))
    for pid in dead:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]  # untyped upstream
    return dead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def multiprocess_metrics() -> Iterator[str]:
    """A fresh, private metrics folder for the workers started inside; removed afterwards.

    Sets PROMETHEUS_MULTIPROC_DIR in this process's environment, which the workers inherit (the
    only way prometheus-client takes it). An operator's own PROMETHEUS_MULTIPROC_DIR is used as
    it is and emptied first: files of an earlier run would add their counts to this one.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        for name in os.listdir(given):
            if name.endswith(".db"):
                os.unlink(os.path.join(given, name))
        yield given
        return
    directory = tempfile.mkdtemp(prefix="chainfeed-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    try:
        yield directory
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)
