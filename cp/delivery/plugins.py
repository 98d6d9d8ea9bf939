"""The plugin marketplace: plugin releases, requests and approvals, and plugin rollouts, built on
the shared release and rollout machinery (``cp.delivery.releases``, ``cp.delivery.rollouts``).

Nothing here re-implements batching, locking, gating or reporting: this module registers the
``plugin`` rollout kind and the ``plugin`` job kind with the engine and adds what only the
marketplace has (plugin names, requests, what each installation has installed). It knows
nothing of HTTP: it raises ``cp.errors`` exceptions and never commits.

Rules
- Plugin names: ``PLUGIN_NAME_RE`` (1-128 characters, lower-case letters, digits, ``.``, ``_``,
  ``-``, starting with a letter or digit), so that a name is the same everywhere (URLs,
  filters, the installed-plugin record) and cannot be two names differing only in case.
- Plugin releases are published with ``cp.delivery.releases.publish_release(plugin=...)``: the same
  Ed25519 scheme, the same checks (semantic version equal to ``manifest.version``, trusted
  key, 409 for a version already published for that plugin). A manifest that names its plugin
  (``"plugin"``) must name this one, so a signed manifest of one plugin cannot be published as
  another (the CLI writes the name into the manifest it signs).
- Requests (agents): the plugin must have a release (404 ``unknown_plugin``), a requested
  version must exist (404 ``unknown_release``); a pending request for the same plugin (409
  ``request_pending``, also enforced by a partial unique index) or the plugin already installed
  at that version (``version`` null: the newest) is refused (409 ``plugin_already_installed``).
- Approval (admin, the request row locked): ``approved`` plus an install job (kind
  ``plugin``, no rollout, handed out at once) of the requested version, else the newest
  release (the newest non-pre-release when there is one); the plugin is recorded as approved
  for the installation (``installation_plugins``, version NULL until an install succeeds).
  Pending install jobs of earlier approvals of that plugin on that installation are cancelled
  (the latest decision wins). Rejection needs a reason, which the agent reads in its request
  list (``POST /api/plugins/requests/mine``). Deciding a request that is not pending: 409.
- Plugin rollouts: the targets are the installations that have the plugin approved and do
  not run the release's version (not installed yet counts as another version), in a stable
  order (instance id); installations on a newer version are skipped unless
  ``allow_downgrade``; one open rollout per plugin. Everything else is the engine's.
- A succeeded plugin job records the installed version in ``installation_plugins``.
"""
from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import joinedload

from cp.delivery import releases
from cp.delivery import rollouts
from cp.dbutil import Page, get_by_id, insert, paged
from cp.errors import Conflict, Invalid, NotFound
from cp.extensions import db
from cp.models import (
    Installation,
    InstallationPlugin,
    Job,
    PluginRequest,
    Release,
    Rollout,
)
from cp.timeutil import utcnow

PLUGIN_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
PLUGIN_NAME_HELP = "1-128 characters of [a-z0-9._-], starting with a letter or a digit."
JOB_KIND = "plugin"
ROLLOUT_KIND = "plugin"
HISTORY_LIMIT = 50
MAX_REASON = 2000

ip_t = InstallationPlugin.__table__
jobs_t = Job.__table__
inst_t = Installation.__table__


def is_plugin_name(value: Any) -> bool:
    return isinstance(value, str) and PLUGIN_NAME_RE.fullmatch(value) is not None


def check_plugin_name(value: Any) -> str:
    if not is_plugin_name(value):
        raise Invalid("Invalid plugin name.", details={"plugin": [PLUGIN_NAME_HELP]})
    return value


