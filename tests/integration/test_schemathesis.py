"""Schemathesis against corral's own OpenAPI document: for every operation, generated requests
(valid and invalid bodies, parameters) to a running gateway over FakeBackends, with an admin key,
must all get an answer below 500. CORRAL_FUZZ_EXAMPLES sets the examples per operation and mode;
bench/fuzz.py runs thousands of cases with schemathesis's CLI."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from corral.gateway.limits import RateLimitConfig
from corral.testing.gateway_server import FakeGateway, fake_gateway, serve_in_thread

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("CORRAL_FUZZ_EXAMPLES", "10"))
# Server-sent event streams never end by design: nothing to fuzz in a request without a body.
NEVER_ENDING = r"/stream$"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FakeGateway]]:
    fake = fake_gateway(Path(tmp_path_factory.mktemp("fuzz-home")), rate_limit=RateLimitConfig(enabled=False))
    with serve_in_thread(fake) as url:
        yield url, fake


def _fuzz(
    operation: Any,
    mode: GenerationMode,
    url: str,
    headers: dict[str, str],
    sent: Counter[str],
    failures: list[str],
) -> None:
    """EXAMPLES generated requests to one operation; 5xx answers are collected, not raised (no
    shrinking: the curl line reproduces the case)."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def check(case: schemathesis.Case) -> None:
        sent[operation.label] += 1
        response = case.call(base_url=url, headers=headers, timeout=60)
        if response.status_code >= 500:
            failures.append(
                f"{operation.label} -> {response.status_code}: {response.text[:300]}\n"
                f"  reproduce: {case.as_curl_command(headers)}"
            )

    try:
        check()
    except Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE, operation.label  # nothing to get wrong: no inputs


def test_no_request_gets_a_server_error(served: tuple[str, FakeGateway]) -> None:
    url, fake = served
    schema = schemathesis.openapi.from_url(url + "/openapi.json").exclude(path_regex=NEVER_ENDING)
    headers = {"authorization": f"Bearer {fake.admin}"}
    failures: list[str] = []
    sent: Counter[str] = Counter()
    for result in schema.get_all_operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(result.ok(), mode, url, headers, sent, failures)
    print(f"schemathesis: {sum(sent.values())} requests over {len(sent)} operations")
    assert len(sent) >= 30, sorted(sent)  # the whole API was reached, not only a part
    assert not failures, "\n".join(failures[:20])
