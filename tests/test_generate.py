"""Generation: greedy, sampling filters, repetition penalty, stop tokens and strings, streaming."""

import pytest
import torch

from hybrid_mllm.core.errors import HybridError
from hybrid_mllm.runtime.generate import GenerationConfig, generate, sample_next

VOCAB = 8


class ScriptedDecoder:
    """Logits that favour a scripted token at each step (one row per sample)."""

    def __init__(self, script: list[list[int]]):
        self.script = script

    def _logits(self, t):
        logits = torch.zeros(len(self.script), VOCAB)
        for i, seq in enumerate(self.script):
            logits[i, seq[min(t, len(seq) - 1)]] = 5.0
        return logits

    def prefill(self, embeds, mask):
        return self._logits(0), 0

    def step(self, token_ids, state):
        return self._logits(state + 1), state + 1


def _run(script, **kw):
    decode = kw.pop("decode", None)
    config = GenerationConfig(**kw)
    return generate(ScriptedDecoder(script), torch.zeros(len(script), 3, 4), torch.ones(len(script), 3, dtype=torch.bool),
                    config, decode=decode)


def test_greedy_follows_the_argmax_and_stops_at_a_stop_token():
    result = _run([[1, 2, 3, 7, 4], [5, 7, 1, 1, 1]], max_new_tokens=5, stop_token_ids=(7,))
    assert result.tokens == [[1, 2, 3], [5]]
    assert result.finished == [True, True]


def test_max_new_tokens_bounds_the_answer():
    assert _run([[1, 2, 3, 4, 5]], max_new_tokens=3).tokens == [[1, 2, 3]]


def test_stop_string_is_cut_from_the_text():
    decode = lambda ids: "".join("abcdefgh"[i] for i in ids)  # noqa: E731
    result = _run([[0, 1, 2, 3, 4, 5]], max_new_tokens=6, stop_strings=("cd",), decode=decode)
    assert result.texts == ["ab"] and result.finished == [True]


def test_streaming_reports_every_kept_token():
    seen = []
    generate(ScriptedDecoder([[1, 2, 7]]), torch.zeros(1, 1, 4), torch.ones(1, 1, dtype=torch.bool),
             GenerationConfig(max_new_tokens=5, stop_token_ids=(7,)), on_token=lambda i, t: seen.append((i, t)))
    assert seen == [(0, 1), (0, 2)]


def test_top_k_1_equals_greedy_and_sampling_is_seeded():
    logits = torch.randn(4, 50)
    greedy = sample_next(logits, GenerationConfig(), [[]] * 4, None)
    top1 = sample_next(logits, GenerationConfig(temperature=1.0, top_k=1), [[]] * 4, torch.Generator().manual_seed(0))
    assert torch.equal(greedy, top1)
    a = sample_next(logits, GenerationConfig(temperature=1.0), [[]] * 4, torch.Generator().manual_seed(3))
    b = sample_next(logits, GenerationConfig(temperature=1.0), [[]] * 4, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    draws = {int(sample_next(logits, GenerationConfig(temperature=1.0, top_p=0.7), [[]], torch.Generator().manual_seed(s)))
             for s in range(200)}
    assert draws == {0, 1}  # 0.5 + 0.3 reaches 0.7; 2 and 3 are never drawn


def test_repetition_penalty_discourages_seen_tokens():
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    assert int(sample_next(logits, GenerationConfig(), [[]], None)) == 0
    assert int(sample_next(logits, GenerationConfig(repetition_penalty=1.2), [[0]], None)) == 1


@pytest.mark.parametrize("bad", [{"top_p": 0.0}, {"temperature": -1.0}, {"max_new_tokens": -1}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(HybridError, match="bad generation settings"):
        _run([[1]], **bad)
