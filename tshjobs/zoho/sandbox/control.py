"""The control API under /_sandbox: the SandboxServer methods over HTTP, for
tests in another process and staging runs. It has no authentication, so the
sandbox listens on 127.0.0.1 unless its host setting names another address."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Blueprint, Response, request

from tshjobs.zoho.sandbox import amounts

if TYPE_CHECKING:
    from tshjobs.zoho.sandbox.server import SandboxServer


def _json(body, status: int = 200) -> Response:
    return Response(
        amounts.dumps(body), status=status, mimetype="application/json;charset=UTF-8"
    )


def _body() -> dict:
    payload = request.get_json(silent=True)
    if payload is None and request.get_data():
        raise ValueError("the body is not JSON")
    if payload is not None and not isinstance(payload, dict):
        raise ValueError("the body must be a JSON object")
    return payload or {}


def control_blueprint(sandbox: SandboxServer) -> Blueprint:
    control = Blueprint("sandbox_control", __name__, url_prefix="/_sandbox")

    @control.errorhandler(ValueError)
    @control.errorhandler(TypeError)
    def bad_request(error):
        return _json({"error": str(error)}, 400)

    @control.post("/inject")
    def inject():
        body = _body()
        sandbox.inject(
            body.get("fault"),
            count=body.get("count", 1),
            path=body.get("path"),
            method=body.get("method"),
        )
        return _json({"faults": sandbox.pending_faults()})

    @control.get("/faults")
    def faults():
        return _json({"faults": sandbox.pending_faults()})

    @control.post("/clear_faults")
    def clear_faults():
        sandbox.clear_faults()
        return _json({"faults": []})

    @control.post("/storm_429")
    def storm_429():
        sandbox.storm_429(float(_body().get("seconds", 0)))
        return _json({"ok": True})

    @control.post("/expire_tokens")
    def expire_tokens():
        sandbox.expire_tokens()
        return _json({"ok": True})

    @control.post("/revoke_refresh_token")
    def revoke_refresh_token():
        body = _body()
        sandbox.revoke_refresh_token(
            revoke_access_tokens=bool(body.get("revoke_access_tokens", False))
        )
        return _json({"ok": True})

    @control.get("/stats")
    def stats():
        return _json(sandbox.stats())

    @control.get("/records/<entity>")
    def records(entity: str):
        rows = sandbox.records(entity)
        return _json({"records": rows, "count": len(rows)})

    @control.get("/count/<entity>")
    def count(entity: str):
        return _json({"count": sandbox.count(entity)})

    @control.get("/config")
    def config():
        return _json(sandbox.config.public_view())

    @control.post("/config")
    def set_config():
        sandbox.set_config(**_body())
        return _json(sandbox.config.public_view())

    @control.post("/reset")
    def reset():
        sandbox.reset()
        return _json({"ok": True})

    return control
