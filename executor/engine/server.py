"""OpenAI-compatible HTTP server for one engine unit.

``python -m executor.engine.server --plan P --unit ID --host H --port P --device cpu|cuda [--policy adbs]``
serves every model of the plan's unit: ``/v1/completions``, ``/v1/chat/completions`` (the tokenizer's
chat template; SSE streaming; the request formats of executor.engine.protocol), ``/v1/models``, ``/health``
and Prometheus ``/metrics``. Bad requests get 400 naming the field, an unknown model 404 listing the served
ones, a full queue 429 with Retry-After. An accepted request always ends: with its answer, or (the engine
loop died) 503, or mid-stream an SSE error event and no ``[DONE]``.

JSON parsing, validation and tokenisation run on a worker thread so a huge prompt never stalls the event
loop (and /health). With ``MUXPLAN_BACKEND_TOKEN`` set every route but /health needs
``Authorization: Bearer <token>``; /health names the served models and the token's digest (identity).
"""
import argparse
import asyncio
import json
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from executor.engine.engine import Engine, EngineDead
from executor.engine.protocol import ChatRequest, CompletionRequest, unsupported, validation_message
from executor.engine.telemetry import Telemetry
from executor.identity import TOKEN_ENV, TokenGuard, token_digest
from muxplan.files import InputError

BYTES_BOUND_FACTOR = 4  # a text longer than this x longest token x context cannot fit: refused without tokenising


