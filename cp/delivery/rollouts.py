"""The rollout engine: one release rolled out in batches over a set of installations.

Written once for every kind of artifact. A *rollout kind* (``RolloutKind``) says which
installations a rollout targets and in which scope at most one rollout may be open; a *job
kind* says what a succeeded job changes. Core releases are registered here (rollout kind
``core``, job kind ``update``); the plugin marketplace registers ``plugin`` the same way
(``register_rollout_kind`` / ``register_job_kind``) and reuses everything else unchanged.
This module knows nothing of HTTP: it raises ``cp.errors`` exceptions and never commits,
except ``tick`` (the background worker's entry point), which commits each rollout it moves.

Rules
- Creation: the kind's candidates (installations whose version differs from the release, in a
  stable order) minus those already on a newer version (unless ``allow_downgrade``) become the
  targets, split into batches of ``batch_size`` (1..``MAX_BATCH_SIZE``); batch 1 opens at once.
  A rollout always has at least one batch (an empty one when nothing needs the release yet).
  At most one open (``active`` or ``paused``) rollout per scope (core: channel; plugin: plugin),
  enforced by a partial unique index too. Pending jobs of completed rollouts in the same scope
  are superseded (cancelled) by a new rollout.
- A job is handed out (``next_job``) when it is ``in_progress`` (asking again returns it), or
  ``pending`` in an opened batch (``batch <= current_batch``) of an ``active`` or ``completed``
  rollout (or of no rollout: plugin approvals). A ``paused`` or ``cancelled`` rollout hands out
  no new job. ``waiting_job_exists`` is the same rule as an SQL ``EXISTS`` (heartbeat ``pending``).
- ``advance``: only ``active``; refused while a job of the current batch failed, unless
  ``force``; past the last batch the rollout is ``completed`` (its stragglers keep their jobs).
  With ``from_batch`` an advance is idempotent: one that already happened returns the rollout
  unchanged, so a double click advances once.
- Gates (set at creation): more than ``max_failures`` failed jobs in a batch, or a failed share
  above ``max_failure_ratio``, pauses the rollout and opens a critical ``rollout`` alert;
  ``auto_advance`` opens the next batch once at least ``success_ratio`` of the current batch
  succeeded, none failed, and ``soak_minutes`` passed since that ratio was reached (``tick``).
- Concurrency (PostgreSQL row locks), one order everywhere: the installation, then the
  rollout, then its jobs. Every state change of a rollout locks its row first (``SELECT ...
  FOR UPDATE``); job rows are locked after the rollout row, never before it. An agent's
  request that changes its jobs (a report; a heartbeat changing its channel) locks its
  installation's row before either, so one installation's requests never wait on each other in
  a cycle (``tests/test_lock_order.py``).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Protocol

from sqlalchemy import (ARRAY, Integer, String, and_, bindparam, case, cast, exists, func, literal, or_, select,
                        update)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import joinedload

from cp import counters
from cp.fleet import alerts as alert_domain
from cp.dbutil import equal_to, get_by_id, is_postgres, paged
from cp.errors import Conflict, Forbidden, Invalid, NotFound
from cp.extensions import db
from cp.models import (
    JOB_FINISHED,
    JOB_STATUSES,
    Alert,
    Installation,
    InstallationEvent,
    Job,
    Release,
    Rollout,
)
from cp.delivery.releases import is_newer
from cp.timeutil import utcnow

log = logging.getLogger("cp.delivery.rollouts")

MAX_BATCH_SIZE = 10_000  # one batch at most; a larger fleet simply has more batches
MAX_SOAK_MINUTES = 7 * 24 * 60
OPEN_STATUSES = ("active", "paused")  # at most one per scope
HANDOUT_STATUSES = ("active", "completed")  # rollouts whose opened batches hand out pending jobs
REPORT_STATUSES = ("in_progress", "succeeded", "failed")

jobs_t = Job.__table__
rollouts_t = Rollout.__table__
inst_t = Installation.__table__


# --- kinds ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    installation_id: int
    version: str | None


class RolloutKind(Protocol):
    name: str  # Rollout.kind
    job_kind: str  # Job.kind

    def scope(self, *, channel: str | None, plugin: str | None) -> list:
        """Conditions on ``Rollout`` selecting the rollouts of the same scope."""

    def describe(self, *, channel: str | None, plugin: str | None) -> str:
        """``channel 'stable'`` / ``plugin 'payments'`` (for messages)."""

    def candidates(self, release: Release, *, channel: str | None, plugin: str | None) -> list[Target]:
        """Installations whose version differs from the release's, in a stable order."""


