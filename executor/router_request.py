"""What the router reads from a request body before forwarding it (the body itself is forwarded as sent).

``parse_request`` returns the model, whether the client asked for a stream, and the request's token
needs; every problem is a ``RequestError`` with the HTTP status and a one-line message naming the field.
Lengths are checked against the model's context when the router knows it: ``max_tokens`` exactly, and
the prompt by a lower bound (token ids are counted; text counts at least one token per
``MAX_CHARS_PER_TOKEN`` characters), so the router only refuses what the backend certainly would.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

MAX_CHARS_PER_TOKEN = 32  # longer than the longest token of common vocabularies: the bound never over-counts


class RequestError(Exception):
    """An answer the router gives itself: HTTP status, one-line message, optional Retry-After seconds."""

    def __init__(self, status: int, message: str, retry_after_s: int | None = None):
        super().__init__(message)
        self.status, self.message, self.retry_after_s = status, message, retry_after_s


def error_body(status: int, message: str) -> bytes:
    """The body of every error the router answers itself (OpenAI's shape)."""
    return json.dumps({"error": {"message": message, "code": status}}).encode()


@dataclass(slots=True)
class Parsed:
    model: str
    stream: bool
    prompt_tokens_min: int  # a lower bound on the prompt's length in tokens
    max_tokens: int | None


def _no_constants(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _finite(literal: str) -> float:
    value = float(literal)
    if value in (math.inf, -math.inf):
        raise ValueError(f"{literal[:40]} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_no_constants, parse_float=_finite)  # json.loads with hooks builds one per call


def _loads(body: bytes):
    try:
        return _DECODER.decode(body.decode())  # JSON over HTTP is UTF-8 (RFC 8259)
    except RecursionError:
        raise RequestError(400, "request body must be JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RequestError(400, f"request body must be JSON: {str(exc).splitlines()[0][:200]}") from None


def _text_tokens(text: str) -> int:
    return -(-len(text) // MAX_CHARS_PER_TOKEN)


def _prompt_tokens(prompt) -> int:
    """Completions' ``prompt``: a string, token ids, or a batch of either (the longest counts). Other shapes
    count 0 and are the backend's to refuse; nothing here recurses, so nesting cannot exhaust the stack."""
    if isinstance(prompt, str):
        return _text_tokens(prompt)
    if not isinstance(prompt, list):
        return 0
    if all(isinstance(t, int) for t in prompt):
        return len(prompt)
    longest = 0
    for p in prompt:
        if isinstance(p, str):
            longest = max(longest, _text_tokens(p))
        elif isinstance(p, list) and all(isinstance(t, int) for t in p):
            longest = max(longest, len(p))
    return longest


def _messages_tokens(messages) -> int:
    if not isinstance(messages, list):
        return 0
    total = 0
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            total += _text_tokens(content)
        elif isinstance(content, list):
            total += sum(_text_tokens(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return total


def _max_tokens(body: dict) -> int | None:
    """``max_completion_tokens`` wins over ``max_tokens`` (as in OpenAI's API); both must be positive integers."""
    found = None
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise RequestError(400, f"field '{name}' must be a positive integer")
        found = value
    return found


MAX_DEPTH = 64  # deeper JSON is refused here: backends' parsers (vLLM's, a stub's) fail on it with a 500


def _too_deep(data) -> bool:
    """True when containers nest deeper than MAX_DEPTH (iterative: the walk itself cannot exhaust the stack)."""
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (dict, list)):
                if depth >= MAX_DEPTH:
                    return True
                stack.append((child, depth + 1))
    return False


def parse_request(body: bytes, chat: bool) -> Parsed:
    data = _loads(body)
    if isinstance(data, (dict, list)) and _too_deep(data):
        raise RequestError(400, f"request body must be JSON: nested too deeply (more than {MAX_DEPTH} levels)")
    if not isinstance(data, dict):
        raise RequestError(400, "request body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str):
        raise RequestError(400, "field 'model' is required")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "field 'stream' must be true or false")
    prompt = _messages_tokens(data.get("messages")) if chat else _prompt_tokens(data.get("prompt"))
    return Parsed(model, stream, prompt, _max_tokens(data))


def check_context(p: Parsed, context_tokens: int | None) -> None:
    """400 naming the limit when the request cannot fit the model's context."""
    if context_tokens is None:
        return
    if p.max_tokens is not None and p.max_tokens > context_tokens:
        raise RequestError(400, f"max_tokens {p.max_tokens} exceeds model '{p.model}''s context of {context_tokens} tokens")
    if p.prompt_tokens_min + (p.max_tokens or 1) > context_tokens:
        raise RequestError(400, f"prompt of at least {p.prompt_tokens_min} tokens plus {p.max_tokens or 1} output tokens exceeds "
                                f"model '{p.model}''s context of {context_tokens} tokens")
