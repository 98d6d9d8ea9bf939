"""People: named accounts with a role, and their personal API tokens (no HTTP here).

- A person (``cp.models.User``) has an email (stored lower-cased: unique and compared
  case-insensitively), a name, a role (``support`` < ``ops`` < ``admin``) and ``active``.
  Nobody is deleted; deactivating bumps ``session_epoch``, which every login session of the
  person carries, so their sessions end at the next request, and their tokens stop at once.
- Rules that keep a team from locking itself out: the last active admin cannot be deactivated
  or demoted (409), and nobody raises their own role (403).
- A personal token is ``cpt_`` + 256 random bits; only its SHA-256 is stored (``token_hash``,
  unique). ``authenticate_token`` hashes what it is given and looks the hash up: the secret is
  never compared byte by byte, so its timing says nothing about a stored token.
- ``last_used_at`` / ``last_seen_at`` are coarsened: written at most once per ``TOUCH_EVERY``
  per token or person, by a conditional UPDATE in its own short transaction, so a script
  calling the API in a loop does not write on every request.

Who did something is an ``Actor``: the person's email, or the role name for a role token
(``Actor.label``); callers pass it in as an argument.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError

from cp.errors import Conflict, Forbidden, Invalid, NotFound
from cp.extensions import db
from cp.models import ROLES, ApiToken, User
from cp.timeutil import utcnow

ROLE_RANK = {role: rank for rank, role in enumerate(ROLES)}
TOKEN_PREFIX = "cpt_"
TOUCH_EVERY = timedelta(minutes=5)
MAX_EXPIRY_DAYS = 3650
VIAS = ("role_token", "token", "sso")
# one @, no spaces or control characters, a dot in the domain: enough to catch typos; the
# mailbox itself is proven by whoever hands out credentials (SSO, an admin)
EMAIL_RE = re.compile(r"[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f.]+")


@dataclass(frozen=True)
class Actor:
    """Who makes a request: a role (always) and, for a person, their id and email."""

    role: str
    via: str  # "role_token" | "token" | "sso"
    person_id: int | None = None
    email: str | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        """What every "by" field and the audit log record: the email, else the role name."""
        return self.email or self.role

    @classmethod
    def for_role(cls, role: str) -> "Actor":
        return cls(role=role, via="role_token", name=role)

    @classmethod
    def for_person(cls, person: User, via: str) -> "Actor":
        return cls(role=person.role, via=via, person_id=person.id, email=person.email, name=person.name)


def role_allows(role: str | None, needed: str) -> bool:
    """The single rule of the hierarchy: ``role`` includes ``needed``."""
    return role in ROLE_RANK and ROLE_RANK[role] >= ROLE_RANK[needed]


# --- people -------------------------------------------------------------------------------------
def normalize_email(email: str) -> str:
    value = (email or "").strip().lower()
    if len(value) > 254 or not EMAIL_RE.fullmatch(value):
        raise Invalid("Not a valid email address.", details={"email": ["Not a valid email address."]})
    return value


def _check_role(role: str) -> str:
    if role not in ROLE_RANK:
        raise Invalid(f"Unknown role {role!r}.", details={"role": [f"Must be one of: {', '.join(ROLES)}."]})
    return role


def _check_name(name: str) -> str:
    value = (name or "").strip()
    if not value or len(value) > 200:
        raise Invalid("A name is 1-200 characters.", details={"name": ["Length must be between 1 and 200."]})
    return value


def create_person(email: str, name: str | None, role: str, *, by: str) -> User:
    """A new active person (flushed, not committed). Same email (any case): 409, after which
    the caller's transaction must be rolled back."""
    address = normalize_email(email)
    _check_role(role)
    display = _check_name(name if name else address.split("@", 1)[0])
    if db.session.scalar(select(User.id).where(User.email == address)) is not None:
        raise Conflict(f"A person with the email {address} exists.", code="duplicate_email",
                       details={"email": address})
    person = User(email=address, name=display, role=role, active=True, session_epoch=0, created_at=utcnow(),
                  created_by=by)
    db.session.add(person)
    try:
        db.session.flush()  # a concurrent create of the same email loses here (the caller rolls back)
    except IntegrityError:
        raise Conflict(f"A person with the email {address} exists.", code="duplicate_email",
                       details={"email": address}) from None
    return person


def find_person_by_email(email: str) -> User | None:
    try:
        address = normalize_email(email)
    except Invalid:
        return None
    return db.session.scalar(select(User).where(User.email == address))


def find_active_person_by_email(email: str) -> User | None:
    """The active person with this email (any case), else None: the lookup of a login."""
    person = find_person_by_email(email)
    return person if person is not None and person.active else None


def get_person(person_id: int) -> User:
    person = db.session.get(User, person_id)
    if person is None:
        raise NotFound(f"No person with id {person_id}.")
    return person


def list_people(*, limit: int = 50, offset: int = 0) -> tuple[list[User], int]:
    """Newest first (ties by id)."""
    total = db.session.scalar(select(func.count()).select_from(User))
    items = db.session.scalars(select(User).order_by(User.created_at.desc(), User.id.desc())
                               .limit(limit).offset(offset)).all()
    return list(items), total


