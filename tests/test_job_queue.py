"""The durable job queue (services/job_queue.py): claims, leases, backoff, order, coalescing."""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, event, func, select, update

from extensions import db
from models import JOB_DONE, JOB_FAILED, JOB_QUEUED, JOB_RUNNING, Job
from services import job_queue


def merge_last(old: dict, new: dict) -> dict:
    return new


def job(job_id: int) -> Job:
    db.session.expire_all()
    return db.session.get(Job, job_id)


def expire_lease(job_id: int) -> None:
    db.session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
    )
    db.session.commit()


def make_runnable(job_id: int) -> None:
    db.session.execute(update(Job).where(Job.id == job_id).values(run_after=datetime.now(UTC)))
    db.session.commit()


def test_a_claimed_job_is_leased_to_one_owner_and_completed(app):
    job_id = job_queue.enqueue("test.kind", {"n": 1})
    assert job(job_id).state == JOB_QUEUED
    claimed = job_queue.claim("worker-a", lease_seconds=30)
    assert claimed.id == job_id and claimed.payload == {"n": 1} and claimed.attempts == 1
    row = job(job_id)
    assert row.state == JOB_RUNNING and row.lease_owner == "worker-a"
    assert row.lease_expires_at > datetime.now(UTC) + timedelta(seconds=25)
    assert job_queue.claim("worker-b") is None  # held: nobody else gets it
    assert not job_queue.complete(job_id, "worker-b")  # only the owner finishes it
    assert job_queue.complete(job_id, "worker-a")
    row = job(job_id)
    assert row.state == JOB_DONE and row.finished_at is not None and row.lease_owner is None
    assert job_queue.claim("worker-b") is None


def test_an_expired_lease_is_claimed_again_and_the_old_owner_cannot_finish(app):
    job_id = job_queue.enqueue("test.kind")
    job_queue.claim("crashed", lease_seconds=30)
    assert job_queue.claim("other") is None
    expire_lease(job_id)  # the crashed worker stopped renewing it
    again = job_queue.claim("other", lease_seconds=30)
    assert again.id == job_id and again.attempts == 2
    # The first worker's late answer changes nothing: the job is the new owner's now.
    assert not job_queue.complete(job_id, "crashed")
    assert job_queue.fail(job_id, "crashed", "late") is None
    assert not job_queue.renew(job_id, "crashed")
    assert job_queue.renew(job_id, "other")
    assert job_queue.complete(job_id, "other")
    assert job(job_id).state == JOB_DONE


def test_failures_back_off_exponentially_then_fail_for_good(app):
    job_id = job_queue.enqueue("test.kind", max_attempts=3)
    waits = []
    for attempt in (1, 2):
        claimed = job_queue.claim("w")
        assert claimed.attempts == attempt
        before = datetime.now(UTC)
        assert job_queue.fail(job_id, "w", f"boom {attempt}", backoff_base=10) == JOB_QUEUED
        row = job(job_id)
        assert row.last_error == f"boom {attempt}" and row.lease_owner is None
        waits.append((row.run_after - before).total_seconds())
        assert job_queue.claim("w") is None  # backing off
        make_runnable(job_id)
    assert waits[0] == pytest.approx(10, abs=1) and waits[1] == pytest.approx(20, abs=1)
    job_queue.claim("w")
    assert job_queue.fail(job_id, "w", "still broken") == JOB_FAILED
    row = job(job_id)
    assert row.state == JOB_FAILED and row.attempts == 3 and row.last_error == "still broken"
    assert job_queue.claim("w") is None


def test_backoff_is_capped():
    assert job_queue.backoff_seconds(1, 10) == 10
    assert job_queue.backoff_seconds(4, 10) == 80
    assert job_queue.backoff_seconds(40, 10) == job_queue.BACKOFF_CAP_SECONDS


def test_jobs_of_one_key_run_one_at_a_time_in_order(app):
    first = job_queue.enqueue("a", key="mailbox:1")
    second = job_queue.enqueue("b", key="mailbox:1")
    other = job_queue.enqueue("a", key="mailbox:2")
    assert job_queue.claim("w1").id == first
    # The second job of key 1 waits for the first; another key's job does not.
    assert job_queue.claim("w2").id == other
    assert job_queue.claim("w3") is None
    job_queue.fail(first, "w1", "retry me", backoff_base=60)
    assert job_queue.claim("w3") is None  # still first in line, backing off
    make_runnable(first)
    assert job_queue.claim("w3").id == first
    job_queue.complete(first, "w3")
    assert job_queue.claim("w3").id == second


def test_a_claim_can_take_the_jobs_of_some_keys_first_but_never_out_of_a_keys_order(app):
    older = job_queue.enqueue("sync", key="account:1")
    pushed_first = job_queue.enqueue("sync", key="account:2")
    pushed_second = job_queue.enqueue("sync", key="account:2")
    assert job_queue.claim("w", keys=["account:2", "account:3"]).id == pushed_first
    assert job_queue.claim("w", keys=["account:2"]) is None  # its earlier job still runs
    assert job_queue.claim("w").id == older
    job_queue.complete(pushed_first, "w")
    assert job_queue.claim("w", keys=["account:2"]).id == pushed_second


