"""Column formatters shared by the admin screens.

Each returns ``Markup`` built with ``Markup.format`` (which escapes every argument), so a
value an agent sent can never become markup. Signature: ``(view, context, model, name)``.
"""
from __future__ import annotations

from flask import url_for
from markupsafe import Markup

from cp.timeutil import isoformat

MESSAGE_PREVIEW = 160


def ts(value) -> str:
    text = isoformat(value)
    return text.replace("T", " ")[:19] + " UTC" if text else "—"


def timestamp(view, context, model, name):
    return Markup('<span class="text-nowrap">{}</span>').format(ts(getattr(model, name)))


def installation_link(view, context, model, name):
    """The row's installation as a link to its page (needs ``model.installation`` loaded)."""
    inst = getattr(model, "installation", None)
    if inst is None:
        return "—"
    return Markup('<a href="{}">{}</a>').format(
        url_for("views.installation", instance_id=inst.instance_id), inst.instance_id)


def instance_link(view, context, model, name):
    """The installation screen's own instance id, linked to its page."""
    return Markup('<a href="{}">{}</a>').format(
        url_for("views.installation", instance_id=model.instance_id), model.instance_id)


def badge(prefix: str):
    def fmt(view, context, model, name):
        value = getattr(model, name)
        if value is None:
            return "—"
        return Markup('<span class="badge cp-badge {}-{}">{}</span>').format(prefix, value, value)

    return fmt


def preview(view, context, model, name):
    """Long text cut to a readable preview (the details screen shows it whole)."""
    value = getattr(model, name) or ""
    if len(value) <= MESSAGE_PREVIEW:
        return value
    return value[:MESSAGE_PREVIEW] + "…"


def alert_status(view, context, model, name):
    if model.resolved_at is not None:
        return Markup('<span class="badge badge-secondary">resolved {}</span>').format(ts(model.resolved_at))
    if model.acknowledged_at is not None:
        return Markup('<span class="badge badge-info">acknowledged by {}</span>').format(model.acknowledged_by or "?")
    return Markup('<span class="badge badge-danger">open</span>')


def failure_status(view, context, model, name):
    if model.resolved_at is not None:
        return Markup('<span class="badge badge-secondary">resolved {}</span>').format(ts(model.resolved_at))
    return Markup('<span class="badge badge-danger">open</span>')
