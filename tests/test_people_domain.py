"""The people domain (``cp.people``): accounts, roles, personal tokens, without HTTP."""
from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from cp import people
from cp.errors import Conflict, Forbidden, Invalid, NotFound
from cp.extensions import db
from cp.models import ApiToken, User

ROLE_ADMIN = people.Actor.for_role("admin")


@pytest.fixture
def ctx(app):
    with app.app_context():
        yield
        db.session.rollback()


def test_emails_are_unique_case_insensitively_and_validated(ctx):
    ann = people.create_person("Ann@Example.COM ", "Ann", "ops", by="admin")
    db.session.commit()
    assert ann.email == "ann@example.com"
    with pytest.raises(Conflict):
        people.create_person("ANN@example.com", "Other Ann", "support", by="admin")
    for bad in ("ann", "ann@", "a b@example.com", "ann@example", "ann@@example.com", "ann\n@example.com"):
        with pytest.raises(Invalid):
            people.create_person(bad, "x", "support", by="admin")
    with pytest.raises(Invalid) as err:
        people.create_person("bob@example.com", "Bob", "root", by="admin")
    assert "role" in err.value.details
    assert people.find_active_person_by_email("ANN@EXAMPLE.com").id == ann.id
    assert people.find_active_person_by_email("nobody@example.com") is None


def test_last_active_admin_cannot_be_deactivated_or_demoted_and_nobody_raises_their_own_role(ctx):
    boss = people.create_person("boss@example.com", "Boss", "admin", by="admin")
    sup = people.create_person("sup@example.com", "Sup", "support", by="admin")
    db.session.commit()
    for change in ({"active": False}, {"role": "ops"}):
        with pytest.raises(Conflict) as err:
            people.update_person(boss.id, by=ROLE_ADMIN, **change)
        assert err.value.code == "last_admin"
    with pytest.raises(Forbidden):
        people.update_person(sup.id, by=people.Actor.for_person(sup, "token"), role="ops")
    people.update_person(sup.id, by=people.Actor.for_person(sup, "token"), name="Sup Port")  # own name: fine
    people.update_person(sup.id, by=people.Actor.for_person(boss, "token"), role="admin")
    people.update_person(boss.id, by=people.Actor.for_person(boss, "token"), role="support")  # lowering: fine
    db.session.commit()
    assert (boss.role, sup.role, sup.name) == ("support", "admin", "Sup Port")
    with pytest.raises(NotFound):
        people.update_person(9999, by=ROLE_ADMIN, name="x")


def test_a_token_is_stored_only_as_a_hash_and_stops_when_revoked_expired_or_deactivated(ctx, clock):
    ann = people.create_person("ann@example.com", "Ann", "ops", by="admin")
    token, secret = people.issue_token(ann, "laptop", expires_in_days=2)
    db.session.commit()
    stored = db.session.execute(sa.select(ApiToken.__table__)).one()._asdict()
    assert secret not in repr(stored) and stored["token_hash"] == people.hash_token(secret)
    assert people.authenticate_token(secret).id == ann.id
    assert people.authenticate_token(secret + "x") is None
    assert people.authenticate_token("admin-token") is None

    clock.advance(days=2)
    assert people.authenticate_token(secret) is None  # expired
    clock.advance(days=-2)

    other, other_secret = people.issue_token(ann, "ci")
    db.session.commit()
    with pytest.raises(NotFound):
        people.revoke_token(ann.id + 1, other.id)  # not theirs
    people.revoke_token(ann.id, other.id)
    db.session.commit()
    assert people.authenticate_token(other_secret) is None
    assert [t.id for t in people.list_tokens(ann.id)[0]] == [token.id]

    admin = people.create_person("boss@example.com", "Boss", "admin", by="admin")
    db.session.commit()
    epoch = ann.session_epoch
    people.update_person(ann.id, by=people.Actor.for_person(admin, "sso"), active=False)
    db.session.commit()
    assert ann.session_epoch == epoch + 1
    assert people.authenticate_token(secret) is None
    with pytest.raises(Conflict):
        people.issue_token(ann, "again")


def test_last_used_at_is_written_at_most_once_per_interval(ctx, clock):
    ann = people.create_person("ann@example.com", "Ann", "ops", by="admin")
    token, secret = people.issue_token(ann, "script")
    db.session.commit()

    def last_used():
        with db.engine.connect() as conn:
            return conn.execute(sa.select(ApiToken.last_used_at)).scalar_one(), \
                conn.execute(sa.select(User.last_seen_at)).scalar_one()

    start = clock.now
    people.authenticate_token(secret)
    assert last_used() == (start, start)
    clock.advance(minutes=4)
    people.authenticate_token(secret)
    assert last_used() == (start, start)  # coarsened: no write
    clock.advance(minutes=2)
    people.authenticate_token(secret)
    assert last_used() == (start + timedelta(minutes=6),) * 2


def test_token_names_and_expiry_are_validated(ctx):
    ann = people.create_person("ann@example.com", None, "ops", by="admin")
    assert ann.name == "ann"
    for name, days in (("", None), ("x" * 101, None), ("ok", 0), ("ok", 100000)):
        with pytest.raises(Invalid):
            people.issue_token(ann, name, days)


def test_two_admins_demoting_each_other_at_once_leave_one_admin(app, postgres_only):
    """Real threads on PostgreSQL: the locks are taken in one order, one change waits for the
    other and then sees that it would remove the last admin."""
    import threading

    with app.app_context():
        a = people.create_person("a@example.com", "A", "admin", by="admin")
        b = people.create_person("b@example.com", "B", "admin", by="admin")
        db.session.commit()
        ids = {"a": a.id, "b": b.id}
        actors = {"a": people.Actor.for_person(a, "token"), "b": people.Actor.for_person(b, "token")}
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def demote(me: str, other: str) -> None:
        with app.app_context():
            barrier.wait()
            try:
                people.update_person(ids[other], by=actors[me], role="ops")
                db.session.commit()
                outcomes[me] = "ok"
            except Conflict as exc:
                db.session.rollback()
                outcomes[me] = exc.code
            finally:
                db.session.remove()

    threads = [threading.Thread(target=demote, args=pair) for pair in (("a", "b"), ("b", "a"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes.values()) == ["last_admin", "ok"], outcomes
    with app.app_context():
        roles = db.session.execute(sa.select(User.role).where(User.active.is_(True))).scalars().all()
    assert sorted(roles) == ["admin", "ops"]