class CoreRollouts:
    name = "core"
    job_kind = "update"

    def scope(self, *, channel, plugin):
        return [Rollout.kind == self.name, Rollout.channel == channel]

    def describe(self, *, channel, plugin):
        return f"channel {channel!r}"

    def candidates(self, release, *, channel, plugin):
        rows = db.session.execute(
            select(inst_t.c.id, inst_t.c.version)
            .where(inst_t.c.release_channel == channel,
                   or_(inst_t.c.version.is_(None), inst_t.c.version != release.version))
            .order_by(inst_t.c.instance_id, inst_t.c.id)).all()
        return [Target(r.id, r.version) for r in rows]


def _core_success(job: Job, now: datetime) -> None:
    """A succeeded update job: the installation now runs the release (and the change is kept
    in its history like a heartbeat's)."""
    version = job.release.version
    old = db.session.execute(select(inst_t.c.version).where(inst_t.c.id == job.installation_id)).scalar()
    if old != version:
        db.session.execute(update(inst_t).where(inst_t.c.id == job.installation_id).values(version=version))
        db.session.add(InstallationEvent(installation_id=job.installation_id, field="version", old_value=old,
                                         new_value=version, at=now))


ROLLOUT_KINDS: dict[str, RolloutKind] = {}
JOB_SUCCESS: dict[str, Callable[[Job, datetime], None]] = {}


def register_rollout_kind(kind: RolloutKind) -> None:
    ROLLOUT_KINDS[kind.name] = kind


def register_job_kind(job_kind: str, on_success: Callable[[Job, datetime], None]) -> None:
    """``on_success(job, now)`` runs in the report's transaction when a job of this kind succeeds."""
    JOB_SUCCESS[job_kind] = on_success


register_rollout_kind(CoreRollouts())
register_job_kind("update", _core_success)


# --- reading -------------------------------------------------------------------------------
def get_rollout(rollout_id: int, *, lock: bool = False, skip_locked: bool = False) -> Rollout:
    return get_by_id(Rollout, rollout_id, lock=lock, skip_locked=skip_locked,
                     missing=f"No rollout with id {rollout_id}.", code="unknown_rollout")


def list_rollouts(*, limit: int = 50, offset: int = 0, kind: str | None = "core", status: str | None = None,
                  channel: str | None = None, plugin: str | None = None) -> tuple[list[Rollout], int]:
    """Newest first (ties by id)."""
    conds = equal_to(Rollout, kind=kind, status=status, channel=channel, plugin=plugin)
    page = paged(Rollout, conds, newest=Rollout.created_at, limit=limit, offset=offset,
                 options=(joinedload(Rollout.release),))
    return page.items, page.total


def empty_counts() -> dict[str, int]:
    return {s: 0 for s in JOB_STATUSES}


def job_counts(rollout_ids: list[int]) -> dict[int, dict[str, int]]:
    """Rollout id -> job status -> count (every status present, zeros included), from the
    exact counters (``cp.counters``)."""
    return counters.job_counts(rollout_ids)


def batch_counts(rollout: Rollout) -> list[dict[str, Any]]:
    """``[{"batch": 1, "opened": True, "jobs": {status: n}}, ...]`` for every batch."""
    per: dict[int, dict[str, int]] = {b: empty_counts() for b in range(1, rollout.batches + 1)}
    for batch, statuses in counters.job_batches([rollout.id]).get(rollout.id, {}).items():
        per.setdefault(batch, empty_counts()).update(statuses)
    return [{"batch": b, "opened": b <= rollout.current_batch, "jobs": per[b]} for b in sorted(per)]


