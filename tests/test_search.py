"""The fleet search (``?q=``) through ``installation_search``, the side table the database
triggers of migration 0008 keep in step with ``installations`` whoever writes them."""
import pytest
import sqlalchemy as sa
from sqlalchemy import delete, select, update

from cp.extensions import db
from cp.models import Installation, InstallationSearch
from tests.conftest import bearer

S = bearer("support")


def found(client, q: str, **filters) -> list[str]:
    resp = client.get("/api/installations", query_string={"q": q, **filters}, headers=S)
    assert resp.status_code == 200, resp.get_json()
    return [i["instance_id"] for i in resp.get_json()["items"]]


def search_rows(app) -> dict[str, tuple]:
    with app.app_context():
        rows = db.session.execute(select(InstallationSearch.instance_id, InstallationSearch.client,
                                         InstallationSearch.domain, InstallationSearch.installation_id)).all()
        db.session.rollback()
    return {r.instance_id: (r.client, r.domain, r.installation_id) for r in rows}


@pytest.fixture
def registered(agent, clock):
    assert agent.heartbeat("acme-001", client="Acme Industries SA", domain="erp.acme-corp.com").status_code == 200
    clock.advance(minutes=1)
    assert agent.heartbeat("globex-042", client="Globex", domain="globex.io").status_code == 200
    return clock


@pytest.mark.parametrize("q,expected", [
    ("cme-0", ["acme-001"]),             # instance id, a substring
    ("ACME-001", ["acme-001"]),          # instance id, another case
    ("industries", ["acme-001"]),        # client, case-insensitive
    ("dustries s", ["acme-001"]),        # client, across a space
    ("ACME-CORP.C", ["acme-001"]),       # domain
    ("LOBEX", ["globex-042"]),           # instance id, client and domain all match: listed once
    ("-0", ["globex-042", "acme-001"]),  # both, newest heartbeat first
    ("nothing", []),
])
def test_search_after_registration_by_heartbeat(client, registered, q, expected):
    assert found(client, q) == expected


def test_search_combines_with_other_filters_and_the_page(client, agent, registered):
    registered.advance(minutes=1)
    agent.heartbeat("acme-001", health="down")  # acme is now the newest
    assert found(client, "-0", health="down") == ["acme-001"]
    assert found(client, "-0", health="ok") == []
    resp = client.get("/api/installations", query_string={"q": "-0", "limit": 1, "offset": 1}, headers=S)
    body = resp.get_json()
    assert body["total"] == 2 and [i["instance_id"] for i in body["items"]] == ["globex-042"]


def test_a_heartbeat_that_changes_client_or_domain_moves_the_search(app, client, agent, registered):
    agent.heartbeat("acme-001", client="Wile E. Coyote Ltd")
    assert found(client, "industries") == []
    assert found(client, "coyote") == ["acme-001"]
    assert found(client, "acme-corp") == ["acme-001"]  # the domain was not sent: it is kept

    agent.heartbeat("acme-001", domain="roadrunner.example")
    assert found(client, "acme-corp") == []
    assert found(client, "RoadRunner") == ["acme-001"]
    assert found(client, "coyote") == ["acme-001"]
    assert found(client, "acme-001") == ["acme-001"]   # instance id unchanged
    client_, domain, _ = search_rows(app)["acme-001"]
    assert (client_, domain) == ("Wile E. Coyote Ltd", "roadrunner.example")


def test_a_heartbeat_that_changes_nothing_searchable_does_not_rewrite_the_row(app, client, agent, registered):
    """The update trigger's WHEN: heartbeats SET client and domain every time (to the same
    values), and must not touch the side table then. A marker written straight into the side
    table survives such heartbeats, and goes once the client really changes."""
    with app.app_context():
        db.session.execute(update(InstallationSearch).where(InstallationSearch.instance_id == "acme-001")
                           .values(client="marker"))
        db.session.commit()
    agent.heartbeat("acme-001")                                                   # nothing sent
    agent.heartbeat("acme-001", client="Acme Industries SA", domain="erp.acme-corp.com", health="down")
    assert search_rows(app)["acme-001"][0] == "marker"
    agent.heartbeat("acme-001", client="Acme Holding")
    assert search_rows(app)["acme-001"][0] == "Acme Holding"


def test_installations_written_through_the_orm_are_searched(app, client, clock):
    with app.app_context():
        db.session.add_all([Installation(instance_id="orm-001", client="Hooli", domain="hooli.xyz"),
                            Installation(instance_id="orm-002", client=None, domain=None)])
        db.session.commit()
    assert found(client, "HOOLI") == ["orm-001"]
    assert found(client, "orm-00") == ["orm-002", "orm-001"]  # same last_seen_at (the clock): id desc
    rows = search_rows(app)
    with app.app_context():
        ids = dict(db.session.execute(select(Installation.instance_id, Installation.id)).all())
    assert rows == {"orm-001": ("Hooli", "hooli.xyz", ids["orm-001"]), "orm-002": (None, None, ids["orm-002"])}

    # an edit through the ORM (the admin panel edits client and domain this way)
    with app.app_context():
        inst = db.session.scalars(select(Installation).where(Installation.instance_id == "orm-002")).one()
        inst.client, inst.domain = "Pied Piper", "piedpiper.com"
        db.session.commit()
    assert found(client, "pied piper") == ["orm-002"]
    assert found(client, "piedpiper.com") == ["orm-002"]
    with app.app_context():  # back to NULL (IS DISTINCT FROM sees NULLs)
        db.session.execute(update(Installation).where(Installation.instance_id == "orm-002").values(client=None))
        db.session.commit()
    assert found(client, "pied piper") == []
    assert search_rows(app)["orm-002"][:2] == (None, "piedpiper.com")


def test_deleting_an_installation_deletes_its_search_row(app, client, registered):
    with app.app_context():
        db.session.execute(delete(Installation).where(Installation.instance_id == "acme-001"))
        db.session.commit()
    assert set(search_rows(app)) == {"globex-042"}
    assert found(client, "acme") == []
    with app.app_context():  # and through the ORM
        db.session.delete(db.session.scalars(select(Installation)).one())
        db.session.commit()
    assert search_rows(app) == {}


def test_admin_and_html_searches_read_the_side_table(client, login_as, registered):
    login_as("support")
    html = client.get("/", query_string={"q": "INDUSTRIES"}).get_data(as_text=True)
    assert "acme-001" in html and "globex-042" not in html
    html = client.get("/admin/installations/", query_string={"search": "globex.io"}).get_data(as_text=True)
    assert "globex-042" in html and "acme-001" not in html


def test_the_search_uses_the_trigram_indexes(app, postgres_only, registered):
    """On PostgreSQL the ILIKEs are answered by the side table's pg_trgm GIN indexes (a tiny
    table would be scanned, so sequential scans are disabled to see which plan is possible)."""
    from cp.fleet import queries as fleet

    with app.app_context():
        stmt = (select(Installation.id).where(*fleet.installation_filters(q="acme"))
                .order_by(Installation.last_seen_at.desc(), Installation.id.desc()).limit(50))
        with db.engine.begin() as conn:
            compiled = stmt.compile(dialect=conn.dialect)
            conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
            conn.execute(sa.text("SET LOCAL enable_indexscan = off"))
            plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + str(compiled), compiled.params))
            indexes = {r[0] for r in conn.execute(sa.text(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'installations'"))}
    for col in ("instance_id", "client", "domain"):
        assert f"ix_installation_search_{col}_trgm" in plan, plan
        assert f"ix_installations_{col}_trgm" not in indexes
