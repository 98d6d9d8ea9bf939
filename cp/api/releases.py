"""``/api/releases``: publish (admin) and list (support+) signed core releases."""
from flask import jsonify

from cp.delivery import releases
from cp.api.audited import audited
from cp.auth import current_actor, role_required
from cp.web.parsing import load_json
from cp.api import bp
from cp.api.actions import register_list
from cp.api.rollout_schemas import (
    ReleaseArgsSchema,
    ReleaseCreateSchema,
    ReleaseItemSchema,
    ReleaseListSchema,
    ReleaseSchema,
)

release_schema = ReleaseSchema()


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


register_list("/releases", endpoint="list_releases", role="support", tag="releases",
              summary="Core releases, newest first, with their manifests and signatures as stored.",
              args=ReleaseArgsSchema, answer=ReleaseListSchema, fetch=releases.list_releases,
              dump=ReleaseItemSchema(many=True).dump)