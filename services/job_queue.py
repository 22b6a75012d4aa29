"""The durable job queue: what the web side asks the one worker to do (worker.py runs it).

A job is a row in `job`. enqueue adds one (or folds it into the last queued job with the same
key); the worker claims one with a lease, runs it, and completes or fails it. Jobs with the
same key run one at a time, in the order they were queued. A failed attempt waits longer
each time (exponential backoff) until max_attempts, then the job stays `failed` with its
error for the page to show. A worker that dies leaves its job `running` with a lease that
runs out; any worker may then claim it again, so no job is lost, and no two workers ever
hold it at once.

Merging into a queued job locks its row (FOR UPDATE on PostgreSQL), so requests of several
web processes that fold into one job at once each see the others' payloads.

Claiming is portable SQL: pick a candidate, then a conditional UPDATE that only succeeds
while the job is still claimable, so only one claimer wins it. On PostgreSQL the candidate
query also takes `FOR UPDATE SKIP LOCKED`, so concurrent workers skip each other's rows
instead of colliding; SQLite ignores it and serializes writers by itself.

Every function commits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from flask import current_app
from sqlalchemy import Select, and_, delete, exists, func, or_, select, union_all, update
from sqlalchemy.orm import aliased

from extensions import db
from models import JOB_DONE, JOB_FAILED, JOB_QUEUED, JOB_RUNNING, Job

DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_BACKOFF_SECONDS = 10.0
BACKOFF_CAP_SECONDS = 15 * 60
DEFAULT_LEASE_SECONDS = 60.0
UNFINISHED = (JOB_QUEUED, JOB_RUNNING)
# Another job of the same key, for the conditions that compare a job with its neighbours.
# Made once: aliasing copies every column of the table (1 ms a call, on every Mail tab page).
OTHER_JOB = aliased(Job, name="other_job")

# Merges a queued job's payload with a newer one for the same key (see enqueue).
Merge = Callable[[dict, dict], dict]


@dataclass(frozen=True)
class ClaimedJob:
    """A job the caller now holds: plain values, usable after the session ends."""

    id: int
    kind: str
    payload: dict
    account_id: int | None
    attempts: int
    owner: str


def _now() -> datetime:
    return datetime.now(UTC)


def enqueue(
    kind: str,
    payload: dict | None = None,
    *,
    key: str | None = None,
    account_id: int | None = None,
    merge: Merge | None = None,
    max_attempts: int | None = None,
) -> int:
    """Queue a job and return its id; commits.

    With `merge`, a job of the same kind that is the last unfinished job of `key` and not yet
    running takes the new payload (merge(old, new)) instead of a second job: read, unread,
    read on one message is one write-back. A job already running is never changed.
    """
    payload = dict(payload or {})
    if max_attempts is None:
        max_attempts = int(current_app.config.get("JOB_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS))
    if key is not None:
        _lock_key(key)
    if key is not None and merge is not None:
        # FOR UPDATE: two requests folding into one job at once (two web processes on
        # PostgreSQL) must merge one after the other; else the second writes merge(old, new)
        # over the first one's payload and its change is lost. The second waits here for the
        # first to commit and then reads its payload. SQLite ignores it: a request there holds
        # the database's one write lock from its first write on (mark_read flushes first).
        last = db.session.execute(
            select(Job.id, Job.kind, Job.state, Job.payload)
            .where(Job.key == key, Job.state.in_(UNFINISHED))
            .order_by(Job.id.desc())
            .limit(1)
            .with_for_update()
        ).first()
        if last is not None and last.kind == kind and last.state == JOB_QUEUED:
            merged = db.session.execute(
                update(Job)
                .where(Job.id == last.id, Job.state == JOB_QUEUED)  # not claimed meanwhile
                .values(payload=merge(dict(last.payload or {}), payload), updated_at=_now())
            ).rowcount
            if merged:
                db.session.commit()
                return last.id
    job = Job(
        kind=kind,
        key=key,
        payload=payload,
        account_id=account_id,
        max_attempts=max_attempts,
        state=JOB_QUEUED,
        run_after=_now(),
    )
    db.session.add(job)
    db.session.commit()
    return job.id


def _lock_key(key: str) -> None:
    """Make enqueues of one key take turns until they commit (PostgreSQL).

    A key's jobs run in id order. PostgreSQL hands out ids when rows are inserted, not when
    they commit: two requests queueing for one key at once could commit in the other order
    than their ids (two moves of one mail would then run the wrong way round). Under this
    lock the second request takes its id after the first has committed. SQLite needs none:
    the first write of a request holds the database's one write lock until it commits.
    """
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(select(func.pg_advisory_xact_lock(func.hashtext(key))))


def _claimable(now: datetime):
    """The condition under which a job may be claimed now (one place, used twice)."""
    earlier = OTHER_JOB
    blocked_by_earlier = exists().where(
        earlier.key == Job.key, earlier.id < Job.id, earlier.state.in_(UNFINISHED)
    )
    return and_(
        or_(
            and_(Job.state == JOB_QUEUED, Job.run_after <= now),
            # A running job whose lease ran out: its worker died (or hung past the lease).
            and_(Job.state == JOB_RUNNING, Job.lease_expires_at < now),
        ),
        or_(Job.key.is_(None), ~blocked_by_earlier),
    )


def claim(
    owner: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS, kinds=None, keys=None
) -> ClaimedJob | None:
    """Take the next runnable job for `owner` under a lease, or return None; commits.

    `kinds` and `keys` narrow the choice (the worker takes pushed passes first this way).

    Each claim counts an attempt, a reclaimed job's too: a job that kills its worker every
    time ends as failed instead of looping forever.
    """
    for _ in range(5):  # another claimer may win a candidate; try the next one
        now = _now()
        query = select(Job.id).where(_claimable(now)).order_by(Job.run_after, Job.id).limit(1)
        if kinds is not None:
            query = query.where(Job.kind.in_(list(kinds)))
        if keys is not None:
            query = query.where(Job.key.in_(list(keys)))
        candidate = db.session.scalar(query.with_for_update(skip_locked=True))
        if candidate is None:
            db.session.commit()
            return None
        won = db.session.execute(
            update(Job)
            .where(Job.id == candidate, _claimable(now))
            .values(
                state=JOB_RUNNING,
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=Job.attempts + 1,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        db.session.commit()
        if won:
            job = db.session.get(Job, candidate, populate_existing=True)
            claimed = ClaimedJob(
                job.id, job.kind, dict(job.payload or {}), job.account_id, job.attempts, owner
            )
            db.session.commit()
            return claimed
    return None


def renew(job_id: int, owner: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> bool:
    """Extend the owner's lease on a running job; False once it is no longer theirs."""
    renewed = db.session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.state == JOB_RUNNING)
        .values(lease_expires_at=_now() + timedelta(seconds=lease_seconds))
    ).rowcount
    db.session.commit()
    return bool(renewed)


