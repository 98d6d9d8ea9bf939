"""Signed releases: semantic versions, the canonical manifest bytes, Ed25519 signatures.

One module for core releases (``plugin`` None) and plugin releases (``plugin`` set): both are
published with ``publish_release`` and signed the same way, so the plugin marketplace reuses
this unchanged.

Signing scheme (written once, used by the server, the CLI and anyone verifying):
``signature = base64(Ed25519(private_key, canonical_manifest(manifest)))`` where
``canonical_manifest`` is ``json.dumps(manifest, sort_keys=True, separators=(",", ":"),
ensure_ascii=False).encode()``. Trusted public keys come from ``CONTROL_PLANE_RELEASE_KEYS``
(``key_id`` -> raw 32 bytes, parsed in ``config.py``). The manifest, signature and key id are
stored exactly as received and served to agents as stored, so agents can verify them too.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from functools import lru_cache, total_ordering
from typing import Any, Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from cp.dbutil import equal_to, paged
from cp.errors import Conflict, Invalid, NotFound
from cp.extensions import db
from cp.models import Release
from cp.timeutil import utcnow

MAX_VERSION_LEN = 64

# --- semantic versions (https://semver.org, 2.0.0) ------------------------------------------
SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


@total_ordering
@dataclass(frozen=True)
class SemVer:
    """A parsed semantic version; ordering is semver precedence (build metadata ignored)."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: str | None = None

    def _key(self) -> tuple:
        # A release sorts after its pre-releases; numeric identifiers sort before alphanumeric
        # ones and numerically among themselves; a longer pre-release list wins a common prefix.
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __lt__(self, other: "SemVer") -> bool:
        return self._key() < other._key()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SemVer) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


def parse_version(value: str | None) -> SemVer | None:
    """The ``SemVer`` of ``value``, or None when it is not a semantic version."""
    if not isinstance(value, str) or len(value) > MAX_VERSION_LEN:
        return None
    return _parse(value)


@lru_cache(maxsize=4096)
def _parse(value: str) -> SemVer | None:
    # a fleet runs a handful of versions: a rollout over 100,000 installations compares each
    # target's version with the release's (SemVer is immutable, so a cached one can be shared)
    m = SEMVER_RE.fullmatch(value)
    if m is None:
        return None
    major, minor, patch, pre, build = m.groups()
    return SemVer(int(major), int(minor), int(patch), tuple(pre.split(".")) if pre else (), build)


def is_version(value: Any) -> bool:
    return parse_version(value) is not None


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 by semver precedence; both must be valid semantic versions."""
    va, vb = parse_version(a), parse_version(b)
    if va is None or vb is None:
        raise ValueError(f"not semantic versions: {a!r}, {b!r}")
    return (va > vb) - (va < vb)


def is_newer(candidate: str | None, than: str) -> bool:
    """``candidate`` is a semantic version of higher precedence than ``than`` (unknown: False)."""
    vc, vt = parse_version(candidate), parse_version(than)
    return vc is not None and vt is not None and vc > vt


# --- signatures ----------------------------------------------------------------------------
def canonical_manifest(manifest: dict) -> bytes:
    """The exact bytes a release signature covers."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_manifest(private_key: Ed25519PrivateKey, manifest: dict) -> str:
    return base64.b64encode(private_key.sign(canonical_manifest(manifest))).decode("ascii")


def public_key_b64(private_key: Ed25519PrivateKey) -> str:
    raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def trusted_keys() -> dict[str, bytes]:
    return current_app.config["CP_SETTINGS"].release_keys


def verify_manifest_signature(manifest: dict, signature: str, key_id: str,
                              keys: dict[str, bytes] | None = None) -> None:
    """Raise 422 ``invalid_signature`` unless ``signature`` is a valid Ed25519 signature of the
    canonical manifest by the trusted key ``key_id``."""
    keys = trusted_keys() if keys is None else keys
    raw_key = keys.get(key_id)
    if raw_key is None:
        raise Invalid(f"The key {key_id!r} is not a trusted release key.", code="invalid_signature",
                      details={"key_id": ["Unknown key id."]})
    try:
        sig = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        sig = b""
    if len(sig) != 64:
        raise Invalid("The signature is not a base64 Ed25519 signature.", code="invalid_signature",
                      details={"signature": ["Not a base64-encoded 64-byte Ed25519 signature."]})
    try:
        Ed25519PublicKey.from_public_bytes(raw_key).verify(sig, canonical_manifest(manifest))
    except InvalidSignature:
        raise Invalid("The signature does not match the manifest and key.", code="invalid_signature",
                      details={"signature": ["Does not verify against the manifest with this key."]}) from None


