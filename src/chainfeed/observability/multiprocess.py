"""prometheus-client's multiprocess mode for ``chainfeed serve --workers N``.

Each uvicorn worker is a separate process with its own metric values; /metrics must report the
sum (counters, histograms, ``livesum`` gauges) or the max (Redis-derived gauges) over all of
them. prometheus-client does that through files in PROMETHEUS_MULTIPROC_DIR, which must be set
before a worker first imports ``prometheus_client``; Litestar's PrometheusController then reads
the multiprocess registry by itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

__all__ = ["MULTIPROC_ENV", "multiprocess_metrics"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


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