def complete(job_id: int, owner: str) -> bool:
    """Mark the owner's job done; False if its lease was lost to another worker."""
    now = _now()
    finished = db.session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.state == JOB_RUNNING)
        .values(
            state=JOB_DONE,
            finished_at=now,
            updated_at=now,
            last_error=None,
            lease_owner=None,
            lease_expires_at=None,
        )
    ).rowcount
    db.session.commit()
    return bool(finished)


def backoff_seconds(
    attempts: int, base: float = DEFAULT_BACKOFF_SECONDS, *, cap: float = BACKOFF_CAP_SECONDS
) -> float:
    """Return the wait before attempt `attempts + 1`: base, 2x base, 4x base... capped."""
    return min(cap, base * 2 ** max(0, attempts - 1))


def fail(
    job_id: int, owner: str, error: str, *, backoff_base: float = DEFAULT_BACKOFF_SECONDS
) -> str | None:
    """Record a failed attempt: retry after a backoff, or end as failed after max_attempts.

    Returns the job's new state, or None if the owner no longer held it. Commits.
    """
    job = db.session.get(Job, job_id, populate_existing=True)
    if job is None or job.lease_owner != owner or job.state != JOB_RUNNING:
        db.session.commit()
        return None
    now = _now()
    final = job.attempts >= job.max_attempts
    values = {
        "last_error": error[:2000],
        "lease_owner": None,
        "lease_expires_at": None,
        "updated_at": now,
    }
    if final:
        values.update(state=JOB_FAILED, finished_at=now)
    else:
        values.update(
            state=JOB_QUEUED,
            run_after=now + timedelta(seconds=backoff_seconds(job.attempts, backoff_base)),
        )
    changed = db.session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.state == JOB_RUNNING)
        .values(**values)
    ).rowcount
    db.session.commit()
    return values["state"] if changed else None