class Reject(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


def error(status: int, message: str, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(status, "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status, headers=headers)


class Prompts:
    """Request body -> validated request and token ids per prompt (runs on a worker thread)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.longest_token_bytes = {name: max((len(t.encode()) for t in tok.get_vocab()), default=1) if tok is not None else 1
                                    for name, tok in engine.tokenizers.items()}

    def parse(self, raw: bytes, chat: bool):
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):  # ValueError covers bad UTF-8 and bad JSON
            raise Reject(400, "(body): not valid JSON") from None
        if not isinstance(data, dict):
            raise Reject(400, "(body): must be a JSON object")
        if (why := unsupported(data)) is not None:
            raise Reject(400, why)
        try:
            body = (ChatRequest if chat else CompletionRequest).model_validate(data)
        except ValidationError as exc:
            raise Reject(400, validation_message(exc)) from None
        except RecursionError:
            raise Reject(400, "(body): nested too deeply") from None
        if body.model not in self.engine.models:
            raise Reject(404, f"model '{body.model}' is not served here; served models: {', '.join(self.engine.models)}")
        try:
            return body, (self._chat_ids(body) if chat else [self._ids(body.model, p) for p in body.prompts()])
        except InputError as exc:
            raise Reject(400, str(exc)) from None

    def _fits(self, model: str, text_bytes: int, field: str) -> None:
        limit = self.engine.max_context(model)
        if text_bytes > BYTES_BOUND_FACTOR * self.longest_token_bytes[model] * limit:
            raise InputError(f"{field}: {text_bytes} bytes of text cannot fit this model's {limit}-token context")

    def _room(self, model: str, ids: list[int], field: str) -> list[int]:
        limit = self.engine.max_context(model)
        if len(ids) + 1 > limit:
            raise InputError(f"{field}: {len(ids)} tokens leave no room for output within this model's {limit}-token context")
        return ids

    def _ids(self, model: str, prompt) -> list[int]:
        tok = self.engine.tokenizers[model]
        if isinstance(prompt, str):
            if tok is None:
                raise InputError(f"prompt: model '{model}' has no tokenizer; send token ids")
            self._fits(model, len(prompt.encode()), "prompt")
            ids = tok(prompt)["input_ids"]
            if not ids:
                raise InputError("prompt: the text gives no tokens")
            return self._room(model, list(ids), "prompt")
        self._room(model, prompt, "prompt")  # before scanning a possibly huge list
        vocab = self.engine.specs[model].vocab_size
        if any(not 0 <= t < vocab for t in prompt):
            raise InputError(f"prompt: token ids must be in 0..{vocab - 1}")
        return list(prompt)

    def _chat_ids(self, body: ChatRequest) -> list[list[int]]:
        tok = self.engine.tokenizers[body.model]
        if tok is None or not getattr(tok, "chat_template", None):
            raise InputError(f"messages: model '{body.model}' has no chat template; use /v1/completions")
        messages = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})} for m in body.messages]
        self._fits(body.model, sum(len(m["content"].encode()) for m in messages), "messages")
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return [self._room(body.model, list(ids), "messages")]


class _Completions:
    """The completion endpoints' request handling: parse off the event loop, admit, submit, answer or stream."""

    def __init__(self, engine: Engine, telemetry: Telemetry, max_queue: int, default_max_tokens: int, workers: int):
        self.engine, self.telemetry = engine, telemetry
        self.max_queue, self.default_max_tokens = max_queue, default_max_tokens
        self.prompts = Prompts(engine)
        self.cpu = ThreadPoolExecutor(workers, thread_name_prefix="parse")

    async def handle(self, request: Request, chat: bool):
        loop = asyncio.get_running_loop()
        try:
            raw = await request.body()
            body, ids = await loop.run_in_executor(self.cpu, self.prompts.parse, raw, chat)
            return await self.submit(body, ids, chat)
        except Reject as r:
            return error(r.status, r.message, r.retry_after)

    def admit(self, model: str, num_seqs: int) -> None:
        engine = self.engine
        if engine.failure is not None:
            raise Reject(503, f"engine failed: {engine.failure}")
        if engine.num_in_flight + num_seqs > self.max_queue:
            self.telemetry.rejected(model)
            raise Reject(429, f"engine busy: {engine.num_in_flight} requests in flight", retry_after=1)

    def add(self, body, prompt_ids: list[list[int]], chat: bool, events: asyncio.Queue) -> list:
        """One engine sequence per prompt and choice, each reporting (index, delta, finished) to ``events``."""
        engine, model, n = self.engine, body.model, body.n or 1
        limit = engine.max_context(model)
        loop = asyncio.get_running_loop()
        seqs = []
        try:
            for p, ids in enumerate(prompt_ids):
                for i in range(n):
                    index = p * n + i

                    def listener(seq, delta, finished, index=index):
                        loop.call_soon_threadsafe(events.put_nowait, (index, delta, finished))

                    seqs.append(engine.add_request(model, ids, body.params(limit - len(ids) if chat else self.default_max_tokens, i),
                                                   listener))
        except InputError as exc:
            for s in seqs:
                engine.abort(s.id)
            raise Reject(400, str(exc)) from None
        except EngineDead as exc:
            raise Reject(503, f"engine failed: {exc}") from None
        return seqs

    async def submit(self, body, prompt_ids: list[list[int]], chat: bool):
        n = body.n or 1
        self.admit(body.model, len(prompt_ids) * n)
        events: asyncio.Queue = asyncio.Queue()
        seqs = self.add(body, prompt_ids, chat, events)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if body.stream:
            return StreamingResponse(self.stream(seqs, events, rid, created, chat, body.include_usage, n), media_type="text/event-stream")
        await self.wait(seqs, events)
        if any(s.finish_reason == "error" for s in seqs):
            raise Reject(503, f"engine failed: {self.engine.failure}")
        for s in seqs:
            self.telemetry.finished(s)
        return _completion_body(seqs, rid, created, body.model, chat, n)

    async def wait(self, seqs, events: asyncio.Queue) -> None:
        """Until every sequence finished; a cancelled request aborts them."""
        left = len(seqs)
        try:
            while left:
                _, _, finished = await events.get()
                left -= finished
        except asyncio.CancelledError:
            for s in seqs:
                self.engine.abort(s.id)
            raise

    async def stream(self, seqs, events: asyncio.Queue, rid: str, created: int, chat: bool, include_usage: bool, n: int):
        engine = self.engine
        obj = "chat.completion.chunk" if chat else "text_completion"
        model = seqs[0].model

        def chunk(index: int, text: str | None, reason: str | None, first: bool = False) -> str:
            if chat:
                delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text is not None else {})
                choice = {"index": index, "delta": delta, "finish_reason": reason}
            else:
                choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": reason}
            return "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}) + "\n\n"

        left = len(seqs)
        try:
            if chat:
                for k in range(len(seqs)):
                    yield chunk(k, None, None, first=True)
            while left:
                index, delta, finished = await events.get()
                if delta:
                    yield chunk(index, delta, None)
                if finished:
                    left -= 1
                    seq = seqs[index]
                    if seq.finish_reason == "error":  # the engine died: say so, and no [DONE]
                        err = {"message": f"engine failed: {engine.failure}", "type": "server_error", "code": 503}
                        yield "data: " + json.dumps({"error": err}) + "\n\n"
                        return
                    self.telemetry.finished(seq)
                    yield chunk(index, None if chat else "", seq.finish_reason)
            if include_usage:
                yield "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": model, "choices": [],
                                             "usage": _usage(seqs, n)}) + "\n\n"
            yield "data: [DONE]\n\n"
        finally:
            if left:
                for s in seqs:
                    engine.abort(s.id)  # the client went away (aborting a finished one is a no-op)


