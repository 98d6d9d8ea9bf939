"""Every setting is parsed and validated in config.py; malformed values fail start-up clearly."""
import pytest

from config import SETTINGS, ConfigError, load_settings
from cp import create_app


def test_defaults():
    s = load_settings({})
    assert s.max_body_bytes == 262144
    assert s.stale_after_seconds == 900
    assert s.backup_max_age_hours == 26
    assert s.agent_secrets == {} and s.agent_token is None
    assert s.role_tokens() == {}
    assert s.slo_limits() == {}


@pytest.mark.parametrize("value,fragment", [
    ("{not json", "not valid JSON"),
    ('["a"]', "JSON object"),
    ('{"acme 001": "s"}', "not a valid instance_id"),
    ('{"acme-001": 5}', "non-empty string"),
    ('{"acme-001": ""}', "non-empty string"),
])
def test_malformed_agent_secrets_fail_start_up(value, fragment):
    with pytest.raises(ConfigError) as exc:
        create_app({"CONTROL_PLANE_AGENT_SECRETS": value, "CONTROL_PLANE_SECRET_KEY": "k" * 40})
    assert "CONTROL_PLANE_AGENT_SECRETS" in str(exc.value) and fragment in str(exc.value)
    assert value not in str(exc.value) or value in ("[\"a\"]",)  # secrets are not echoed back


@pytest.mark.parametrize("env,var", [
    ({"CONTROL_PLANE_MAX_BODY_BYTES": "lots"}, "CONTROL_PLANE_MAX_BODY_BYTES"),
    ({"CONTROL_PLANE_STALE_AFTER_SECONDS": "0"}, "CONTROL_PLANE_STALE_AFTER_SECONDS"),
    ({"SLO_P95_MS_MAX": "-5"}, "SLO_P95_MS_MAX"),
    ({"SLO_ERROR_RATE_MAX": "nan"}, "SLO_ERROR_RATE_MAX"),
    ({"CONTROL_PLANE_COOKIE_SECURE": "maybe"}, "CONTROL_PLANE_COOKIE_SECURE"),
    ({"CONTROL_PLANE_RELEASE_KEYS": '{"k1": "not base64!"}'}, "CONTROL_PLANE_RELEASE_KEYS"),
    ({"CONTROL_PLANE_RELEASE_KEYS": '{"k1": "AAAA"}'}, "CONTROL_PLANE_RELEASE_KEYS"),
    ({"CONTROL_PLANE_DATABASE_URL": "not-a-url"}, "CONTROL_PLANE_DATABASE_URL"),
    ({"CONTROL_PLANE_DB_POOLER": "session"}, "CONTROL_PLANE_DB_POOLER"),
    ({"CONTROL_PLANE_DB_LOCK_TIMEOUT_MS": "0"}, "CONTROL_PLANE_DB_LOCK_TIMEOUT_MS"),
    ({"CONTROL_PLANE_DB_STATEMENT_TIMEOUT_MS": "soon"}, "CONTROL_PLANE_DB_STATEMENT_TIMEOUT_MS"),
    ({"CONTROL_PLANE_HEARTBEAT_SYNCHRONOUS_COMMIT": "maybe"}, "CONTROL_PLANE_HEARTBEAT_SYNCHRONOUS_COMMIT"),
])
def test_malformed_values_name_the_variable(env, var):
    with pytest.raises(ConfigError) as exc:
        load_settings(env)
    assert var in str(exc.value)


def test_slo_limits_only_for_set_variables():
    s = load_settings({"SLO_P95_MS_MAX": "500", "SLO_ERROR_RATE_MAX": ""})
    assert s.slo_limits() == {"slo_p95_ms": 500.0}


def test_configuration_doc_env_table_is_generated_from_settings():
    """One source of truth: docs/configuration.md's table is exactly what config.SETTINGS generates."""
    from pathlib import Path

    from cp.cli import CONFIGURATION_DOC, env_table_markdown, replace_env_table

    doc = (Path(__file__).resolve().parent.parent / CONFIGURATION_DOC).read_text()
    assert replace_env_table(doc) == doc, f"run: flask --app cp env-table --write {CONFIGURATION_DOC}"
    assert all(f"`{s.env}`" in env_table_markdown() for s in SETTINGS)


def test_postgres_url_gets_the_psycopg_driver():
    s = load_settings({"CONTROL_PLANE_DATABASE_URL": "postgresql://u@h/db"})
    assert s.database_url == "postgresql+psycopg://u@h/db"


def test_config_is_not_read_at_import_time(monkeypatch, tmp_path):
    """create_app reads the environment when called, not when cp is imported."""
    monkeypatch.setenv("CONTROL_PLANE_STALE_AFTER_SECONDS", "123")
    app = create_app({"CONTROL_PLANE_INSTANCE_PATH": str(tmp_path), "CONTROL_PLANE_SECRET_KEY": "k" * 40})
    assert app.config["CP_SETTINGS"].stale_after_seconds == 123


def test_secret_key_is_generated_once_per_instance_folder(tmp_path):
    a = create_app({"CONTROL_PLANE_INSTANCE_PATH": str(tmp_path)})
    b = create_app({"CONTROL_PLANE_INSTANCE_PATH": str(tmp_path)})
    assert a.secret_key == b.secret_key and len(a.secret_key) >= 32
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("var", ["CONTROL_PLANE_SUPPORT_TOKEN", "CONTROL_PLANE_OPS_TOKEN", "CONTROL_PLANE_ADMIN_TOKEN"])
def test_short_role_tokens_fail_start_up_naming_the_variable(var):
    with pytest.raises(ConfigError) as exc:
        load_settings({var: "x" * 31})
    assert var in str(exc.value) and "32" in str(exc.value) and "x" * 31 not in str(exc.value)
    assert load_settings({var: "x" * 32}).role_tokens() != {}
    assert load_settings({var: ""}).role_tokens() == {}  # unset or empty: no token, no error


def test_the_demo_and_gen_token_make_strong_role_tokens(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    script = (root / "scripts" / "run-demo.sh").read_text()
    for role in ("SUPPORT", "OPS", "ADMIN"):
        assert f"CONTROL_PLANE_{role}_TOKEN:-$(flask --app cp gen-token)" in script
    out = subprocess.run([sys.executable, "-m", "flask", "--app", "cp", "gen-token"], cwd=root, capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin", "CONTROL_PLANE_INSTANCE_PATH": str(tmp_path)},
                         check=True).stdout.strip()
    assert len(out) >= 32