def _batch_figures(rollout_id: int, batch: int) -> tuple[int, int, int]:
    """(jobs not cancelled, succeeded, failed) of one batch."""
    row = db.session.execute(
        select(func.count().filter(jobs_t.c.status != "cancelled"),
               func.count().filter(jobs_t.c.status == "succeeded"),
               func.count().filter(jobs_t.c.status == "failed"))
        .where(jobs_t.c.rollout_id == rollout_id, jobs_t.c.batch == batch)).one()
    return int(row[0]), int(row[1]), int(row[2])


# --- creation ------------------------------------------------------------------------------
def validate_gates(*, batch_size: Any, max_failures: Any = None, max_failure_ratio: Any = None,
                   auto_advance: dict | None = None) -> None:
    """The bounds of a rollout's settings (the API schema checks the same constants)."""
    errors: dict[str, list[str]] = {}
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH_SIZE:
        errors["batch_size"] = [f"Must be an integer from 1 to {MAX_BATCH_SIZE}."]
    if max_failures is not None and (isinstance(max_failures, bool) or not isinstance(max_failures, int)
                                     or max_failures < 0):
        errors["max_failures"] = ["Must be an integer >= 0."]
    if max_failure_ratio is not None and not 0 <= max_failure_ratio <= 1:
        errors["max_failure_ratio"] = ["Must be between 0 and 1."]
    if auto_advance is not None:
        ratio = auto_advance.get("success_ratio")
        soak = auto_advance.get("soak_minutes", 0)
        if ratio is None or not 0 < ratio <= 1:
            errors.setdefault("auto_advance", []).append("success_ratio must be > 0 and <= 1.")
        if soak is None or not 0 <= soak <= MAX_SOAK_MINUTES:
            errors.setdefault("auto_advance", []).append(f"soak_minutes must be from 0 to {MAX_SOAK_MINUTES}.")
    if errors:
        raise Invalid("The rollout settings are out of bounds.", details=errors)


def open_rollout_in_scope(kind: RolloutKind, *, channel: str | None, plugin: str | None) -> Rollout | None:
    return db.session.scalars(select(Rollout).where(*kind.scope(channel=channel, plugin=plugin),
                                                    Rollout.status.in_(OPEN_STATUSES))).first()


def create_rollout(*, kind: str, release: Release, batch_size: int, channel: str | None = None,
                   plugin: str | None = None, max_failures: int | None = None,
                   max_failure_ratio: float | None = None, auto_advance: dict | None = None,
                   allow_downgrade: bool = False, by: str | None = None, now: datetime | None = None) -> Rollout:
    """Create a rollout of ``release`` and open its first batch (see the module rules)."""
    now = now or utcnow()
    rkind = ROLLOUT_KINDS[kind]
    validate_gates(batch_size=batch_size, max_failures=max_failures, max_failure_ratio=max_failure_ratio,
                   auto_advance=auto_advance)
    if release.kind != kind:
        raise Invalid(f"Release {release} is not a {kind} release.", details={"release": ["Wrong kind of release."]})
    _refuse_if_open(rkind, channel=channel, plugin=plugin)

    targets: list[Target] = []
    skipped = 0
    for t in rkind.candidates(release, channel=channel, plugin=plugin):
        if not allow_downgrade and is_newer(t.version, release.version):
            skipped += 1
        else:
            targets.append(t)
    batches = max(1, math.ceil(len(targets) / batch_size))
    rollout = Rollout(
        kind=kind, release_id=release.id, channel=channel, plugin=plugin, batch_size=batch_size, status="active",
        current_batch=1, batches=batches, targets=len(targets), skipped=skipped, max_failures=max_failures,
        max_failure_ratio=max_failure_ratio,
        auto_advance_success_ratio=(auto_advance or {}).get("success_ratio"),
        auto_advance_soak_minutes=(auto_advance or {}).get("soak_minutes", 0) if auto_advance else None,
        allow_downgrade=allow_downgrade, batch_opened_at=now, created_at=now, created_by=by)
    try:
        with db.session.begin_nested():
            db.session.add(rollout)
    except IntegrityError:  # another rollout of this scope was created concurrently
        _refuse_if_open(rkind, channel=channel, plugin=plugin)
        raise
    # the stragglers of earlier, completed rollouts of this scope would install an older release
    db.session.execute(
        update(jobs_t).where(
            jobs_t.c.status == "pending",
            jobs_t.c.rollout_id.in_(select(Rollout.id).where(*rkind.scope(channel=channel, plugin=plugin),
                                                             Rollout.status == "completed")))
        .values(status="cancelled", message=f"superseded by rollout {rollout.id}", finished_at=now, updated_at=now))
    if targets:
        _insert_jobs(rkind.job_kind, rollout, [t.installation_id for t in targets], batch_size, now)
    log.info("rollout created", extra={"event": "rollout_created", "rollout_id": rollout.id,
                                       "targets": len(targets), "batches": batches})
    return rollout


