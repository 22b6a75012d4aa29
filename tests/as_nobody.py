"""Run a `flask` command as the unprivileged user `nobody`, to test file permissions for
real: root ignores them.

The interpreter lives under /root, which nobody may not read, so the process imports what a
command needs first (as root, by building a throwaway app), then gives up root and runs the
command. Modules imported later must come from readable places (the repository, the venv).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

NOBODY = 65534
REPO = Path(__file__).resolve().parents[1]

_SCRIPT = (
    f"NOBODY = {NOBODY}\n"
    + """
import os, sys, tempfile
from app import create_app
create_app({"INSTANCE_PATH": tempfile.mkdtemp(), "SCHEDULER_ENABLED": False, "TESTING": True})
import click._termui_impl, encodings.idna, imapclient, jobs, mailsync.sync  # imported lazily
os.setgroups([])
os.setgid(NOBODY)
os.setuid(NOBODY)
from flask.cli import main
sys.argv = ["flask", "--app", "app", *sys.argv[1:]]
main()
"""
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")


def run_cli_as_nobody(*args: str, instance: Path) -> subprocess.CompletedProcess:
    """Run `flask --app app <args>` as nobody on `instance`; return the finished process."""
    return subprocess.run(
        [sys.executable, "-c", _SCRIPT, *args],
        cwd=REPO,
        env={**os.environ, "THREADLINE_INSTANCE_PATH": str(instance)},
        capture_output=True,
        text=True,
        timeout=120,
    )