# --- the engine's plugin kinds ----------------------------------------------------------------
class PluginRollouts:
    """Rollout kind ``plugin``: one open rollout per plugin; targets from ``installation_plugins``."""

    name = ROLLOUT_KIND
    job_kind = JOB_KIND

    def scope(self, *, channel, plugin):
        return [Rollout.kind == self.name, Rollout.plugin == plugin]

    def describe(self, *, channel, plugin):
        return f"plugin {plugin!r}"

    def candidates(self, release, *, channel, plugin):
        rows = db.session.execute(
            select(ip_t.c.installation_id, ip_t.c.version)
            .join(inst_t, inst_t.c.id == ip_t.c.installation_id)
            .where(ip_t.c.plugin == plugin, or_(ip_t.c.version.is_(None), ip_t.c.version != release.version))
            .order_by(inst_t.c.instance_id, inst_t.c.id)).all()
        return [rollouts.Target(r.installation_id, r.version) for r in rows]


def _record_installed(installation_id: int, plugin: str, version: str, now: datetime) -> None:
    """Upsert the installed version (the row normally exists since the approval)."""
    stmt = insert(ip_t).values(installation_id=installation_id, plugin=plugin, version=version, approved_at=now,
                               updated_at=now)
    db.session.execute(stmt.on_conflict_do_update(index_elements=["installation_id", "plugin"],
                                                  set_={"version": version, "updated_at": now}))


def _plugin_success(job: Job, now: datetime) -> None:
    """A succeeded plugin job: the installation now runs that plugin release."""
    release = job.release
    _record_installed(job.installation_id, release.plugin, release.version, now)


rollouts.register_rollout_kind(PluginRollouts())
rollouts.register_job_kind(JOB_KIND, _plugin_success)


# --- releases ---------------------------------------------------------------------------------
def publish_plugin_release(*, plugin: str, version: str, manifest: dict, signature: str, key_id: str,
                           by: str | None = None) -> Release:
    """Check and store a signed plugin release (see the module rules)."""
    check_plugin_name(plugin)
    if isinstance(manifest, dict) and "plugin" in manifest and manifest["plugin"] != plugin:
        raise Invalid("The manifest names another plugin.",
                      details={"manifest": [f"manifest.plugin must equal {plugin!r} when present."]})
    return releases.publish_release(plugin=plugin, version=version, manifest=manifest, signature=signature,
                                    key_id=key_id, by=by)


def list_plugin_releases(*, limit: int = 50, offset: int = 0, plugin: str | None = None,
                         version: str | None = None) -> tuple[list[Release], int]:
    """Plugin releases newest first, of one plugin or of all."""
    return releases.list_releases(limit=limit, offset=offset, plugin=plugin or None, any_plugin=not plugin,
                                  version=version)


def plugin_exists(plugin: str) -> bool:
    return db.session.execute(select(Release.id).where(Release.plugin == plugin).limit(1)).first() is not None


def require_plugin(plugin: str) -> None:
    if not is_plugin_name(plugin) or not plugin_exists(plugin):
        raise NotFound(f"No plugin {plugin!r}: no release of it has been published.", code="unknown_plugin",
                       details={"plugin": plugin})


def newest_plugin_release(plugin: str) -> Release | None:
    """The release an unversioned request installs: the newest by semver precedence, among the
    final releases when there is one (a 3.0.0-rc.1 is not installed by default)."""
    items = db.session.scalars(select(Release).where(Release.plugin == plugin)).all()
    parsed = [(releases.parse_version(r.version), r) for r in items]
    parsed = [(v, r) for v, r in parsed if v is not None]
    final = [(v, r) for v, r in parsed if not v.prerelease]
    pool = final or parsed
    return max(pool, key=lambda vr: (vr[0], vr[1].id))[1] if pool else None


def release_for(plugin: str, version: str | None) -> Release:
    """The release a request for ``version`` (None: the newest) installs; 404 when unknown."""
    require_plugin(plugin)
    if version is not None:
        return releases.get_release(version, plugin=plugin)
    release = newest_plugin_release(plugin)
    if release is None:  # pragma: no cover - require_plugin saw a release
        raise NotFound(f"No release of plugin {plugin!r}.", code="unknown_plugin")
    return release


