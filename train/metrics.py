"""VQA answer scoring: exact match after normalisation, and ANLS (the DocVQA metric)."""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (the usual VQA normalisation)."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def exact_match(prediction: str, answers: list[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls(prediction: str, answers: list[str], threshold: float = 0.5) -> float:
    """Average Normalised Levenshtein Similarity for one question (Biten et al., 2019):
    max over answers of 1 - NL, set to 0 when NL >= threshold (case-insensitive, trimmed)."""
    best = 0.0
    pred = " ".join(prediction.lower().split())
    for answer in answers:
        gold = " ".join(answer.lower().split())
        length = max(len(pred), len(gold))
        nl = levenshtein(pred, gold) / length if length else 0.0
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best
