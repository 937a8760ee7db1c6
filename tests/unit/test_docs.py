"""The docs are tested: every corral.yaml example in docs/ loads (or fails, if it says it should)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from corral.config import parse_config
from corral.errors import ConfigError

DOCS = Path(__file__).resolve().parents[2] / "docs"
EXAMPLES = [
    pytest.param(block, id=f"{doc.name}#{i}")
    for doc in sorted(DOCS.glob("*.md"))
    for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", doc.read_text(), flags=re.S))
    if "experts:" in block
]


@pytest.mark.parametrize("block", EXAMPLES)
def test_config_examples_in_docs(block: str) -> None:
    if block.startswith("# an invalid file"):
        with pytest.raises(ConfigError):
            parse_config(block)
    else:
        assert parse_config(block).experts


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 3
