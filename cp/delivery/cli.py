"""Release engineers' commands: ``flask --app cp keys generate`` and ``flask --app cp releases sign``.

Neither touches the database. The private key never leaves the file it is written to (mode
0600, PEM PKCS#8); the server only ever sees the public key, in ``CONTROL_PLANE_RELEASE_KEYS``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import click
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from config import INSTANCE_ID_RE
from cp.delivery.releases import is_version, public_key_b64, sign_manifest
from cp.delivery.plugins import PLUGIN_NAME_HELP, is_plugin_name

KEY_ID_RE = INSTANCE_ID_RE  # a key id is named by the same rule as an installation

keys_group = click.Group("keys", help="Release signing keys (Ed25519).")
releases_group = click.Group("releases", help="Sign release manifests.")


def _key_id(value: str) -> str:
    if not KEY_ID_RE.fullmatch(value):
        raise click.BadParameter("1-128 characters of [A-Za-z0-9._-]")
    return value


@keys_group.command("generate")
@click.option("--key-id", default="k1", show_default=True, callback=lambda _c, _p, v: _key_id(v),
              help="Name of the key in CONTROL_PLANE_RELEASE_KEYS.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Private key file to create (default: <key-id>.key). Never overwritten.")
def generate(key_id: str, out: Path | None) -> None:
    """Create an Ed25519 key pair: write the private key (0600) and print the env line of the
    public key."""
    out = out or Path(f"{key_id}.key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise click.ClickException(f"{out} exists; refusing to overwrite a private key.") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(out, 0o600)
    click.echo(f"CONTROL_PLANE_RELEASE_KEYS='{json.dumps({key_id: public_key_b64(key)}, separators=(',', ':'))}'")
    click.echo(f"# private key written to {out} (mode 0600); keep it offline. With several keys, "
               f"merge the entries into one JSON object.", err=True)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise click.ClickException(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise click.ClickException(f"{path} is not an Ed25519 key.")
    return key


@releases_group.command("sign")
@click.argument("manifest_file", metavar="MANIFEST.json", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", "key_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Private key file from `keys generate`.")
@click.option("--key-id", default=None, help="Key id (default: the key file's name without extension).")
@click.option("--channel", default="stable", show_default=True, help="Channel of a core release.")
@click.option("--plugin", default=None, help="Sign a plugin release of this plugin (no channel; the name is added to the manifest).")
def sign(manifest_file: Path, key_file: Path, key_id: str | None, channel: str, plugin: str | None) -> None:
    """Print the JSON body to POST to /api/releases (or /api/plugins/releases with --plugin)."""
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{manifest_file} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise click.ClickException("The manifest must be a JSON object.")
    version = manifest.get("version")
    if not is_version(version):
        raise click.ClickException('The manifest needs a "version" that is a semantic version (e.g. 1.3.0).')
    if plugin is not None:
        # the plugin's name becomes part of what is signed: a manifest of one plugin cannot be
        # published as another (the server refuses a manifest naming another plugin)
        if not is_plugin_name(plugin):
            raise click.BadParameter(PLUGIN_NAME_HELP, param_hint="--plugin")
        if manifest.setdefault("plugin", plugin) != plugin:
            raise click.ClickException(f'The manifest names plugin {manifest["plugin"]!r}, not {plugin!r}.')
    key_id = _key_id(key_id or key_file.stem)
    signature = sign_manifest(load_private_key(key_file), manifest)
    body: dict = {"plugin": plugin} if plugin else {}
    body.update({"version": version})
    if not plugin:
        body["channel"] = channel
    body.update({"manifest": manifest, "signature": signature, "key_id": key_id})
    click.echo(json.dumps(body, ensure_ascii=False, indent=2))


def init_cli(app) -> None:
    app.cli.add_command(keys_group)
    app.cli.add_command(releases_group)
