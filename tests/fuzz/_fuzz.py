"""What the fuzzers share: the run's budget (a hypothesis profile), the committed corpus, JSON strategies.

Budget: ``bounded`` (the default, what ``make test`` runs: a few dozen examples per fuzzer, no
deadline, so that a slow shared machine is no failure) or ``long`` (``SLUICE_FUZZ=long``: thousands
of examples each; tests/fuzz/README.md).  The profiles are registered here and applied per fuzzer
(``@FUZZ``), never loaded globally: the rest of the suite keeps its own hypothesis settings.

Corpus: tests/fuzz/corpus/<target>/ holds seed inputs as files (real requests and answers, and the
inputs that broke gateways before: duplicate keys, deep nesting, lone surrogates, huge numbers, broken
boundaries and streams).  Each fuzzer replays its corpus first (``corpus(target)``, one test per
file), then explores; hypothesis's example database is a cache of failures, not this corpus.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

CORPUS = Path(__file__).resolve().parent / "corpus"
LONG = os.environ.get("SLUICE_FUZZ", "") == "long"

settings.register_profile("sluice-fuzz-bounded", max_examples=40, deadline=None, derandomize=False,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.filter_too_much])
settings.register_profile("sluice-fuzz-long", parent=settings.get_profile("sluice-fuzz-bounded"),
                          max_examples=int(os.environ.get("SLUICE_FUZZ_EXAMPLES", "5000")))
FUZZ = settings.get_profile("sluice-fuzz-long" if LONG else "sluice-fuzz-bounded")


def corpus(target: str) -> list[Any]:
    """The seed files of ``target`` as pytest params (bytes), one per file, named by it."""
    folder = CORPUS / target
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    assert files, f"no corpus under {folder}"
    return [pytest.param(p.read_bytes(), id=p.name) for p in files]


# ------------------------------------------------------------------------------------------ JSON values

_SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
            | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=3), max_leaves=8)
WORDS = st.sampled_from(["text", "image_url", "image", "input_audio", "file", "document", "tool_use",
                         "tool_result", "thinking", "redacted_thinking", "refusal", "function", "url", "base64",
                         "json_object", "json_schema", "auto", "none", "required", "any", "tool", "user",
                         "assistant", "system", "developer", "model", "", "x"])


def maybe(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a plausible value, sometimes any JSON (structured, but wrong)."""
    return st.one_of(values, values, values, JSON)


def obj(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """An object whose every field may be left out, plus an odd extra field at times."""
    return st.builds(lambda extra, d: {**extra, **d}, st.dictionaries(WORDS, _SCALARS, max_size=1),
                     st.fixed_dictionaries({}, optional={k: maybe(v) for k, v in fields.items()}))


TEXT = st.text(max_size=30)
PART = st.deferred(lambda: obj(
    type=WORDS, text=TEXT, image_url=obj(url=st.sampled_from(["data:image/png;base64,iVBOR", "https://x/y.png",
                                                              "data:,", "ftp://x", ""]) | TEXT, detail=WORDS),
    source=obj(type=WORDS, media_type=st.sampled_from(["image/png", "image/svg", ""]), data=TEXT, url=TEXT),
    id=TEXT, name=TEXT, input=JSON, tool_use_id=TEXT, content=TEXT | st.lists(PART, max_size=2),
    cache_control=obj(type=WORDS), is_error=st.booleans(), refusal=TEXT, thinking=TEXT, signature=TEXT))
CONTENT = TEXT | st.lists(PART, max_size=3) | st.none()
TOOL_CALL = obj(id=TEXT, type=WORDS, function=obj(name=TEXT, arguments=TEXT | st.just('{"a": 1}')))
CHAT_MESSAGE = obj(role=WORDS, content=CONTENT, name=TEXT, tool_calls=st.lists(TOOL_CALL, max_size=2),
                   tool_call_id=TEXT, refusal=TEXT)
TOOL = obj(type=WORDS, function=obj(name=TEXT, description=TEXT, parameters=JSON, strict=st.booleans()),
           name=TEXT, input_schema=JSON, description=TEXT)
CHAT_REQUEST = obj(
    model=TEXT, messages=st.lists(CHAT_MESSAGE, max_size=4), stream=st.booleans(),
    stream_options=obj(include_usage=st.booleans()), max_tokens=st.integers(-2, 10**6),
    max_completion_tokens=st.integers(-2, 10**6), n=st.integers(-1, 3), temperature=st.floats(-1, 3),
    top_p=st.floats(0, 1), stop=TEXT | st.lists(TEXT, max_size=3), seed=st.integers(),
    tools=st.lists(TOOL, max_size=2), tool_choice=WORDS | obj(type=WORDS, function=obj(name=TEXT)),
    response_format=obj(type=WORDS, json_schema=obj(name=TEXT, schema=JSON, strict=st.booleans())),
    logprobs=st.booleans(), modalities=st.lists(WORDS, max_size=2), functions=JSON,
    prompt=TEXT | st.lists(TEXT), input=TEXT | st.lists(TEXT))
ANTHROPIC_MESSAGE = obj(role=WORDS, content=TEXT | st.lists(PART, max_size=3))
MESSAGES_REQUEST = obj(
    model=TEXT, messages=st.lists(ANTHROPIC_MESSAGE, max_size=4), max_tokens=st.integers(-2, 10**6),
    system=TEXT | st.lists(PART, max_size=2), stream=st.booleans(), tools=st.lists(TOOL, max_size=2),
    tool_choice=obj(type=WORDS, name=TEXT, disable_parallel_tool_use=st.booleans()),
    temperature=st.floats(0, 1), top_p=st.floats(0, 1), top_k=st.integers(), stop_sequences=st.lists(TEXT),
    metadata=obj(user_id=TEXT), thinking=obj(type=WORDS, budget_tokens=st.integers()))


def dumps(value: Any) -> bytes:
    """JSON text of ``value`` (lone surrogates written as escapes, as a client could send them)."""
    return json.dumps(value).encode()


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` in pieces at ``points`` (positions taken modulo its length plus one): bytes as a network splits them."""
    at = sorted({p % (len(data) + 1) for p in points})
    return [data[a:b] for a, b in itertools.pairwise([0, *at, len(data)])]