# --- requests (agents ask, admins decide) -----------------------------------------------------
def _installation(instance_id: str) -> Installation:
    inst = db.session.scalars(select(Installation).where(Installation.instance_id == instance_id)).first()
    if inst is None:
        raise NotFound(f"No installation {instance_id!r}; send a heartbeat first.", code="unknown_installation")
    return inst


def installed_version(installation_id: int, plugin: str) -> str | None:
    return db.session.execute(select(ip_t.c.version).where(ip_t.c.installation_id == installation_id,
                                                           ip_t.c.plugin == plugin)).scalar()


def _pending_request(installation_id: int, plugin: str) -> PluginRequest | None:
    return db.session.scalars(select(PluginRequest).where(
        PluginRequest.installation_id == installation_id, PluginRequest.plugin == plugin,
        PluginRequest.status == "pending")).first()


def _refuse_if_pending(installation_id: int, plugin: str) -> None:
    existing = _pending_request(installation_id, plugin)
    if existing is not None:
        raise Conflict(f"Request {existing.id} for plugin {plugin!r} is still pending.", code="request_pending",
                       details={"request_id": existing.id})


def create_request(*, instance_id: str, plugin: str, version: str | None = None, reason: str | None = None,
                   now: datetime | None = None) -> PluginRequest:
    """An installation asks for a plugin (see the module rules)."""
    now = now or utcnow()
    inst = _installation(instance_id)
    release = release_for(plugin, version)
    if installed_version(inst.id, plugin) == release.version:
        raise Conflict(f"Plugin {plugin!r} {release.version} is already installed on {instance_id}.",
                       code="plugin_already_installed", details={"plugin": plugin, "version": release.version})
    _refuse_if_pending(inst.id, plugin)
    request = PluginRequest(installation_id=inst.id, installation=inst, plugin=plugin, version=version,
                            reason=reason, status="pending", created_at=now)
    try:
        with db.session.begin_nested():
            db.session.add(request)
    except IntegrityError:  # another request for this plugin was created concurrently
        _refuse_if_pending(inst.id, plugin)
        raise
    return request


def get_request(request_id: int, *, lock: bool = False) -> PluginRequest:
    return get_by_id(PluginRequest, request_id, lock=lock, missing=f"No plugin request with id {request_id}.",
                     code="unknown_request")


def _decidable(request_id: int) -> PluginRequest:
    request = get_request(request_id, lock=True)
    if request.status != "pending":
        raise Conflict(f"Request {request.id} is already {request.status}.", code="request_not_pending",
                       details={"status": request.status})
    return request


def approve(request_id: int, *, reason: str | None = None, by: str | None = None,
            now: datetime | None = None) -> PluginRequest:
    """Approve a pending request: an install job and the plugin recorded as approved."""
    now = now or utcnow()
    request = _decidable(request_id)
    release = release_for(request.plugin, request.version)
    # an earlier approval's install job not fetched yet would install an older decision
    earlier = select(Release.id).where(Release.plugin == request.plugin)
    db.session.execute(
        update(jobs_t).where(jobs_t.c.installation_id == request.installation_id, jobs_t.c.kind == JOB_KIND,
                             jobs_t.c.rollout_id.is_(None), jobs_t.c.status == "pending",
                             jobs_t.c.release_id.in_(earlier))
        .values(status="cancelled", message=f"superseded by the approval of request {request.id}",
                finished_at=now, updated_at=now))
    job = Job(kind=JOB_KIND, rollout_id=None, release_id=release.id, installation_id=request.installation_id,
              batch=None, position=0, status="pending", attempts=0, created_at=now, updated_at=now)
    db.session.add(job)
    db.session.flush()
    db.session.execute(
        insert(ip_t).values(installation_id=request.installation_id, plugin=request.plugin, version=None,
                            approved_at=now, updated_at=now)
        .on_conflict_do_nothing(index_elements=["installation_id", "plugin"]))
    request.status = "approved"
    request.decision_reason = reason
    request.decided_at = now
    request.decided_by = by
    request.job_id = job.id
    request.job = job
    return request