def postpone(job_id: int, owner: str, *, seconds: float) -> bool:
    """Give a claimed job back to run later without counting the attempt (e.g. its account is
    being synced already); commits."""
    now = _now()
    changed = db.session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.state == JOB_RUNNING)
        .values(
            state=JOB_QUEUED,
            attempts=Job.attempts - 1,
            run_after=now + timedelta(seconds=seconds),
            lease_owner=None,
            lease_expires_at=None,
            updated_at=now,
        )
    ).rowcount
    db.session.commit()
    return bool(changed)


def unfinished_jobs(*, kinds, account_ids) -> list[Job]:
    """Return the queued and running jobs of these kinds for these accounts, oldest first."""
    if not account_ids:
        return []
    return list(db.session.scalars(_unfinished(kinds, account_ids).order_by(Job.id)))


def failures_not_followed(*, kinds, keys: list[str], since: datetime) -> list[Job]:
    """Return the failed jobs of these kinds and keys finished since `since` after which no
    job of the same key has been done, newest first (one query for every key)."""
    if not keys:
        return []
    failures = _failures_not_followed(kinds, keys, since).order_by(Job.id.desc())
    return list(db.session.scalars(failures))


def unfinished_and_failures(
    *, kinds, account_ids, keys: list[str], since: datetime
) -> tuple[list[Job], list[Job]]:
    """Return unfinished_jobs(...) and failures_not_followed(...) read in one round trip
    (every Mail tab page shows both in its saving state)."""
    if not account_ids or not keys:
        return (
            unfinished_jobs(kinds=kinds, account_ids=account_ids),
            failures_not_followed(kinds=kinds, keys=keys, since=since),
        )
    both = union_all(_unfinished(kinds, account_ids), _failures_not_followed(kinds, keys, since))
    jobs = sorted(db.session.scalars(select(Job).from_statement(both)), key=lambda job: job.id)
    # The halves differ in state (queued or running, and failed), so it tells them apart.
    unfinished = [job for job in jobs if job.state in UNFINISHED]
    failures = [job for job in reversed(jobs) if job.state == JOB_FAILED]
    return unfinished, failures


def _unfinished(kinds, account_ids) -> Select[tuple[Job]]:
    return select(Job).where(
        Job.kind.in_(list(kinds)),
        Job.account_id.in_(list(account_ids)),
        Job.state.in_(UNFINISHED),
    )


def _failures_not_followed(kinds, keys: list[str], since: datetime) -> Select[tuple[Job]]:
    later = OTHER_JOB
    landed_later = exists().where(
        later.kind.in_(list(kinds)),
        later.key == Job.key,
        later.state == JOB_DONE,
        later.id > Job.id,
    )
    return select(Job).where(
        Job.kind.in_(list(kinds)),
        Job.key.in_(keys),
        Job.state == JOB_FAILED,
        Job.finished_at >= since,
        ~landed_later,
    )


def delete_finished(*, before: datetime) -> int:
    """Delete done and failed jobs finished before `before`; return how many. Commits."""
    removed = db.session.execute(
        delete(Job).where(Job.state.in_((JOB_DONE, JOB_FAILED)), Job.finished_at < before)
    ).rowcount
    db.session.commit()
    return removed


def latest_job(kind: str, key: str) -> Job | None:
    """Return the newest job of this kind and key (any state), or None."""
    return db.session.scalar(
        select(Job).where(Job.kind == kind, Job.key == key).order_by(Job.id.desc()).limit(1)
    )
