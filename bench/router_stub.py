"""A trivial OpenAI-shaped backend for router tests and benchmarks (a real FastAPI/uvicorn server).

Usage: python -m bench.router_stub --port P --models a,b [--name N] [--token T] [--context 2048]

Answers /health, /v1/models (with max_model_len) and /v1/completions, /v1/chat/completions with one
token per output token (streamed as SSE when asked). A request's optional "stub" object steers it:
``delay_s`` (before the response headers), ``token_delay_s`` (between streamed tokens), ``status``
(answer with that status), ``crash`` ("before_headers" or "mid_stream": the process exits at once, as a
kill -9 would). ``GET /stub/in_flight`` says how many requests are being answered (streams included).
With --token every /v1 request needs ``Authorization: Bearer T`` (401 otherwise), as the router sends.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse


def create_stub(models: list[str], name: str, token: str | None, context_tokens: int) -> FastAPI:
    app = FastAPI()
    state = {"in_flight": 0}

    def unauthorised(request: Request) -> bool:
        return token is not None and request.headers.get("authorization") != f"Bearer {token}"

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/stub/in_flight")
    async def in_flight():
        return state

    @app.get("/v1/models")
    async def list_models(request: Request):
        if unauthorised(request):
            return JSONResponse({"error": {"message": "missing or wrong token", "code": 401}}, status_code=401)
        return {"object": "list", "data": [{"id": m, "object": "model", "max_model_len": context_tokens} for m in models]}

    async def generate(request: Request, chat: bool):
        if unauthorised(request):
            return JSONResponse({"error": {"message": "missing or wrong token", "code": 401}}, status_code=401)
        body = json.loads(await request.body())
        stub = body.get("stub") or {}
        if body.get("model") not in models:
            return JSONResponse({"error": {"message": f"model {body.get('model')!r} is not here", "code": 404}}, status_code=404)
        if stub.get("crash") == "before_headers":
            os._exit(1)
        state["in_flight"] += 1
        try:
            await asyncio.sleep(stub.get("delay_s", 0))
        except asyncio.CancelledError:
            state["in_flight"] -= 1
            raise
        if stub.get("status"):
            state["in_flight"] -= 1
            return JSONResponse({"error": {"message": "stub failure", "code": stub["status"]}}, status_code=stub["status"])
        n = body.get("max_completion_tokens") or body.get("max_tokens") or 1
        kind = "chat.completion" if chat else "text_completion"
        if not body.get("stream"):
            state["in_flight"] -= 1
            choice = {"index": 0, "finish_reason": "length", "logprobs": None}
            choice.update({"message": {"role": "assistant", "content": "x" * n}} if chat else {"text": "x" * n})
            return Response(json.dumps({"id": "stub", "object": kind, "created": 0, "model": body["model"], "system_fingerprint": name,
                                        "choices": [choice], "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}}),
                            media_type="application/json")

        async def events():
            try:
                for k in range(n):
                    if k and stub.get("token_delay_s"):
                        await asyncio.sleep(stub["token_delay_s"])
                    if k == 1 and stub.get("crash") == "mid_stream":
                        os._exit(1)
                    delta = {"delta": {"content": "x"}} if chat else {"text": "x"}
                    chunk = {"id": "stub", "object": f"{kind}.chunk", "created": 0, "model": body["model"], "system_fingerprint": name,
                             "choices": [{"index": 0, "finish_reason": "length" if k == n - 1 else None, **delta}]}
                    yield f"data: {json.dumps(chunk)}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                state["in_flight"] -= 1

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await generate(request, chat=True)

    return app


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--name", default="stub")
    ap.add_argument("--token", default=None)
    ap.add_argument("--context", type=int, default=2048)
    args = ap.parse_args()
    app = create_stub(args.models.split(","), args.name, args.token, args.context)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
