"""A deployment's identity: its backend token, how backends enforce it and how health checks verify it.

The supervisor makes one random token per deployment and hands it to every backend and to the router in
``MUXPLAN_BACKEND_TOKEN`` (vLLM gets it as ``VLLM_API_KEY``, its ``--api-key``). A backend then refuses any
request but /health without ``Authorization: Bearer <token>`` (401). A health check counts a backend as
ours only if it proves it: the engine's /health names the served models and the first 8 hex digits of the
token's sha256; vLLM's /health is an empty 200, so for it ``/v1/models`` must answer 200 with the token and
list the served names (a squatter on the port, or another deployment's backend, fails both).
"""
from __future__ import annotations

import hashlib
import json
import secrets
import urllib.error
import urllib.request

TOKEN_ENV = "MUXPLAN_BACKEND_TOKEN"


def new_token() -> str:
    return secrets.token_hex(16)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def _get_json(url: str, timeout_s: float, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as r:
        raw = r.read(1 << 20)
        return r.status, (json.loads(raw) if raw.strip() else None)


def check_backend(host: str, port: int, models: tuple[str, ...], token: str | None, timeout_s: float = 2.0) -> str | None:
    """None when the backend on ``host:port`` is healthy and ours; else why not, in a few words."""
    base = f"http://{host}:{port}"
    try:
        status, health = _get_json(f"{base}/health", timeout_s)
        if status != 200:
            return f"/health answered {status}"
        if isinstance(health, dict) and "token_sha256_8" in health:  # the engine says who it is
            if token and health.get("token_sha256_8") != token_digest(token):
                return "/health: not this deployment's backend (token digest differs)"
            missing = set(models) - set(health.get("models") or ())
            return f"/health: does not serve {', '.join(sorted(missing))}" if missing else None
        status, listed = _get_json(f"{base}/v1/models", timeout_s, token)
        served = {m.get("id") for m in (listed or {}).get("data", []) if isinstance(m, dict)} if isinstance(listed, dict) else set()
        missing = set(models) - served
        return f"/v1/models: does not serve {', '.join(sorted(missing))}" if missing else None
    except urllib.error.HTTPError as exc:
        return f"answered {exc.code}" + (" (token refused: another deployment's backend?)" if exc.code == 401 else "")
    except (OSError, ValueError) as exc:
        return f"unreachable ({type(exc).__name__})"


class TokenGuard:
    """Pure ASGI middleware (no per-request overhead of Starlette's BaseHTTPMiddleware): 401 without the token."""

    def __init__(self, app, token: str, open_paths: tuple[str, ...] = ("/health",)):
        self.app, self.open_paths = app, open_paths
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in self.open_paths:
            auth = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not secrets.compare_digest(auth, self.expected):
                body = json.dumps({"error": {"message": "missing or wrong backend token", "type": "authentication_error",
                                             "code": 401}}).encode()
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
