"""Saving simulation outputs: per-request records (CSV or Parquet) and summaries (JSON)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from muxplan.files import InputError, write_text_atomic
from planner.sim.engine import SimResult


def records_frame(result: SimResult):
    """The per-request records as a pandas DataFrame with model names instead of indices."""
    import pandas as pd

    r = result.records
    frame = pd.DataFrame({k: v for k, v in r.items() if k != "model"})
    frame.insert(1, "model", np.array(result.model_names, dtype=object)[r["model"]])
    frame.insert(len(frame.columns), "policy", result.policy)
    return frame


def save_records(result: SimResult, path: str | Path) -> None:
    """Write records as Parquet (.parquet) or CSV (anything else), atomically."""
    p = Path(path)
    frame = records_frame(result)
    if p.suffix.lower() == ".parquet":
        import os
        import tempfile

        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        os.close(fd)
        try:
            frame.to_parquet(tmp, index=False)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    elif p.suffix.lower() == ".csv":
        write_text_atomic(p, frame.to_csv(index=False))
    else:
        raise InputError(f"{p}: records must be .csv or .parquet")


def plain(value):
    """JSON-ready data: numpy scalars/arrays to Python, tuples to lists, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [plain(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def summary_json(data: object) -> str:
    return json.dumps(plain(data), indent=1, allow_nan=False)


def save_json(path: str | Path, data: object) -> None:
    write_text_atomic(path, summary_json(data) + "\n")
