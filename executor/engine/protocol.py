"""The OpenAI request formats the engine accepts: the completions and chat bodies vLLM accepts.

Everything is checked here, before a request reaches the engine loop: floats must be finite, seeds fit a
64-bit signed integer (as vLLM), prompts and token lists are non-empty. Fields the engine does not implement
are refused with 400 naming the field when they ask for something (``logprobs: true``), and accepted at their
neutral value (``logprobs: null``, ``presence_penalty: 0``), so stock clients that send defaults work.
Unknown fields are ignored, as vLLM does.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from executor.engine.sampler import SamplingParams

SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # torch.long, vLLM's bound
MAX_N = 64  # choices per prompt
MAX_PROMPTS = 256  # prompts per completions request
MAX_STOPS = 16

Finite = Annotated[float, Field(allow_inf_nan=False)]

# field -> values that ask for nothing the engine lacks (anything else is a 400 naming the field)
NEUTRAL: dict[str, tuple] = {
    "logprobs": (None, False), "top_logprobs": (None, 0), "echo": (None, False), "suffix": (None, ""),
    "best_of": (None, 1), "presence_penalty": (None, 0), "frequency_penalty": (None, 0), "repetition_penalty": (None, 1),
    "min_p": (None, 0), "min_tokens": (None, 0), "logit_bias": (None, {}), "tools": (None, []), "tool_choice": (None, "none", "auto"),
    "functions": (None, []), "response_format": (None, {"type": "text"}), "prompt_logprobs": (None,), "guided_json": (None,),
    "guided_regex": (None,), "guided_choice": (None,), "structured_outputs": (None,), "include_stop_str_in_output": (None, False),
    "use_beam_search": (None, False), "prompt_embeds": (None,), "allowed_token_ids": (None,), "bad_words": (None, []),
}


def _neutral(value, v) -> bool:
    if v is None or isinstance(v, bool):
        return value is v
    if isinstance(v, (int, float)):  # 0 and 0.0 alike, but not false
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value == v
    return value == v


def unsupported(body: dict) -> str | None:
    """The first field asking for something the engine does not do, as a message; None when there is none."""
    for name, neutral in NEUTRAL.items():
        if name in body and not any(_neutral(body[name], v) for v in neutral):
            allowed = ", ".join("null" if v is None else str(v).lower() if isinstance(v, bool) else repr(v) for v in neutral)
            return f"{name}: not supported by the muxplan engine (accepted: {allowed})"
    return None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: Finite | None = Field(default=None, ge=0.0, le=2.0)
    top_p: Finite | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)  # -1 and 0: no top-k cut (vLLM's and our conventions)
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=1, ge=1, le=MAX_N)
    ignore_eos: bool | None = False
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, v):
        if isinstance(v, list) and len(v) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings")
        return v

    def params(self, default_max: int, index: int = 0) -> SamplingParams:
        """Sampling parameters of choice ``index`` (seeded choices draw from seed + index)."""
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        seed = None if self.seed is None else self.seed + index
        return SamplingParams(max_tokens=self.max_completion_tokens or self.max_tokens or default_max,
                              temperature=1.0 if self.temperature is None else self.temperature,
                              top_p=1.0 if self.top_p is None else self.top_p, top_k=max(0, self.top_k or 0), seed=seed,
                              stop=tuple(s for s in stop if s), ignore_eos=bool(self.ignore_eos))

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and (self.stream_options.include_usage or self.stream_options.continuous_usage_stats))


PROMPT_FORMS = "a non-empty string, list of strings, list of token ids or list of token-id lists"


class CompletionRequest(_Sampling):
    prompt: str | list

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, v):
        if isinstance(v, str):
            if not v:
                raise ValueError("must not be empty")
            return v
        if not isinstance(v, list) or not v:
            raise ValueError(f"must be {PROMPT_FORMS}")
        if all(type(t) is int for t in v):
            return v
        if len(v) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
        for k, p in enumerate(v):
            if isinstance(p, str) and p:
                continue
            if isinstance(p, list) and p and all(type(t) is int for t in p):
                continue
            raise ValueError(f"prompt {k}: must be a non-empty string or list of integer token ids")
        return v

    def prompts(self) -> list[str | list[int]]:
        """Each prompt of the request: a text or a list of token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(t, int) for t in p):
            return [list(p)]
        return list(p)


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list | None = None

    @field_validator("content")
    @classmethod
    def _text_parts(cls, v):
        if isinstance(v, list):
            for k, part in enumerate(v):
                kind = part.get("type")
                if kind != "text":
                    raise ValueError(f"part {k}: type '{kind}' is not supported (text parts only)")
                if not isinstance(part.get("text"), str):
                    raise ValueError(f"part {k}: text must be a string")
        return v

    @field_validator("tool_calls")
    @classmethod
    def _no_tool_calls(cls, v):
        if v:
            raise ValueError("tool calls are not supported by the muxplan engine")
        return v

    def text(self) -> str:
        """The content as one string (text parts joined by newlines, as vLLM does)."""
        if isinstance(self.content, list):
            return "\n".join(part["text"] for part in self.content)
        return self.content or ""


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)


def validation_message(exc: ValidationError) -> str:
    """One line naming the field: ``messages.0.content: Value error, part 0: type 'image_url' is not supported``."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and ("[" in p or "-" in p or p in ("str", "int", "list", "dict")))]
    where = ".".join(loc) or "(body)"
    return f"{where}: {err['msg'].removeprefix('Value error, ')}"
