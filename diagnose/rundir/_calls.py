"""Turn the `calls` records of events.jsonl into the call table, one row per call.

A run of 100k steps holds about a million call tokens but only a dozen distinct ones, so
each distinct token is parsed once in Python and the rows are built with numpy takes
(`pd.factorize` codes), never a Python loop over rows.

Token grammar (docs/run-directory.md): `OBJ.METHOD`, a bare `METHOD` (`backward`), an
optional `[FLAGS]` suffix on forwards, an optional `*COUNT` run-length suffix, and
`phase:NAME` markers, which are not calls: they set the `phase` of the calls after them,
and `batch` markers (a training batch arrived from a watched loader), which are not calls
either: the `batch` column of each call counts those before it.
"""
from __future__ import annotations

import io
import itertools
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from diagnose.rundir import schema
from diagnose.rundir._coerce import as_int
from diagnose.rundir.tables import CALLS_COLUMNS, empty_calls

_TOKEN = re.compile(r"(?:(?P<obj>[^.\[]+)\.)?(?P<method>[^\[*]+)(?:\[(?P<flags>[A-Za-z]*)\])?(?:\*(?P<count>\d+))?")


@dataclass(frozen=True)
class _Token:
    """One distinct token, parsed. Booleans are None where the token says nothing."""

    obj: str
    method: str
    count: int = 1
    phase: str | None = None
    batch: bool = False
    training: bool | None = None
    grad: bool | None = None
    inference: bool = False
    backprop: bool | None = None


def parse_token(token: str) -> _Token:
    """Parse one call token (see the module docstring)."""
    if token.startswith(schema.PHASE_TOKEN_PREFIX):
        return _Token(obj="", method="", phase=token[len(schema.PHASE_TOKEN_PREFIX):])
    match = _TOKEN.fullmatch(token)
    if match is not None and match["method"] == schema.BATCH_TOKEN and not match["obj"] and match["flags"] is None:
        return _Token(obj="", method="", count=int(match["count"]) if match["count"] else 1, batch=True)
    if match is None:  # unknown future syntax: keep it whole, as a bare method
        return _Token(obj="", method=token)
    flags = match["flags"]
    count = int(match["count"]) if match["count"] else 1
    if flags is None:
        return _Token(obj=match["obj"] or "", method=match["method"], count=count)
    inference = schema.FLAG_INFERENCE in flags
    return _Token(
        obj=match["obj"] or "",
        method=match["method"],
        count=count,
        training=True if schema.FLAG_TRAINING in flags else False if schema.FLAG_EVAL in flags else None,
        grad=True if schema.FLAG_GRAD in flags else False if (schema.FLAG_NO_GRAD in flags or inference) else None,
        inference=inference,
        backprop=schema.FLAG_BACKPROP in flags,
    )


def _nullable_bool(values: list[bool | None], codes: np.ndarray) -> pd.arrays.BooleanArray:
    mask_u = np.array([v is None for v in values], dtype=bool)
    data_u = np.array([bool(v) for v in values], dtype=bool)
    return pd.arrays.BooleanArray(data_u[codes], mask_u[codes])


def _categorical(values: list[str], codes: np.ndarray) -> pd.Categorical:
    categories = sorted(set(values))
    position = {c: i for i, c in enumerate(categories)}
    return pd.Categorical.from_codes(np.array([position[v] for v in values], dtype=np.int32)[codes], categories)


@dataclass(frozen=True)
class CallTokens:
    """The tokens of every `calls` record, dictionary-encoded: record `i` (of step
    `steps[i]`) holds `lengths[i]` tokens; token `k` overall is `uniques[codes[k]]`."""

    steps: np.ndarray
    lengths: np.ndarray
    codes: np.ndarray
    uniques: list[str]


def tokens_from_records(records: list[dict]) -> CallTokens:
    """Tokens of `calls` records parsed by json (any record shape)."""
    lists = [[str(t) for t in r["calls"]] if isinstance(r.get("calls"), list) else [] for r in records]
    flat = list(itertools.chain.from_iterable(lists))
    codes, uniques = pd.factorize(np.array(flat, dtype=object)) if flat else (np.array([], np.int64), [])
    steps = [as_int(r.get("step")) or 0 for r in records]  # a wrong-typed step reads as 0
    return CallTokens(np.asarray(steps, dtype=np.int64), np.array([len(t) for t in lists], dtype=np.int64),
                      np.asarray(codes), [str(u) for u in uniques])


def tokens_from_jsonl(body: bytes) -> CallTokens | None:
    """Tokens of complete `calls` lines read by pyarrow (5x faster than json on a million
    tokens), or None if pyarrow cannot read them as `{step: int, calls: [str]}` records."""
    if not body.strip():
        return CallTokens(np.array([], np.int64), np.array([], np.int64), np.array([], np.int64), [])
    try:
        table = pa_json.read_json(io.BytesIO(body))
        calls = table.column("calls").combine_chunks()
        steps = table.column("step")
        if not (pa.types.is_list(calls.type) and pa.types.is_string(calls.type.value_type)
                and pa.types.is_integer(steps.type) and steps.null_count == 0):
            return None
        encoded = pc.dictionary_encode(pc.list_flatten(calls))
    except (pa.ArrowException, KeyError):
        return None
    return CallTokens(
        steps.to_numpy().astype(np.int64),
        pc.fill_null(pc.list_value_length(calls), 0).to_numpy().astype(np.int64),
        encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64),
        encoded.dictionary.to_pylist(),
    )


def calls_table(tokens: CallTokens) -> pd.DataFrame:
    """One row per call, in recorded order (see the module docstring)."""
    if len(tokens.codes) == 0:
        return empty_calls()
    parsed = [parse_token(u) for u in tokens.uniques]
    codes = tokens.codes
    step_per_token = np.repeat(tokens.steps, tokens.lengths)

    counts = np.array([p.count for p in parsed], dtype=np.int64)[codes]
    if (counts != 1).any():  # expand `token*N` into N rows
        codes, step_per_token = np.repeat(codes, counts), np.repeat(step_per_token, counts)

    phase_u = np.array([p.phase for p in parsed], dtype=object)
    marks = pd.Series(phase_u[codes], dtype=object)
    is_batch = np.array([p.batch for p in parsed], dtype=bool)[codes]
    is_call = marks.isna().to_numpy() & ~is_batch
    phase = marks.ffill().fillna(schema.DEFAULT_PHASE).to_numpy()[is_call]
    batch = np.cumsum(is_batch, dtype=np.int64)[is_call]
    codes, step_per_token = codes[is_call], step_per_token[is_call]
    if len(codes) == 0:
        return empty_calls()

    frame = pd.DataFrame({
        "step": step_per_token,
        "seq": np.arange(len(codes), dtype=np.int64),
        "obj": _categorical([p.obj for p in parsed], codes),
        "method": _categorical([p.method for p in parsed], codes),
        "training": _nullable_bool([p.training for p in parsed], codes),
        "grad": _nullable_bool([p.grad for p in parsed], codes),
        "inference": np.array([p.inference for p in parsed], dtype=bool)[codes],
        "backprop": _nullable_bool([p.backprop for p in parsed], codes),
        "phase": pd.Categorical(phase),
        "batch": batch,
        "token": _categorical([u.split("*")[0] for u in tokens.uniques], codes),
    })
    return frame[list(CALLS_COLUMNS)]
