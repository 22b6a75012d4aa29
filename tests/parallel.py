"""Running the suite with pytest-xdist (`make test` does): what keeps it fast and steady.

- Order: tests marked `slow` go first, each followed by an ordinary one, so that with
  `--dist load --maxschedchunk 1` (the Makefile's options) every worker starts on a long test
  and none finds two of them queued behind each other at the end of the run.
- `timing`: a test that asserts a wall-clock bound (a pass stops within 5 s, a lease is
  renewed in time) runs its body while no other test runs in any worker, as it would in a
  serial run: a readers-writer lock on files shared by the run's workers. Every test phase
  (setup, call, teardown) holds it shared, except a `timing` test's call, which holds it
  exclusively. `timing` tests come last: waiting for the lock, a `timing` test stops every
  worker until the tests running then end, which are short ones by the end of the run.

Without xdist (a plain `pytest` run) both do nothing.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

import pytest

WORKER = os.environ.get("PYTEST_XDIST_WORKER")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Put `slow` tests first (longest hint first), each followed by an ordinary test, and
    `timing` tests last.

    trylast: after pytest's own reordering by fixture scope. Every worker collects and
    orders the same way, which xdist requires.
    """
    if WORKER is None:
        return
    timing = [item for item in items if item.get_closest_marker("timing") is not None]
    slow = [
        item
        for item in items
        if item.get_closest_marker("slow") is not None and item.get_closest_marker("timing") is None
    ]
    slow.sort(key=lambda item: -item.get_closest_marker("slow").kwargs.get("seconds", 0))
    chosen = {id(item) for item in slow + timing}
    rest = [item for item in items if id(item) not in chosen]
    ordered = []
    for index, item in enumerate(slow):
        ordered.append(item)
        if index < len(rest):
            ordered.append(rest[index])
    ordered.extend(rest[len(slow) :])
    items[:] = ordered + timing


class _RunLock:
    """A readers-writer lock across the run's worker processes (flock on two files).

    `gate` keeps an exclusive holder from waiting forever while shared holders keep
    coming: a shared holder passes through it, an exclusive one holds it throughout.
    """

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._gate = open(folder / "gate.lock", "a+")  # noqa: SIM115 (held for the run)
        self._room = open(folder / "room.lock", "a+")  # noqa: SIM115

    def close(self) -> None:
        self._gate.close()
        self._room.close()

    @contextmanager
    def shared(self):
        fcntl.flock(self._gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._room, fcntl.LOCK_SH)
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(self._room, fcntl.LOCK_UN)

    @contextmanager
    def exclusive(self):
        fcntl.flock(self._gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._room, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._room, fcntl.LOCK_UN)
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)


_lock: _RunLock | None = None


def _run_lock(config) -> _RunLock:
    global _lock
    if _lock is None:
        # Workers' base temp folders are <the run's base temp>/gw0, gw1, ...: one per run.
        run_folder = config._tmp_path_factory.getbasetemp().parent
        _lock = _RunLock(run_folder / "timing-lock")
    return _lock


def pytest_unconfigure(config):
    global _lock
    if _lock is not None:
        _lock.close()
        _lock = None


@contextmanager
def _phase(item, *, body: bool):
    if WORKER is None:
        yield
        return
    timing = item.get_closest_marker("timing") is not None
    lock = _run_lock(item.config)
    if timing and body:
        with lock.exclusive():
            yield
    else:
        with lock.shared():
            yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    with _phase(item, body=False):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    with _phase(item, body=True):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    with _phase(item, body=False):
        yield
