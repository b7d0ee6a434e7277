"""OpenAI-compatible HTTP server for one engine unit.

``python -m executor.engine.server --plan P --unit ID --host H --port P --device cpu|cuda [--policy adbs]``
serves every model of the plan's unit: ``/v1/completions``, ``/v1/chat/completions`` (the tokenizer's
chat template; SSE streaming), ``/v1/models``, ``/health`` and Prometheus ``/metrics``. Bad requests get
400 with a message, an unknown model 404 listing the served ones, a full queue 429 with Retry-After; an
accepted request always finishes (a client that goes away aborts its own request only).
"""
import argparse
import asyncio
import json
import threading
import time
import uuid
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from executor.engine.engine import Engine
from executor.engine.sampler import SamplingParams
from executor.engine.sequence import Sequence
from executor.engine.telemetry import Telemetry
from muxplan.files import InputError


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)
    ignore_eos: bool = False

    def params(self, default_max: int) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(max_tokens=self.max_completion_tokens or self.max_tokens or default_max, temperature=self.temperature,
                              top_p=self.top_p, top_k=self.top_k, seed=self.seed, stop=tuple(s for s in stop if s), ignore_eos=self.ignore_eos)


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str]


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)


def _error(status: int, message: str, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    kind = {400: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_error"}.get(status, "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status, headers=headers)


def _validation_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(body)"
    return f"{where}: {err['msg']}"


def create_app(engine: Engine, max_queue: int = 1024, default_max_tokens: int = 16) -> FastAPI:
    """``default_max_tokens`` applies to completions (OpenAI's default); chat defaults to the rest of the context."""
    app = FastAPI(title="muxplan engine")
    telemetry = Telemetry(engine)

    async def _parse(request: Request, kind):
        """The validated body for a served model, or the error response (400 bad body, 404 unknown model)."""
        try:
            body = kind.model_validate(await request.json())
        except json.JSONDecodeError:
            return None, _error(400, "(body): not valid JSON")
        except ValidationError as exc:
            return None, _error(400, _validation_message(exc))
        if body.model not in engine.models:
            return None, _error(404, f"model '{body.model}' is not served here; served models: {', '.join(engine.models)}")
        return body, None

    def _prompt_ids(model: str, prompt) -> list[int]:
        tok = engine.tokenizers[model]
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise InputError("prompt: one prompt per request")
            prompt = prompt[0]
        if isinstance(prompt, str):
            if tok is None:
                raise InputError(f"prompt: model '{model}' has no tokenizer; send token ids")
            return tok(prompt)["input_ids"]
        if not prompt:
            raise InputError("prompt: empty")
        vocab = engine.specs[model].vocab_size
        if any(not 0 <= t < vocab for t in prompt):
            raise InputError(f"prompt: token ids must be in 0..{vocab - 1}")
        return list(prompt)

    async def _submit(body: _Sampling, prompt_ids: list[int], chat: bool):
        model = body.model
        limit = engine.max_context(model)
        params = body.params(limit - len(prompt_ids) if chat else default_max_tokens)
        if len(prompt_ids) + 1 > limit:
            return _error(400, f"prompt: {len(prompt_ids)} tokens leave no room for output within this model's {limit}-token context")
        if engine.num_in_flight >= max_queue:
            telemetry.rejected(model)
            return _error(429, f"engine busy: {engine.num_in_flight} requests in flight", retry_after=1)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def listener(seq: Sequence, delta: str, finished: bool) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (delta, finished))

        seq = engine.add_request(model, prompt_ids, params, listener)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if body.stream:
            return StreamingResponse(_stream(seq, events, rid, created, chat), media_type="text/event-stream")
        try:
            while True:
                _, finished = await events.get()
                if finished:
                    break
        except asyncio.CancelledError:
            engine.abort(seq.id)
            raise
        telemetry.finished(seq)
        usage = {"prompt_tokens": len(seq.prompt_ids), "completion_tokens": len(seq.output_ids),
                 "total_tokens": len(seq.prompt_ids) + len(seq.output_ids)}
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": seq.text}, "finish_reason": seq.finish_reason}
            return {"id": rid, "object": "chat.completion", "created": created, "model": model, "choices": [choice], "usage": usage}
        choice = {"index": 0, "text": seq.text, "logprobs": None, "finish_reason": seq.finish_reason}
        return {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [choice], "usage": usage}

    async def _stream(seq: Sequence, events: asyncio.Queue, rid: str, created: int, chat: bool):
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, reason: str | None, first: bool = False) -> str:
            if chat:
                delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text is not None else {})
                choice = {"index": 0, "delta": delta, "finish_reason": reason}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}
            return "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": seq.model, "choices": [choice]}) + "\n\n"

        finished = False
        try:
            if chat:
                yield chunk(None, None, first=True)
            while not finished:
                delta, finished = await events.get()
                if delta:
                    yield chunk(delta, None)
            telemetry.finished(seq)
            yield chunk(None if chat else "", seq.finish_reason)
            yield "data: [DONE]\n\n"
        finally:
            if not finished:
                engine.abort(seq.id)  # the client went away

    @app.post("/v1/completions")
    async def completions(request: Request):
        body, err = await _parse(request, CompletionRequest)
        if err is not None:
            return err
        try:
            ids = _prompt_ids(body.model, body.prompt)
        except InputError as exc:
            return _error(400, str(exc))
        return await _submit(body, ids, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body, err = await _parse(request, ChatRequest)
        if err is not None:
            return err
        tok = engine.tokenizers[body.model]
        if tok is None or not getattr(tok, "chat_template", None):
            return _error(400, f"messages: model '{body.model}' has no chat template; use /v1/completions")
        ids = tok.apply_chat_template([m.model_dump() for m in body.messages], add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return await _submit(body, list(ids), chat=True)

    @app.get("/v1/models")
    async def models():
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "muxplan", "max_model_len": engine.max_context(name)}
                for name in engine.models]
        return {"object": "list", "data": data}

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(engine.models), "in_flight": engine.num_in_flight}

    @app.get("/metrics")
    async def metrics():
        body, content_type = telemetry.render()
        return Response(body, media_type=content_type)

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description="Serve one unit of a plan with the muxplan engine.")
    ap.add_argument("--plan", required=True)
    ap.add_argument("--unit", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--policy", default="adbs")
    ap.add_argument("--max-queue", type=int, default=1024)
    args = ap.parse_args()
    import sys

    import uvicorn

    from executor.engine.engine import served_models
    from muxplan.files import load_contract
    from muxplan.schema import Plan

    try:
        engine = Engine(served_models(load_contract(args.plan, Plan), args.unit), policy=args.policy, device=args.device)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    stop = threading.Event()
    loop_thread = threading.Thread(target=engine.serve, args=(stop,), daemon=True, name="engine-loop")
    loop_thread.start()
    try:
        uvicorn.run(create_app(engine, max_queue=args.max_queue), host=args.host, port=args.port, log_level="warning")
    finally:
        stop.set()
        engine.wake()
        loop_thread.join(timeout=5)


if __name__ == "__main__":
    main()