def _lock_for_change(person_id: int) -> tuple[User | None, int]:
    """Lock the person and every active admin, in id order (one statement, so two admins
    changing each other at once wait for one another instead of deadlocking); return the
    person and how many other active admins remain."""
    rows = db.session.scalars(
        select(User).where(or_(User.id == person_id, (User.role == "admin") & User.active.is_(True)))
        .order_by(User.id).with_for_update().execution_options(populate_existing=True)).all()
    person = next((r for r in rows if r.id == person_id), None)
    others = sum(1 for r in rows if r.id != person_id and r.role == "admin" and r.active)
    return person, others


def update_person(person_id: int, *, by: Actor, name: str | None = None, role: str | None = None,
                  active: bool | None = None) -> User:
    """Change a person's name, role or ``active`` (flushed, not committed).

    - Nobody raises their own role: 403.
    - The last active admin is neither deactivated nor demoted: 409 (a role token can always
      get back in, but a team that moved to people must not lock itself out by accident).
    - Deactivating ends the person's sessions (``session_epoch``) and stops their tokens."""
    person, other_admins = _lock_for_change(person_id)
    if person is None:
        raise NotFound(f"No person with id {person_id}.")
    if role is not None:
        _check_role(role)
        if by.person_id == person.id and ROLE_RANK[role] > ROLE_RANK[person.role]:
            raise Forbidden("You cannot raise your own role.", code="own_role")
    losing_admin = person.role == "admin" and person.active and (
        (role is not None and role != "admin") or active is False)
    if losing_admin and other_admins == 0:
        raise Conflict("This is the last active admin; make someone else admin first.", code="last_admin")
    if name is not None:
        person.name = _check_name(name)
    if role is not None:
        person.role = role
    if active is not None and active != person.active:
        person.active = active
        if not active:
            person.session_epoch = person.session_epoch + 1
    db.session.flush()
    return person


# --- personal tokens ----------------------------------------------------------------------------
def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def issue_token(person: User, name: str, expires_in_days: int | None = None) -> tuple[ApiToken, str]:
    """A new token for ``person`` (flushed, not committed) and its secret, which exists only in
    this return value."""
    if not person.active:
        raise Conflict("This person is deactivated.", code="inactive_person")
    label = (name or "").strip()
    if not label or len(label) > 100:
        raise Invalid("A token name is 1-100 characters.", details={"name": ["Length must be between 1 and 100."]})
    if expires_in_days is not None and not 1 <= expires_in_days <= MAX_EXPIRY_DAYS:
        raise Invalid("Expiry out of range.",
                      details={"expires_in_days": [f"Must be between 1 and {MAX_EXPIRY_DAYS}."]})
    now = utcnow()
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(user_id=person.id, name=label, token_hash=hash_token(secret), created_at=now,
                     expires_at=None if expires_in_days is None else now + timedelta(days=expires_in_days))
    db.session.add(token)
    db.session.flush()
    return token, secret


def list_tokens(person_id: int | None, *, limit: int = 50, offset: int = 0) -> tuple[list[ApiToken], int]:
    """A person's tokens that are not revoked, newest first (none for ``None``), and their total."""
    conds = (ApiToken.user_id == person_id, ApiToken.revoked_at.is_(None))
    total = db.session.scalar(select(func.count()).select_from(ApiToken).where(*conds)) if person_id else 0
    items = db.session.scalars(select(ApiToken).where(*conds).order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
                               .limit(limit).offset(offset)).all() if person_id else []
    return list(items), total


def revoke_token(person_id: int, token_id: int) -> ApiToken:
    """Revoke one of ``person_id``'s tokens (flushed, not committed); another person's, or an
    unknown or already revoked one: 404."""
    token = db.session.get(ApiToken, token_id)
    if token is None or token.user_id != person_id or token.revoked_at is not None:
        raise NotFound(f"No token with id {token_id}.")
    token.revoked_at = utcnow()
    db.session.flush()
    return token


def authenticate_token(secret: str | None, now: datetime | None = None) -> User | None:
    """The active person whose live (not revoked, not expired) token this is, else None."""
    if not secret or not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    digest = hash_token(secret)
    token = db.session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if token is None or not hmac.compare_digest(token.token_hash, digest):
        return None
    now = now or utcnow()
    if token.revoked_at is not None or (token.expires_at is not None and token.expires_at <= now):
        return None
    person = token.user
    if not person.active:
        return None
    touch(token, person, now)
    return person


def touch(token: ApiToken | None, person: User, now: datetime | None = None) -> None:
    """Record use: at most one write per ``TOUCH_EVERY`` for each token and person. The rows in
    hand tell whether a write is due (usually not: no statement at all); a due one is a
    conditional UPDATE in its own short transaction, so concurrent requests write it once and a
    read-only request stays read-only."""
    now = now or utcnow()
    stale = now - TOUCH_EVERY
    token_due = token is not None and (token.last_used_at is None or token.last_used_at < stale)
    person_due = person.last_seen_at is None or person.last_seen_at < stale
    if not (token_due or person_due):
        return
    with db.engine.begin() as conn:
        if token_due:
            conn.execute(update(ApiToken).where(
                ApiToken.id == token.id,
                or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < stale)).values(last_used_at=now))
        if person_due:
            conn.execute(update(User).where(
                User.id == person.id, or_(User.last_seen_at.is_(None), User.last_seen_at < stale)
            ).values(last_seen_at=now))
