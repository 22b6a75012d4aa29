"""Which module may import which: the web side never reaches IMAP write-back code, and the
entry points (app, cli, worker, jobs) import each other in one direction only.

Walks every import statement, the ones inside functions too (a late import is still an
import), with the standard library's ast module.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Code that talks to a mail server, or runs only in the worker.
WORKER_ONLY = (
    "mailsync.actions",
    "mailsync.writeback",
    "mailsync.send",
    "imapclient",
    "smtplib",
    "jobs",
    "worker",
    "cli",
)
# The account form's connection test asks the server while the user waits for the answer
# (and lists its folders, or signs in to the SMTP server); that is the one IMAP and SMTP
# conversation a web request still has.
CONNECTION_TEST = {
    "services/accounts.py": {"mailsync.imap", "mailsync.smtp"},
    # Only for MailConnectionError and its kinds: a token renewal that fails is reported the
    # way a refused sign-in is. It talks HTTPS to the OAuth2 provider, never IMAP or SMTP.
    "services/oauth.py": {"mailsync.imap"},
}


def imports(path: Path) -> set[str]:
    """Return the dotted names of the project modules (and imapclient) `path` imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def reaches(names: set[str], target: str) -> bool:
    return any(name == target or name.startswith(target + ".") for name in names)


def modules(folder: str) -> list[Path]:
    return sorted((REPO / folder).glob("*.py"))


def test_services_and_views_never_import_worker_code():
    offenders = []
    for path in modules("services") + modules("views"):
        names = imports(path)
        for target in WORKER_ONLY:
            if reaches(names, target):
                offenders.append(f"{path.relative_to(REPO)} imports {target}")
    assert offenders == []


def test_web_side_talks_imap_and_smtp_only_for_the_connection_test():
    offenders = []
    for path in modules("services") + modules("views"):
        relative = str(path.relative_to(REPO))
        allowed = CONNECTION_TEST.get(relative, set())
        for target in ("mailsync.imap", "mailsync.smtp"):
            if reaches(imports(path), target) and target not in allowed:
                offenders.append(f"{relative} imports {target}")
    assert offenders == []


def test_entry_points_import_one_way():
    """app -> cli -> worker -> jobs -> services: nothing imports back up the chain."""
    order = ["app", "cli", "worker", "jobs"]
    for position, module in enumerate(order):
        names = imports(REPO / f"{module}.py")
        for above in order[: position + 1]:
            if above != module:
                assert not reaches(names, above), f"{module} imports {above}"
    for path in modules("services") + modules("mailsync"):
        names = imports(path)
        for module in order:
            assert not reaches(names, module), f"{path.relative_to(REPO)} imports {module}"


def test_the_checks_see_a_late_import(tmp_path):
    """The walk finds imports inside functions, so the checks above can fail."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from mailsync import actions\n    import jobs\n")
    names = imports(sample)
    assert reaches(names, "mailsync.actions") and reaches(names, "jobs")