def test_a_finally_failed_job_no_longer_holds_its_key_back(app):
    first = job_queue.enqueue("a", key="k", max_attempts=1)
    second = job_queue.enqueue("a", key="k")
    job_queue.claim("w")
    assert job_queue.fail(first, "w", "gone") == JOB_FAILED
    assert job_queue.claim("w").id == second


def test_queued_jobs_of_a_key_coalesce_but_a_running_one_is_never_changed(app):
    def merge(old, new):
        return {"values": old["values"] + new["values"]}

    first = job_queue.enqueue("seen", {"values": ["read"]}, key="k", merge=merge)
    assert job_queue.enqueue("seen", {"values": ["unread"]}, key="k", merge=merge) == first
    assert job_queue.enqueue("seen", {"values": ["read"]}, key="k", merge=merge) == first
    assert job(first).payload == {"values": ["read", "unread", "read"]}
    # Another kind in between keeps its place in line: a later "seen" is a new job.
    move = job_queue.enqueue("move", {}, key="k")
    after = job_queue.enqueue("seen", {"values": ["unread"]}, key="k", merge=merge)
    assert after not in (first, move)
    assert job_queue.claim("w").id == first
    # Running: a new request is a new job, queued behind it.
    assert job_queue.enqueue("seen", {"values": ["x"]}, key="k", merge=merge) == after
    running = job_queue.enqueue("solo", {"n": 1}, key="r", merge=merge_last)
    job_queue.claim("w", kinds=["solo"])
    newer = job_queue.enqueue("solo", {"n": 2}, key="r", merge=merge_last)
    assert newer != running and job(running).payload == {"n": 1}
    assert db.session.scalar(select(db.func.count()).select_from(Job)) == 5


def test_postponing_gives_the_job_back_without_counting_the_attempt(app):
    job_id = job_queue.enqueue("a")
    job_queue.claim("w")
    assert job_queue.postpone(job_id, "w", seconds=60)
    row = job(job_id)
    assert row.state == JOB_QUEUED and row.attempts == 0 and row.lease_owner is None
    assert job_queue.claim("w") is None


