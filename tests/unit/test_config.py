from __future__ import annotations

from pathlib import Path

import pytest

from corral.config import default_config, load_config, parse_config
from corral.errors import ConfigError


def test_default_config_has_always_loaded_fallback() -> None:
    config = default_config()
    fallback = config.expert("fallback")
    assert fallback.always_loaded
    assert "fallback" in config.expert("general").fallback


def test_default_embeddings_come_from_minilm() -> None:
    embed = default_config().expert("embed")
    assert (embed.kind, embed.model, embed.context) == ("embedding", "all-minilm-l6-v2", 512)


def test_empty_file_means_embedded_default() -> None:
    assert [e.name for e in parse_config("").experts] == [e.name for e in default_config().experts]


def test_valid_file_parses() -> None:
    config = parse_config(
        """
version: 1
server:
  port: 9000
experts:
  - name: coder
    model: gemma3-270m
    description: python code programming
  - name: chat
    model: gemma3-270m
    fallback: [coder]
"""
    )
    assert config.server.port == 9000
    assert config.expert("chat").fallback == ["coder"]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("experts:\n  - name: a\n    model: m\n    replcas: 2\n", 4, "unknown setting"),
        ("experts:\n  - name: a\n    model: m\n    slots: -1\n", 4, "greater than or equal to 1"),
        ("experts:\n  - name: a\n", 2, "required setting is missing"),
        ("experts:\n  - name: a\n    model: m\n    fallback: [zzz]\n", 4, "not an expert"),
        ("server:\n  port: 99999\nexperts: []\n", 2, "less than or equal"),
        ("experts: [\n", 2, "not valid YAML"),
    ],
)
def test_errors_name_line_and_fix(text: str, line: int, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="corral.yaml")
    assert f"corral.yaml:{line}" in info.value.message
    assert fragment in info.value.message


def test_duplicate_names_rejected() -> None:
    with pytest.raises(ConfigError, match="used twice"):
        parse_config("experts:\n  - {name: a, model: m}\n  - {name: b, model: m, aliases: [a]}\n")


def test_newer_version_refused_with_advice() -> None:
    with pytest.raises(ConfigError, match="upgrade corral"):
        parse_config("version: 7\nexperts: []\n")


def test_fallback_kind_must_match() -> None:
    with pytest.raises(ConfigError, match="cannot fall back"):
        parse_config(
            "experts:\n  - {name: a, model: m, fallback: [e]}\n  - {name: e, model: m, kind: embedding}\n"
        )


def test_api_key_env_needs_a_url() -> None:
    with pytest.raises(ConfigError, match=r"corral.yaml:2.*api_key_env but no url"):
        parse_config("experts:\n  - {name: a, model: m, api_key_env: KEY}\n", source="corral.yaml")


def test_remote_model_names_with_slashes_are_not_paths(tmp_path: Path) -> None:
    path = tmp_path / "corral.yaml"
    path.write_text(
        "experts:\n  - {name: a, model: gemma3-270m}\n"
        "  - {name: big, model: meta-llama/Llama-3.1-8B-Instruct, url: 'http://h:8000/v1'}\n"
    )
    assert load_config(path).expert("big").model == "meta-llama/Llama-3.1-8B-Instruct"