def reject(request_id: int, *, reason: str, by: str | None = None, now: datetime | None = None) -> PluginRequest:
    """Reject a pending request; the reason is shown to the agent in its request list."""
    if not isinstance(reason, str) or not reason.strip():
        raise Invalid("Say why the request is rejected.", details={"reason": ["Missing data for required field."]})
    request = _decidable(request_id)
    request.status = "rejected"
    request.decision_reason = reason.strip()[:MAX_REASON]
    request.decided_at = now or utcnow()
    request.decided_by = by
    return request


def list_requests(*, limit: int = 50, offset: int = 0, status: str | None = None, plugin: str | None = None,
                  instance_id: str | None = None, installation_id: int | None = None) -> Page:
    """Requests newest first (ties by id)."""
    conds = []
    if status:
        conds.append(PluginRequest.status == status)
    if plugin:
        conds.append(PluginRequest.plugin == plugin)
    if instance_id:
        conds.append(PluginRequest.installation_id.in_(
            select(Installation.id).where(Installation.instance_id == instance_id)))
    if installation_id is not None:
        conds.append(PluginRequest.installation_id == installation_id)
    return paged(PluginRequest, conds, newest=PluginRequest.created_at, limit=limit, offset=offset,
                 options=(joinedload(PluginRequest.installation), joinedload(PluginRequest.job).joinedload(Job.release)))


def list_own_requests(instance_id: str, **args: Any) -> Page:
    """An agent's own requests (an unknown installation has none)."""
    inst_id = db.session.execute(select(inst_t.c.id).where(inst_t.c.instance_id == instance_id)).scalar()
    if inst_id is None:
        return Page([], 0, args.get("limit", 50), args.get("offset", 0))
    return list_requests(installation_id=inst_id, **args)


# --- rollouts ---------------------------------------------------------------------------------
def create_plugin_rollout(*, plugin: str, version: str, batch_size: int, by: str | None = None,
                          **settings: Any) -> Rollout:
    """Roll ``plugin`` ``version`` out over the installations that have it approved."""
    require_plugin(plugin)
    release = releases.get_release(version, plugin=plugin)
    return rollouts.create_rollout(kind=ROLLOUT_KIND, release=release, plugin=plugin, batch_size=batch_size,
                                   by=by, **settings)


def get_plugin_rollout(rollout_id: int) -> Rollout:
    """A plugin rollout, or 404 (a core rollout id is unknown here)."""
    rollout = rollouts.get_rollout(rollout_id)
    if rollout.kind != ROLLOUT_KIND:
        raise NotFound(f"No plugin rollout with id {rollout_id}.", code="unknown_rollout")
    return rollout


# --- what an installation has -----------------------------------------------------------------
def installed_plugins(installation_id: int) -> list[dict]:
    """``[{"plugin", "version"}]`` of the plugins installed (a version recorded), by name."""
    rows = db.session.execute(select(ip_t.c.plugin, ip_t.c.version).where(
        ip_t.c.installation_id == installation_id, ip_t.c.version.is_not(None)).order_by(ip_t.c.plugin)).all()
    return [{"plugin": r.plugin, "version": r.version} for r in rows]


def installation_history(installation_id: int, limit: int = HISTORY_LIMIT) -> dict:
    """For the installation page: approved plugins (installed version or None), plugin jobs and
    requests, newest first."""
    approved = db.session.scalars(select(InstallationPlugin).where(
        InstallationPlugin.installation_id == installation_id).order_by(InstallationPlugin.plugin)).all()
    jobs = db.session.scalars(
        select(Job).options(joinedload(Job.release), joinedload(Job.rollout))
        .where(Job.installation_id == installation_id, Job.kind == JOB_KIND)
        .order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)).all()
    requests = list_requests(installation_id=installation_id, limit=limit).items
    return {"installed": list(approved), "jobs": list(jobs), "requests": requests}

