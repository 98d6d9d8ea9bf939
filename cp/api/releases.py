"""``/api/releases``: publish (admin) and list (support+) signed core releases."""
from flask import jsonify

from cp.delivery import releases
from cp.api.audited import audited
from cp.auth import current_actor, role_required
from cp.web.parsing import load_args, load_json
from cp.api import bp
from cp.api.rollout_schemas import ReleaseArgsSchema, ReleaseCreateSchema, ReleaseItemSchema, ReleaseSchema

release_schema = ReleaseSchema()
item_schema = ReleaseItemSchema()


@bp.post("/releases")
@role_required("admin")
@audited("release.publish", "release")
def publish_release():
    """Publish a signed core release.
    ---
    post:
      tags: [releases]
      summary: Verify the Ed25519 signature of the manifest and store the release as received.
      description: >
        The signature covers json.dumps(manifest, sort_keys=True, separators=(",", ":"),
        ensure_ascii=False).encode() and must verify with the key key_id of
        CONTROL_PLANE_RELEASE_KEYS. manifest.version must equal version.
      requestBody:
        required: true
        content:
          application/json:
            schema: ReleaseCreateSchema
      responses:
        201:
          content:
            application/json:
              schema: ReleaseSchema
        409:
          description: This version is already published.
        422:
          description: Validation failed, manifest version mismatch, or invalid_signature (unknown key or bad signature).
    """
    body = load_json(ReleaseCreateSchema())
    release = releases.publish_release(plugin=None, by=current_actor().label, **body)
    return jsonify(release_schema.dump(release)), 201


@bp.get("/releases")
@role_required("support")
def list_releases():
    """List core releases.
    ---
    get:
      tags: [releases]
      summary: Core releases, newest first, with their manifests and signatures as stored.
      parameters:
      - in: query
        schema: ReleaseArgsSchema
      responses:
        200:
          content:
            application/json:
              schema: ReleaseListSchema
    """
    items, total = releases.list_releases(**load_args(ReleaseArgsSchema()))
    return jsonify({"items": item_schema.dump(items, many=True), "total": total})