def _usage(seqs, n: int) -> dict:
    prompt = sum(len(s.prompt_ids) for s in seqs[::n])  # each prompt counts once, whatever n
    completion = sum(len(s.output_ids) for s in seqs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _completion_body(seqs, rid: str, created: int, model: str, chat: bool, n: int) -> dict:
    if chat:
        choices = [{"index": k, "message": {"role": "assistant", "content": s.text}, "finish_reason": s.finish_reason}
                   for k, s in enumerate(seqs)]
        return {"id": rid, "object": "chat.completion", "created": created, "model": model, "choices": choices, "usage": _usage(seqs, n)}
    choices = [{"index": k, "text": s.text, "logprobs": None, "finish_reason": s.finish_reason} for k, s in enumerate(seqs)]
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": choices, "usage": _usage(seqs, n)}


def create_app(engine: Engine, max_queue: int = 1024, default_max_tokens: int = 16, token: str | None = None,
               workers: int = 2):
    """``default_max_tokens`` applies to completions (OpenAI's default); chat defaults to the rest of the context."""
    app = FastAPI(title="muxplan engine")
    telemetry = Telemetry(engine)
    api = _Completions(engine, telemetry, max_queue, default_max_tokens, workers)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await api.handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await api.handle(request, chat=True)

    @app.get("/v1/models")
    async def models():
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "muxplan", "max_model_len": engine.max_context(name)}
                for name in engine.models]
        return {"object": "list", "data": data}

    @app.get("/health")
    async def health():
        ident = {"models": list(engine.models), "token_sha256_8": token_digest(token) if token else None}
        if engine.failure is not None:
            return JSONResponse({"status": "dead", "error": engine.failure, **ident}, status_code=503)
        return {"status": "ok", "in_flight": engine.num_in_flight, **ident}

    @app.get("/metrics")
    async def metrics():
        body, content_type = telemetry.render()
        return Response(body, media_type=content_type)

    return TokenGuard(app, token) if token else app


def main() -> None:
    ap = argparse.ArgumentParser(description="Serve one unit of a plan with the muxplan engine.")
    ap.add_argument("--plan", required=True)
    ap.add_argument("--unit", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--policy", default="adbs")
    ap.add_argument("--max-queue", type=int, default=1024)
    ap.add_argument("--fail-after-jobs", type=int, default=None, help="fault injection for tests: the engine loop dies after N jobs")
    args = ap.parse_args()
    import sys

    import uvicorn

    from executor.engine.engine import served_models
    from profiler.plan_check import load_plan

    try:
        engine = Engine(served_models(load_plan(args.plan, model_files_optional=True), args.unit), policy=args.policy, device=args.device)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    engine.fail_after_jobs = args.fail_after_jobs
    stop = threading.Event()
    loop_thread = threading.Thread(target=engine.serve, args=(stop,), daemon=True, name="engine-loop")
    server = uvicorn.Server(uvicorn.Config(create_app(engine, max_queue=args.max_queue, token=os.environ.get(TOKEN_ENV) or None),
                                           host=args.host, port=args.port, log_level="warning"))

    def exit_when_loop_dies():
        loop_thread.join()
        if not stop.is_set():
            time.sleep(1.0)  # let open streams send their error events
            server.should_exit = True

    loop_thread.start()
    threading.Thread(target=exit_when_loop_dies, daemon=True, name="loop-watch").start()
    try:
        server.run()
    finally:
        stop.set()
        engine.wake()
        loop_thread.join(timeout=5)
    if engine.failure is not None:
        print(f"error: engine loop failed: {engine.failure}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