def _insert_jobs(job_kind: str, rollout: Rollout, installation_ids: list[int], batch_size: int,
                 now: datetime) -> None:
    """A new rollout's jobs, pending, in target order: the i-th target (from 0) is ``position``
    i of batch ``i // batch_size + 1``. On PostgreSQL one ``INSERT ... SELECT`` over
    ``unnest`` of the per-job arrays (a list of rows is sent as one ``INSERT`` per row: about 6 s
    for 100,000 targets, against well under one); elsewhere a list of rows."""
    same = {"kind": job_kind, "rollout_id": rollout.id, "release_id": rollout.release_id, "status": "pending",
            "attempts": 0, "created_at": now, "updated_at": now}
    positions = range(len(installation_ids))
    per_job = {"installation_id": installation_ids, "batch": [i // batch_size + 1 for i in positions],
               "position": list(positions)}
    if not is_postgres():
        db.session.execute(jobs_t.insert(), [{**same, **dict(zip(per_job, values))} for values in zip(*per_job.values())])
        return
    # each array is sent as its text form ('{1,2,3}'), cast by PostgreSQL: psycopg dumps a list
    # of 100,000 ints element by element in Python (about 0.15 s a list), the text is one join
    rows = func.unnest(*(cast(bindparam(name, type_=String), ARRAY(Integer)) for name in per_job)
                       ).table_valued(*per_job).render_derived()
    db.session.execute(
        jobs_t.insert().from_select([*same, *per_job], select(
            *(literal(value, jobs_t.c[name].type) for name, value in same.items()), *(rows.c[name] for name in per_job))),
        {name: "{" + ",".join(map(str, values)) + "}" for name, values in per_job.items()})


def _refuse_if_open(rkind: RolloutKind, *, channel: str | None, plugin: str | None) -> None:
    existing = open_rollout_in_scope(rkind, channel=channel, plugin=plugin)
    if existing is not None:
        raise Conflict(f"Rollout {existing.id} is already {existing.status} on "
                       f"{rkind.describe(channel=channel, plugin=plugin)}; cancel or complete it first.",
                       code="rollout_in_progress", details={"rollout_id": existing.id, "status": existing.status})


# --- state changes (each locks the rollout row first) ---------------------------------------
def _not_allowed(rollout: Rollout, action: str) -> Conflict:
    return Conflict(f"Rollout {rollout.id} is {rollout.status}; it cannot be {action}.",
                    code="invalid_rollout_state", details={"status": rollout.status})


def _open_next(rollout: Rollout, now: datetime) -> None:
    if rollout.current_batch >= rollout.batches:
        rollout.status = "completed"
        rollout.completed_at = now
    else:
        rollout.current_batch += 1
        rollout.batch_opened_at = now


def advance(rollout_id: int, *, force: bool = False, from_batch: int | None = None, by: str | None = None,
            now: datetime | None = None) -> Rollout:
    """Open the next batch (or complete the rollout after its last one)."""
    now = now or utcnow()
    rollout = get_rollout(rollout_id, lock=True)
    if from_batch is not None:
        already = rollout.current_batch > from_batch or (
            rollout.current_batch == from_batch and rollout.status == "completed")
        if already:
            return rollout  # that advance already happened (a double click, a retried request)
        if from_batch > rollout.current_batch:
            raise Conflict(f"Batch {from_batch} is not open yet; the current batch is {rollout.current_batch}.",
                           code="batch_mismatch", details={"current_batch": rollout.current_batch})
    if rollout.status != "active":
        raise _not_allowed(rollout, "advanced")
    if not force:
        _total, _ok, failed = _batch_figures(rollout.id, rollout.current_batch)
        if failed:
            raise Conflict(f"{failed} job(s) of batch {rollout.current_batch} failed; retry them or advance "
                           f"with force.", code="batch_has_failures",
                           details={"batch": rollout.current_batch, "failed": failed})
    _open_next(rollout, now)
    log.info("rollout advanced", extra={"event": "rollout_advanced", "rollout_id": rollout.id,
                                        "current_batch": rollout.current_batch, "status": rollout.status,
                                        "force": force, "by": by})
    return rollout


def refuse_another_report(current: str, reported: str, conflict: Conflict) -> None:
    """A report on something already reported: the same status again is no change, another
    status is ``conflict`` (jobs here, restore verifications in ``cp.delivery.restores``)."""
    if current != reported:
        raise conflict


def _to_status(rollout_id: int, status: str, *, allowed_from: tuple[str, ...], verb: str) -> tuple[Rollout, bool]:
    """The rollout, locked and moved to ``status``, and whether that changed it (already there:
    the transition again changes nothing); 409 from a status not in ``allowed_from``."""
    rollout = get_rollout(rollout_id, lock=True)
    if rollout.status == status:
        return rollout, False
    if rollout.status not in allowed_from:
        raise _not_allowed(rollout, verb)
    rollout.status = status
    return rollout, True


def pause(rollout_id: int, *, reason: str | None = None, by: str | None = None) -> Rollout:
    """Stop handing out new jobs. Pausing a paused rollout changes nothing."""
    rollout, changed = _to_status(rollout_id, "paused", allowed_from=("active",), verb="paused")
    if not changed:
        return rollout
    rollout.paused_reason = reason or (f"paused by {by}" if by else "paused")
    return rollout


def resume(rollout_id: int, *, by: str | None = None, now: datetime | None = None) -> Rollout:
    """Hand out jobs again; resolves the rollout's gate alert. Resuming an active one changes nothing."""
    rollout, changed = _to_status(rollout_id, "active", allowed_from=("paused",), verb="resumed")
    if not changed:
        return rollout
    rollout.paused_reason = None
    _resolve_gate_alerts(rollout, by or "system", now or utcnow())
    return rollout


def cancel(rollout_id: int, *, by: str | None = None, now: datetime | None = None) -> Rollout:
    """Cancel the pending jobs; finished and in-progress jobs stay. Cancelling twice changes nothing."""
    now = now or utcnow()
    rollout, changed = _to_status(rollout_id, "cancelled", allowed_from=("active", "paused"), verb="cancelled")
    if not changed:
        return rollout
    rollout.paused_reason = None
    db.session.execute(update(jobs_t).where(jobs_t.c.rollout_id == rollout.id, jobs_t.c.status == "pending")
                       .values(status="cancelled", message=f"rollout cancelled by {by or 'system'}",
                               finished_at=now, updated_at=now))
    _resolve_gate_alerts(rollout, by or "system", now)
    return rollout


def retry(rollout_id: int, *, by: str | None = None, now: datetime | None = None) -> tuple[Rollout, int]:
    """Queue the failed jobs again (``pending``; handed out when their batch is open and the
    rollout active or completed). Returns the rollout and how many jobs were re-queued."""
    now = now or utcnow()
    rollout = get_rollout(rollout_id, lock=True)
    if rollout.status == "cancelled":
        raise _not_allowed(rollout, "retried")
    res = db.session.execute(update(jobs_t).where(jobs_t.c.rollout_id == rollout.id, jobs_t.c.status == "failed")
                             .values(status="pending", finished_at=None, updated_at=now))
    return rollout, res.rowcount or 0


# --- gates ---------------------------------------------------------------------------------
def gate_fingerprint(rollout_id: int) -> str:
    return f"rollout:{rollout_id}"


def _check_failure_gate(rollout: Rollout, batch: int, job: Job, now: datetime) -> None:
    """Called with the rollout row locked, after a job of ``batch`` failed."""
    if rollout.status != "active" or (rollout.max_failures is None and rollout.max_failure_ratio is None):
        return
    total, _ok, failed = _batch_figures(rollout.id, batch)
    reasons = []
    if rollout.max_failures is not None and failed > rollout.max_failures:
        reasons.append(f"{failed} failed jobs in batch {batch}, above max_failures {rollout.max_failures}")
    if rollout.max_failure_ratio is not None and total and failed / total > rollout.max_failure_ratio:
        reasons.append(f"{failed}/{total} failed in batch {batch}, above max_failure_ratio "
                       f"{rollout.max_failure_ratio:g}")
    if not reasons:
        return
    release = rollout.release
    scope = ROLLOUT_KINDS[rollout.kind].describe(channel=rollout.channel, plugin=rollout.plugin)
    rollout.status = "paused"
    rollout.paused_reason = "; ".join(reasons)
    alert_domain.open_alert(
        job.installation, level="critical", source="rollout", fingerprint=gate_fingerprint(rollout.id), now=now,
        message=f"Rollout {rollout.id} of {release} on {scope} paused itself: {rollout.paused_reason}.")
    log.warning("rollout paused by its failure gate",
                extra={"event": "rollout_gate_paused", "rollout_id": rollout.id, "batch": batch, "failed": failed})


def _resolve_gate_alerts(rollout: Rollout, by: str, now: datetime) -> None:
    fp = gate_fingerprint(rollout.id)
    installation_ids = db.session.scalars(select(Alert.installation_id).where(
        Alert.resolved_at.is_(None), Alert.source == "rollout", Alert.fingerprint == fp)).all()
    for installation_id in set(installation_ids):
        alert_domain.resolve_open(installation_id, fp, by=by, now=now)


def auto_advance_due(rollout: Rollout, now: datetime) -> bool:
    """The current batch has reached its success ratio, with no failure, for ``soak_minutes``."""
    ratio = rollout.auto_advance_success_ratio
    if rollout.status != "active" or ratio is None:
        return False
    total, succeeded, failed = _batch_figures(rollout.id, rollout.current_batch)
    if failed:
        return False  # like a manual advance without force
    need = max(0, math.ceil(ratio * total - 1e-9))
    if succeeded < need:
        return False
    reached = rollout.batch_opened_at or rollout.created_at
    if need:
        kth = db.session.execute(
            select(jobs_t.c.finished_at).where(jobs_t.c.rollout_id == rollout.id,
                                               jobs_t.c.batch == rollout.current_batch,
                                               jobs_t.c.status == "succeeded")
            .order_by(jobs_t.c.finished_at, jobs_t.c.id).limit(1).offset(need - 1)).scalar()
        if kth is not None and kth > reached:
            reached = kth
    soak = timedelta(minutes=rollout.auto_advance_soak_minutes or 0)
    return now >= reached + soak


def tick(now: datetime | None = None) -> int:
    """Open the next batch of every active rollout whose auto-advance is due. Safe to run in
    several worker processes at once (rows locked with SKIP LOCKED); commits each rollout it
    moves. Returns how many rollouts moved."""
    now = now or utcnow()
    ids = db.session.scalars(select(Rollout.id).where(Rollout.status == "active",
                                                      Rollout.auto_advance_success_ratio.is_not(None))
                             .order_by(Rollout.id)).all()
    db.session.commit()
    moved = 0
    for rollout_id in ids:
        try:
            rollout = get_rollout(rollout_id, lock=True, skip_locked=True)
        except NotFound:  # locked by another worker right now, or gone
            db.session.rollback()
            continue
        if auto_advance_due(rollout, now):
            _open_next(rollout, now)
            moved += 1
            log.info("rollout auto-advanced", extra={"event": "rollout_auto_advanced", "rollout_id": rollout.id,
                                                     "current_batch": rollout.current_batch,
                                                     "status": rollout.status})
        db.session.commit()
    return moved


# --- the agent side ------------------------------------------------------------------------
def handout_condition():
    """SQL: this job (``jobs`` row) is what ``next_job`` hands out."""
    opened = exists().where(rollouts_t.c.id == jobs_t.c.rollout_id, rollouts_t.c.status.in_(HANDOUT_STATUSES),
                            jobs_t.c.batch <= rollouts_t.c.current_batch)
    return or_(jobs_t.c.status == "in_progress",
               and_(jobs_t.c.status == "pending", or_(jobs_t.c.rollout_id.is_(None), opened)))


def waiting_job_exists(installation_id: int, job_kind: str):
    """SQL ``EXISTS``: ``next_job`` would hand this installation a job of ``job_kind``."""
    return exists().where(jobs_t.c.installation_id == installation_id, jobs_t.c.kind == job_kind,
                          handout_condition())


def _is_handed_out(job: Job) -> bool:
    if job.status == "in_progress":
        return True
    if job.status != "pending":
        return False
    r = job.rollout
    return r is None or (r.status in HANDOUT_STATUSES and (job.batch or 0) <= r.current_batch)


def _installation_id(instance_id: str) -> int | None:
    return db.session.execute(select(inst_t.c.id).where(inst_t.c.instance_id == instance_id)).scalar()


def next_job(job_kind: str, instance_id: str, now: datetime | None = None) -> Job | None:
    """The job this installation should run now (see the module rules), marked ``in_progress``;
    asking again returns the same job. The job row is locked, so it changes state once."""
    now = now or utcnow()
    installation_id = _installation_id(instance_id)
    if installation_id is None:
        return None
    stmt = (select(Job).where(Job.installation_id == installation_id, Job.kind == job_kind, handout_condition())
            .order_by(case((Job.status == "in_progress", 0), else_=1), Job.id).limit(1)
            .with_for_update(of=Job).execution_options(populate_existing=True))
    job = db.session.scalars(stmt).first()
    if job is None:
        return None
    if job.status == "pending":
        job.status = "in_progress"
        job.fetched_at = now
        job.attempts = (job.attempts or 0) + 1
        job.updated_at = now
    return job


def report_job(job_kind: str, instance_id: str, job_id: int, status: str, message: str | None = None,
               now: datetime | None = None) -> Job:
    """An agent's report on its job. 404 unknown job (or one of another kind), 403 another
    installation's job, 409 a different status on a finished job or a job not handed out;
    the same report twice changes nothing."""
    now = now or utcnow()
    if status not in REPORT_STATUSES:
        raise Invalid("Unknown job status.", details={"status": [f"Must be one of: {', '.join(REPORT_STATUSES)}."]})
    ref = db.session.execute(
        select(jobs_t.c.rollout_id, jobs_t.c.kind, inst_t.c.instance_id)
        .join(inst_t, inst_t.c.id == jobs_t.c.installation_id).where(jobs_t.c.id == job_id)).first()
    if ref is None or ref.kind != job_kind:
        raise NotFound(f"No job with id {job_id}.", code="unknown_job")
    if ref.instance_id != instance_id:
        raise Forbidden("This job belongs to another installation.", code="forbidden")
    # lock order (module docstring): the installation (as its heartbeat does), the rollout, the job
    db.session.execute(select(inst_t.c.id).where(inst_t.c.instance_id == instance_id).with_for_update())
    rollout = None
    if status == "failed" and ref.rollout_id is not None:
        rollout = get_rollout(ref.rollout_id, lock=True)
    job = db.session.scalars(select(Job).where(Job.id == job_id).with_for_update(of=Job)
                             .execution_options(populate_existing=True)).one()
    if job.status in JOB_FINISHED:
        refuse_another_report(job.status, status, Conflict(f"Job {job.id} is already {job.status}.",
                                                           code="job_finished", details={"status": job.status}))
        return job  # the same report again: no change
    if not _is_handed_out(job):
        raise Conflict(f"Job {job.id} has not been handed out (its batch is not open or its rollout is "
                       f"{job.rollout.status if job.rollout else 'gone'}).", code="job_not_available",
                       details={"status": job.status})
    if job.status == "pending":  # reported without asking first: it counts as fetched
        job.fetched_at = now
        job.attempts = (job.attempts or 0) + 1
    if status == "in_progress":
        if job.status == "in_progress" and (message is None or message == job.message):
            return job
        job.status = "in_progress"
        if message is not None:
            job.message = message
        job.updated_at = now
        return job
    job.status = status
    job.message = message
    job.finished_at = now
    job.updated_at = now
    db.session.flush()
    if status == "succeeded":
        JOB_SUCCESS[job.kind](job, now)
    elif rollout is not None:
        _check_failure_gate(rollout, job.batch or 0, job, now)
    return job


# --- installations joining or leaving a scope ------------------------------------------------
def on_channel_change(installation_id: int, old_channel: str | None, new_channel: str | None,
                      version: str | None, now: datetime | None = None) -> None:
    """Called by a heartbeat that registers an installation or changes its channel (with the
    installation row locked). Leaving a channel cancels its pending update jobs there; joining
    a channel with an open rollout adds it to that rollout's last batch (flushed: the
    heartbeat's answer reads it)."""
    now = now or utcnow()
    if old_channel and old_channel != new_channel:
        # the rollouts of its pending jobs there, locked before the jobs (the lock order)
        left = db.session.scalars(select(Rollout.id).where(
            Rollout.kind == "core", Rollout.channel == old_channel,
            Rollout.id.in_(select(jobs_t.c.rollout_id).where(
                jobs_t.c.installation_id == installation_id, jobs_t.c.kind == "update", jobs_t.c.status == "pending")))
            .order_by(Rollout.id).with_for_update()).all()
        if left:
            db.session.execute(update(jobs_t).where(
                jobs_t.c.installation_id == installation_id, jobs_t.c.kind == "update", jobs_t.c.status == "pending",
                jobs_t.c.rollout_id.in_(left))
                .values(status="cancelled", message=f"left channel {old_channel}", finished_at=now, updated_at=now))
    if not new_channel:
        return
    rollout_id = db.session.execute(select(Rollout.id).where(
        Rollout.kind == "core", Rollout.channel == new_channel, Rollout.status.in_(OPEN_STATUSES))).scalar()
    if rollout_id is not None:
        add_target(get_rollout(rollout_id, lock=True), installation_id, version, now)
        # written now, so that what the heartbeat reads next in its transaction (its ``pending``)
        # sees the job it just made
        db.session.flush()


def add_target(rollout: Rollout, installation_id: int, version: str | None, now: datetime) -> Job | None:
    """Add an installation to the last batch of an open rollout (the rollout row locked)."""
    release = rollout.release
    if rollout.status not in OPEN_STATUSES or version == release.version:
        return None
    if not rollout.allow_downgrade and is_newer(version, release.version):
        rollout.skipped += 1
        return None
    job = db.session.scalars(select(Job).where(Job.rollout_id == rollout.id,
                                               Job.installation_id == installation_id).with_for_update()).first()
    if job is not None:
        if job.status != "cancelled":
            return job
        job.status, job.message, job.finished_at = "pending", None, None  # back on the channel
        job.batch, job.updated_at = rollout.batches, now
        return job
    job = Job(kind=ROLLOUT_KINDS[rollout.kind].job_kind, rollout_id=rollout.id, release_id=release.id,
              installation_id=installation_id, batch=rollout.batches, position=rollout.targets, status="pending",
              attempts=0, created_at=now, updated_at=now)
    db.session.add(job)
    rollout.targets += 1
    return job


# --- pages ---------------------------------------------------------------------------------
def installation_history(installation_id: int, limit: int = 50) -> list[Job]:
    """The installation's update jobs, newest first (for its page)."""
    return list(db.session.scalars(
        select(Job).options(joinedload(Job.release), joinedload(Job.rollout))
        .where(Job.installation_id == installation_id, Job.kind == "update")
        .order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)).all())


def list_jobs(*, limit: int = 50, offset: int = 0, rollout_id: int | None = None, status: str | None = None,
              kind: str | None = None) -> tuple[list[Job], int]:
    page = paged(Job, equal_to(Job, rollout_id=rollout_id, status=status, kind=kind), newest=Job.created_at,
                 limit=limit, offset=offset)
    return page.items, page.total
