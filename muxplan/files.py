"""Loading and saving contract files: JSON or YAML in, atomic writes out, one line per problem."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator, TypeVar

from pydantic import BaseModel, ValidationError

from muxplan.schema import Trace, TraceRow

C = TypeVar("C", bound=BaseModel)

TRACE_COLUMNS = ("arrival_s", "model", "prompt_tokens", "output_tokens")


class InputError(Exception):
    """Bad user input: the message is one line per problem, each naming the file and field."""

    def __init__(self, problems: list[str] | str):
        problems = [problems] if isinstance(problems, str) else list(problems)
        # one printable line each: a parser's message may span lines, and a file's lone surrogates cannot be printed
        self.problems = [re.sub(r"\s*[\r\n]+\s*", " ", p).strip().encode("utf-8", "backslashreplace").decode() for p in problems]
        super().__init__("\n".join(self.problems))


def field_path(loc: tuple) -> str:
    """('models', 3, 'rate_rps') -> 'models[3].rate_rps'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


def validation_problems(path: str | Path, err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        problems.append(f"{path}: {field_path(e['loc'])}: {msg}")
    return problems


_SURROGATE_ESCAPE = re.compile(r"\\[uU]0*[dD][89a-fA-F][0-9a-fA-F]{2}")


def parse_text(path: str | Path, text: str, yaml_syntax: bool) -> object:
    """JSON or YAML text -> Python data; syntax errors, absurd nesting, huge numbers and lone surrogates become InputError."""
    data = _parse_text(path, text, yaml_syntax)
    _check_printable(f"{path}: (root)", text, data)
    return data


def _check_printable(where: str, text: str, data: object) -> None:
    """Refuse strings holding a lone UTF-16 surrogate (a valid JSON escape, but not text: it cannot be printed)."""
    if not _SURROGATE_ESCAPE.search(text):  # the usual case costs one regex scan
        return
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{where}: a string holds a lone UTF-16 surrogate (\\ud800-\\udfff escape)") from None
    except (ValueError, TypeError, RecursionError):
        pass  # YAML-only types (dates, ...): nothing to report here


def _parse_text(path: str | Path, text: str, yaml_syntax: bool) -> object:
    if yaml_syntax:
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}" if mark else "(root)"
            raise InputError(f"{path}: {where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
        except RecursionError:
            raise InputError(f"{path}: (root): invalid YAML: nested too deeply") from None
        except (ValueError, OverflowError) as exc:  # e.g. an integer of more than 4300 digits
            raise InputError(f"{path}: (root): invalid YAML: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: line {exc.lineno}: invalid JSON: {exc.msg}") from None
    except RecursionError:
        raise InputError(f"{path}: (root): invalid JSON: nested too deeply") from None
    except (ValueError, OverflowError) as exc:
        raise InputError(f"{path}: (root): invalid JSON: {exc}") from None


def read_text(path: str | Path) -> str:
    """A text file's content (a UTF-8 BOM, as spreadsheet tools write, is dropped); unreadable -> InputError."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read: {exc.__class__.__name__}: {exc}") from None


def read_mapping(path: str | Path) -> object:
    """Parse a JSON or YAML file into Python data; syntax errors become InputError."""
    p = Path(path)
    return parse_text(p, read_text(p), p.suffix.lower() in (".yaml", ".yml"))


def parse_contract(path: str | Path, data: object, cls: type[C]) -> C:
    if not isinstance(data, dict):
        raise InputError(f"{path}: (root): expected a mapping, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise InputError(validation_problems(path, err)) from None
    except RecursionError:
        raise InputError(f"{path}: (root): nested too deeply") from None


def load_contract(path: str | Path, cls: type[C]) -> C:
    """Load one contract file (JSON or YAML)."""
    return parse_contract(path, read_mapping(path), cls)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write via a temp file in the same folder and rename, so no half-written file is ever seen."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path beside ``path`` (same suffix, so writers like matplotlib pick the format) renamed onto it on success."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=f".tmp{p.suffix}", dir=p.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def save_contract(path: str | Path, obj: BaseModel) -> None:
    """Save a contract as YAML (.yaml/.yml) or JSON (anything else), atomically."""
    p = Path(path)
    data = obj.model_dump(mode="json", exclude_none=False)
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        write_text_atomic(p, yaml.safe_dump(data, sort_keys=False))
    else:
        write_text_atomic(p, json.dumps(data, indent=1) + "\n")


def _row(path: Path, where: str, raw: dict) -> TraceRow:
    missing = [c for c in TRACE_COLUMNS if raw.get(c) in (None, "")]
    if missing:
        raise InputError(f"{path}: {where}.{missing[0]}: missing")
    try:
        return TraceRow.model_validate({c: raw[c] for c in TRACE_COLUMNS})
    except ValidationError as err:
        raise InputError([f"{path}: {where}.{field_path(e['loc'])}: {e['msg']}" for e in err.errors()]) from None


def load_trace(path: str | Path) -> Trace:
    """Load request rows from CSV or JSONL (columns arrival_s, model, prompt_tokens, output_tokens) or a Trace JSON/YAML."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".json", ".yaml", ".yml"):
        return load_contract(p, Trace)
    rows: list[TraceRow] = []
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:
            if suffix == ".jsonl":
                for i, line in enumerate(f):
                    if not line.strip():
                        continue
                    try:
                        raw = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise InputError(f"{p}: line {i + 1}: invalid JSON: {exc.msg}") from None
                    except RecursionError:
                        raise InputError(f"{p}: line {i + 1}: invalid JSON: nested too deeply") from None
                    except ValueError as exc:
                        raise InputError(f"{p}: line {i + 1}: invalid JSON: {exc}") from None
                    _check_printable(f"{p}: line {i + 1}", line, raw)
                    if not isinstance(raw, dict):
                        raise InputError(f"{p}: line {i + 1}: expected an object")
                    rows.append(_row(p, f"rows[{len(rows)}]", raw))
            else:
                reader = csv.DictReader(f)
                absent = [c for c in TRACE_COLUMNS if c not in (reader.fieldnames or [])]
                if absent:
                    raise InputError(f"{p}: header: missing column {absent[0]} (need {', '.join(TRACE_COLUMNS)})")
                for i, raw in enumerate(reader):
                    rows.append(_row(p, f"rows[{i}]", raw))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{p}: cannot read: {exc}") from None
    if not rows:
        raise InputError(f"{p}: rows: no requests")
    return Trace(requests=rows, source=str(p))


def save_trace(path: str | Path, trace: Trace) -> None:
    """Save request rows as CSV (.csv), JSONL (.jsonl) or a Trace contract (.json/.yaml)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".csv":
        lines = [",".join(TRACE_COLUMNS)]
        lines += [f"{r.arrival_s:.6f},{r.model},{r.prompt_tokens},{r.output_tokens}" for r in trace.requests]
        write_text_atomic(p, "\n".join(lines) + "\n")
    elif suffix == ".jsonl":
        write_text_atomic(p, "".join(json.dumps(r.model_dump()) + "\n" for r in trace.requests))
    else:
        save_contract(p, trace)
