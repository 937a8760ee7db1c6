"""Mixture-of-experts choice for `model: "auto"`: which expert's description fits this request.

The default chooser scores each expert's description, name and aliases against the request's
last user message with BM25 (term frequency saturation, inverse document frequency across the
experts), so a word that every expert mentions decides nothing. It costs microseconds and needs
no model; a chooser that asks an LLM or compares embeddings plugs in behind the same protocol.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from corral.config import ExpertConfig

_WORD = re.compile(r"[a-z0-9+#]+")
_STOP = frozenset(
    (
        "a an and are as at be by can do for from how i in is it me my of on or please the this "
        "to what when where which who why with you your"
    ).split()
)


@dataclass(frozen=True)
class RouteChoice:
    expert: str
    method: str  # explicit | alias | auto
    reason: str


class ExpertChooser(Protocol):
    def choose(self, text: str, experts: Sequence[ExpertConfig]) -> RouteChoice: ...


def terms(text: str) -> list[str]:
    out = []
    for word in _WORD.findall(text.lower()):
        if word in _STOP or len(word) < 2:
            continue
        if len(word) > 4 and word.endswith("ies"):
            word = word[:-3] + "y"  # summaries -> summary
        elif len(word) > 4 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
            word = word[:-1]
        out.append(word)
    return out


class LexicalChooser:
    """BM25 over expert descriptions; the first chat expert wins when nothing matches."""

    k1 = 1.2
    b = 0.75

    def __init__(self, experts: Sequence[ExpertConfig]) -> None:
        self._docs = {e.name: Counter(terms(" ".join([e.name, *e.aliases, e.description]))) for e in experts}
        n = len(self._docs) or 1
        df: Counter[str] = Counter()
        for doc in self._docs.values():
            df.update(doc.keys())
        self._idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}
        lengths = [sum(d.values()) for d in self._docs.values()] or [1]
        self._avg_len = sum(lengths) / len(lengths) or 1.0

    def choose(self, text: str, experts: Sequence[ExpertConfig]) -> RouteChoice:
        query = set(terms(text))
        best: tuple[float, str, list[str]] | None = None
        for expert in experts:
            doc = self._docs.get(expert.name)
            if doc is None:
                continue
            length = sum(doc.values())
            score, matched = 0.0, []
            for term in query:
                tf = doc.get(term, 0)
                if not tf:
                    continue
                norm = tf * (self.k1 + 1) / (tf + self.k1 * (1 - self.b + self.b * length / self._avg_len))
                score += self._idf.get(term, 0.0) * norm
                matched.append(term)
            if score > 0 and (best is None or score > best[0]):
                best = (score, expert.name, sorted(matched))
        if best is None:
            default = experts[0].name
            return RouteChoice(default, "auto", f"no expert matched; default {default}")
        score, name, matched = best
        return RouteChoice(name, "auto", f"matched {','.join(matched[:5])} (score {score:.2f})")