def test_finished_jobs_are_forgotten_after_a_while(app):
    done = job_queue.enqueue("a")
    waiting = job_queue.enqueue("a")
    job_queue.claim("w")
    job_queue.complete(done, "w")
    assert job_queue.delete_finished(before=datetime.now(UTC) - timedelta(hours=1)) == 0
    assert job_queue.delete_finished(before=datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert job(done) is None and job(waiting).state == JOB_QUEUED


def test_two_claimers_in_two_threads_never_get_the_same_job(app):
    """Many jobs, two threads claiming as fast as they can, each with its own session."""
    ids = {job_queue.enqueue("race", {"n": n}) for n in range(60)}
    claimed: dict[str, list[int]] = {"a": [], "b": []}
    start = threading.Barrier(2)

    def claimer(name: str) -> None:
        with app.app_context():
            start.wait()
            while (got := job_queue.claim(name, lease_seconds=60)) is not None:
                claimed[name].append(got.id)
                # A worker runs its job before it claims the next. Claiming back to back, one
                # thread could win SQLite's write lock for all 60 and the other never compete.
                time.sleep(0.005)
            db.session.remove()

    threads = [threading.Thread(target=claimer, args=(name,)) for name in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    both = claimed["a"] + claimed["b"]
    assert sorted(both) == sorted(ids)  # every job once: none twice, none lost
    assert claimed["a"] and claimed["b"], claimed  # both really competed
    owners = dict(db.session.execute(select(Job.id, Job.lease_owner)).all())
    assert all(owners[job_id] == "a" for job_id in claimed["a"])
    assert all(owners[job_id] == "b" for job_id in claimed["b"])


def test_two_requests_folding_into_one_queued_job_at_once_both_land(app):
    """Two web requests (two processes, or two threads of one) add to the same queued job at
    once: each payload is merged into what the other wrote, never into a stale copy."""
    job_id = job_queue.enqueue("seen", {"ids": [0]}, key="mailbox:1", merge=merge_union)
    own_rows = [job_queue.enqueue("other", {}) for _ in range(2)]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def slow_union(old: dict, new: dict) -> dict:
        time.sleep(0.3)  # both requests have read the queued job by now, unless one waits
        return merge_union(old, new)

    def request(n: int) -> None:
        try:
            with app.app_context():
                start.wait()
                # A request changes its own rows first (mark_read: the messages), as here.
                db.session.execute(
                    update(Job).where(Job.id == own_rows[n]).values(updated_at=datetime.now(UTC))
                )
                job_queue.enqueue("seen", {"ids": [n + 1]}, key="mailbox:1", merge=slow_union)
                db.session.remove()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert job(job_id).payload == {"ids": [0, 1, 2]}
    assert db.session.scalar(select(func.count()).select_from(Job).where(Job.kind == "seen")) == 1


def merge_union(old: dict, new: dict) -> dict:
    return {"ids": sorted(set(old["ids"]) | set(new["ids"]))}


def test_jobs_of_one_key_run_in_the_order_their_requests_committed(app):
    """Two requests queue for one key at once; the first takes its id and is slow to commit.
    The job that committed first runs first (PostgreSQL hands out ids before commit)."""
    slow_has_its_id = threading.Event()
    quick_committed = threading.Event()
    quick_committed_before_slow: list[bool] = []
    errors: list[BaseException] = []

    def request(name: str, *, slow: bool) -> None:
        try:
            with app.app_context():
                if slow:

                    @event.listens_for(db.session(), "before_commit")
                    def hold(session) -> None:
                        session.flush()  # takes the id (and, on SQLite, the write lock)
                        slow_has_its_id.set()
                        # The other request may queue meanwhile; whether it got to commit is
                        # read from here, where the slow one has not committed yet.
                        quick_committed.wait(timeout=0.5)
                        quick_committed_before_slow.append(quick_committed.is_set())

                else:
                    slow_has_its_id.wait(timeout=30)
                job_queue.enqueue("move", {"by": name}, key="mailbox:7")
                if not slow:
                    quick_committed.set()
                db.session.remove()
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=request, args=("slow",), kwargs={"slow": True}),
        threading.Thread(target=request, args=("quick",), kwargs={"slow": False}),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    committed = ["quick", "slow"] if quick_committed_before_slow == [True] else ["slow", "quick"]
    ran = []
    while (got := job_queue.claim("worker", lease_seconds=60)) is not None:
        ran.append(got.payload["by"])
        job_queue.complete(got.id, "worker")
    assert ran == committed, (ran, committed)


def test_failures_not_followed_agrees_with_the_newest_failed_and_done_per_key(app):
    """Against a small model of the rule the Mail tab shows ("a write-back kept failing"):
    per key, the newest failure since `since` counts unless a job of that key was done
    after it. Random histories over two keys and two kinds."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    since = now - timedelta(hours=24)
    kinds, keys = ("test.a", "test.b"), ["account:1", "account:2"]
    for _case in range(25):
        db.session.execute(delete(Job))
        history = []
        for _ in range(rng.randint(0, 8)):
            row = Job(
                kind=rng.choice((*kinds, "test.other")),
                key=rng.choice(keys),
                state=rng.choice((JOB_FAILED, JOB_DONE)),
                finished_at=now - timedelta(hours=rng.choice((1, 5, 30))),
            )
            db.session.add(row)
            db.session.flush()
            history.append(row)
        db.session.commit()
        expected = {}
        for key in keys:
            mine = [j for j in history if j.key == key and j.kind in kinds]
            failed = [j for j in mine if j.state == JOB_FAILED and j.finished_at >= since]
            if failed and not [j for j in mine if j.state == JOB_DONE and j.id > failed[-1].id]:
                expected[key] = failed[-1].id
        found = job_queue.failures_not_followed(kinds=kinds, keys=keys, since=since)
        newest = {}
        for failure in found:
            newest.setdefault(failure.key, failure.id)
        assert newest == expected, [(j.id, j.kind, j.key, j.state) for j in history]


def test_unfinished_and_failures_in_one_read_agree_with_the_two_reads(
    app, make_user, make_stored_account
):
    """The Mail tab's saving state reads both lists in one round trip: random histories of
    every state over two accounts (one not asked about) and two kinds give the same lists, in
    the same order, as the two reads apart, and the unfinished list matches a small model."""
    user = make_user()
    asked, other = (make_stored_account(user, email_address=f"{n}@team.test") for n in "ab")
    rng = random.Random(11)
    now = datetime.now(UTC)
    since = now - timedelta(hours=24)
    kinds = ("test.a", "test.b")
    keys = [f"account:{asked.id}"]
    for _case in range(30):
        db.session.execute(delete(Job))
        history = []
        for _ in range(rng.randint(0, 10)):
            account = rng.choice((asked, other))
            # failures often, so that several wait unfollowed and their order shows
            state = rng.choice((JOB_QUEUED, JOB_RUNNING, JOB_FAILED, JOB_FAILED, JOB_DONE))
            row = Job(
                kind=rng.choice((*kinds, "test.other")),
                key=f"account:{account.id}",
                account_id=account.id,
                state=state,
                finished_at=now - timedelta(hours=rng.choice((1, 30)))
                if state in (JOB_FAILED, JOB_DONE)
                else None,
            )
            db.session.add(row)
            db.session.flush()
            history.append(row)
        db.session.commit()
        ids = [asked.id]
        unfinished, failures = job_queue.unfinished_and_failures(
            kinds=kinds, account_ids=ids, keys=keys, since=since
        )
        apart = (
            job_queue.unfinished_jobs(kinds=kinds, account_ids=ids),
            job_queue.failures_not_followed(kinds=kinds, keys=keys, since=since),
        )
        assert ([j.id for j in unfinished], [j.id for j in failures]) == (
            [j.id for j in apart[0]],
            [j.id for j in apart[1]],
        )
        model = [
            j.id
            for j in history
            if j.kind in kinds and j.account_id == asked.id and j.state in (JOB_QUEUED, JOB_RUNNING)
        ]
        assert [j.id for j in unfinished] == model
