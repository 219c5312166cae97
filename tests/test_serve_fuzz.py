"""An API fuzzer: schemathesis reads the server's own OpenAPI document (/openapi.json) and sends
bodies that fit it and bodies that break it, streamed or not, to every route, on the transformers
engine and on llama.cpp. No answer may be a 5xx, none may hang, and /health answers after.
Bounded in examples and time; the counts are printed (pytest -s) for the record."""
import collections
import json
import time
import urllib.request

import pytest
from serve_fixtures import *  # noqa: F401,F403

KEY = "fuzz-key"
EXAMPLES = 40  # per generation mode (schema-conforming, schema-breaking) and engine
BUDGET_S = 10.0  # per engine; hypothesis stops drawing past it


def _fuzz(engine, label: str) -> collections.Counter:
    schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis (the test extra)")
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.generation import GenerationMode

    statuses: collections.Counter = collections.Counter()
    auth = {"Authorization": f"Bearer {KEY}"}
    with serving(engine, api_key=KEY, max_tokens_cap=8, max_queue=2, timeout_s=20) as base:
        schema = schemathesis.openapi.from_url(base + "/openapi.json", headers=auth)
        start = time.monotonic()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=schema.as_strategy(generation_mode=mode))
            def probe(case):
                if time.monotonic() - start > BUDGET_S:
                    return
                response = case.call(base_url=base, headers=auth, timeout=30)
                statuses[response.status_code] += 1
                assert response.status_code < 500, (case.method, case.path, case.body, response.status_code, response.text[:300])

            probe()
        assert json.load(urllib.request.urlopen(base + "/health", timeout=10))["status"] == "ok"
    print(f"fuzz {label}: {sum(statuses.values())} requests in {time.monotonic() - start:.1f}s, statuses {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) >= 10 and any(200 <= s < 300 for s in statuses) and any(400 <= s < 500 for s in statuses)
    return statuses


def test_fuzz_transformers_engine(hooked_engine):
    hooked_engine.hooks.reset()
    _fuzz(hooked_engine, "transformers")


def test_fuzz_llama_cpp_engine(gguf_f32, llama_cpp):
    from megactllm.serve import load_engine

    _fuzz(load_engine(str(gguf_f32), threads=1, name="tiny-zh"), "llama.cpp")