# --- releases ------------------------------------------------------------------------------
def publish_release(*, version: str, manifest: dict, signature: str, key_id: str, channel: str | None = None,
                    plugin: str | None = None, by: str | None = None) -> Release:
    """Check and store a signed release (core when ``plugin`` is None). Raises 422 for a
    version that is not semantic or differs from ``manifest["version"]``, 422
    ``invalid_signature`` for an unknown key or a bad signature, 409 for a version already
    published (per plugin for plugin releases)."""
    if not is_version(version):
        raise Invalid("The version is not a semantic version.", details={"version": ["Not a semantic version (e.g. 1.3.0)."]})
    if not isinstance(manifest, dict) or manifest.get("version") != version:
        raise Invalid("The manifest's version must equal the release version.",
                      details={"manifest": [f"manifest.version must equal {version!r}."]})
    try:
        json.dumps(manifest, allow_nan=False)
    except ValueError:
        raise Invalid("The manifest must be strict JSON.",
                      details={"manifest": ["NaN and Infinity are not JSON numbers."]}) from None
    verify_manifest_signature(manifest, signature, key_id)
    if find_release(version, plugin=plugin) is not None:
        raise _duplicate(version, plugin)
    release = Release(plugin=plugin, version=version, channel=channel, manifest=manifest, signature=signature,
                      key_id=key_id, created_at=utcnow(), created_by=by)
    try:
        with db.session.begin_nested():
            db.session.add(release)
    except IntegrityError:  # published concurrently
        raise _duplicate(version, plugin) from None
    return release


def _duplicate(version: str, plugin: str | None) -> Conflict:
    what = f"Plugin {plugin!r} version {version}" if plugin else f"Release {version}"
    return Conflict(f"{what} is already published.", code="release_exists", details={"version": version})


def find_release(version: str, *, plugin: str | None = None) -> Release | None:
    cond = Release.plugin.is_(None) if plugin is None else Release.plugin == plugin
    return db.session.scalars(select(Release).where(cond, Release.version == version)).first()


def get_release(version: str, *, plugin: str | None = None) -> Release:
    """The release, or 404."""
    release = find_release(version, plugin=plugin)
    if release is None:
        what = f"plugin {plugin!r} version {version!r}" if plugin else f"release {version!r}"
        raise NotFound(f"No {what}.", code="unknown_release")
    return release


def list_releases(*, limit: int = 50, offset: int = 0, plugin: str | None = None, any_plugin: bool = False,
                  channel: str | None = None, version: str | None = None) -> tuple[list[Release], int]:
    """Newest first (ties by id). Core releases unless ``plugin`` (one plugin) or ``any_plugin``
    (every plugin release)."""
    if plugin is not None:
        conds = [Release.plugin == plugin]
    elif any_plugin:
        conds = [Release.plugin.is_not(None)]
    else:
        conds = [Release.plugin.is_(None)]
    page = paged(Release, conds + equal_to(Release, channel=channel, version=version), newest=Release.created_at,
                 limit=limit, offset=offset)
    return page.items, page.total


def newest_release(*, channel: str | None = None, plugin: str | None = None) -> Release | None:
    """The release of highest semver precedence: of a plugin, or the core one of a channel."""
    if plugin is not None:
        cond = [Release.plugin == plugin]
    else:
        cond = [Release.plugin.is_(None), Release.channel == channel]
    versions = db.session.scalars(select(Release).where(*cond)).all()
    return max(versions, key=lambda r: parse_version(r.version) or SemVer(-1, -1, -1), default=None)


def releases_behind(installations: Iterable[Any]) -> dict[int, int | None]:
    """For each installation (anything with ``id``, ``version``, ``release_channel``): how many
    core releases of its channel have a higher precedence than its version. ``None`` when its
    version is unknown or not semantic. One query for the whole set: call it per page."""
    installations = list(installations)
    channels = {i.release_channel for i in installations if i.release_channel}
    by_channel: dict[str, list[SemVer]] = {c: [] for c in channels}
    if channels:
        rows = db.session.execute(select(Release.channel, Release.version).where(
            Release.plugin.is_(None), Release.channel.in_(channels))).all()
        for channel, version in rows:
            parsed = parse_version(version)
            if parsed is not None:
                by_channel[channel].append(parsed)
    out: dict[int, int | None] = {}
    for inst in installations:
        current = parse_version(inst.version)
        if current is None:
            out[inst.id] = None
        else:
            out[inst.id] = sum(1 for v in by_channel.get(inst.release_channel or "", ()) if v > current)
    return out
