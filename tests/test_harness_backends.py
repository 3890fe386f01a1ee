"""The transformers backend against hand computations on a tiny model, and the vLLM backend with a fake engine."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cmikit.harness.backends import (
    BackendError,
    SamplingParams,
    TransformersBackend,
    VLLMBackend,
    first_token_ids,
    render_prompt,
    truncate_at_stop,
)
from cmikit.harness.testing import tiny_causal_lm, tiny_tokenizer

HEADER = "You are playing a guessing game. The history so far follows. Q: "


@pytest.fixture(scope="module")
def tiny():
    return tiny_causal_lm(), tiny_tokenizer()


def manual_logprob(model, tok, prompt_text: str, completion: str) -> float:
    p = tok(prompt_text, add_special_tokens=False)["input_ids"]
    c = tok(completion, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p + c])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    return sum(lp[len(p) - 1 + j, t].item() for j, t in enumerate(c))


PROMPTS = [
    HEADER + "a",
    HEADER + "does it fly?",
    "short",
    HEADER + "is it big? A: yes. Q: is it grey?",
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "It is"}],
]
COMPLETIONS = [" yes", " no, it does not", "er", " yes", " red"]


@pytest.mark.parametrize("batch_size", [1, 2, 8])
@pytest.mark.parametrize("prefix_reuse", [True, False])
def test_sequence_logprobs_match_manual_forward(tiny, batch_size, prefix_reuse):
    model, tok = tiny
    backend = TransformersBackend(model, tok, batch_size=batch_size, prefix_reuse=prefix_reuse, min_prefix_tokens=4)
    sums, counts = backend.sequence_logprobs(PROMPTS, COMPLETIONS)
    for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS)):
        expected = manual_logprob(model, tok, render_prompt(tok, p), c)
        assert sums[i].item() == pytest.approx(expected, abs=1e-5)
        assert counts[i].item() == len(tok(c, add_special_tokens=False)["input_ids"])


def test_sequence_logprobs_prefix_reaching_into_completions(tiny):
    # Identical prompts and completions sharing their first tokens: the shared prefix extends past the prompt.
    model, tok = tiny
    backend = TransformersBackend(model, tok, batch_size=8, min_prefix_tokens=4)
    prompts = [HEADER] * 3
    comps = ["abc", "abd", "xyz"]
    sums, _ = backend.sequence_logprobs(prompts, comps)
    for s, c in zip(sums, comps):
        assert s.item() == pytest.approx(manual_logprob(model, tok, HEADER, c), abs=1e-5)


def test_next_token_logprobs_normalised_restriction(tiny):
    model, tok = tiny
    backend = TransformersBackend(model, tok, batch_size=4, min_prefix_tokens=4)
    cand = first_token_ids(tok, ["yes", "no", "maybe"])
    out = backend.next_token_logprobs(PROMPTS, cand)
    assert out.shape == (len(PROMPTS), 3)
    assert torch.allclose(out.exp().sum(-1), torch.ones(len(PROMPTS)), atol=1e-6)
    for i, p in enumerate(PROMPTS):
        ids = tok(render_prompt(tok, p), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            full = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].double(), -1)
        restricted = full[cand] / full[cand].sum()
        assert torch.allclose(out[i].exp().double(), restricted, atol=1e-6)


def test_prefix_path_equals_plain_path_and_saves_tokens(tiny):
    model, tok = tiny
    histories = [HEADER + f"q{i}? A: {'yes' if i % 2 else 'no'}. Which?" for i in range(6)]
    cand = [[5, 6, 7]] * 6
    seen_tokens = []
    handle = model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen_tokens.append(kwargs["input_ids"].numel()), with_kwargs=True
    )
    try:
        fast = TransformersBackend(model, tok, batch_size=6, min_prefix_tokens=4).next_token_logprobs(histories, cand)
        fast_tokens = sum(seen_tokens)
        seen_tokens.clear()
        plain = TransformersBackend(model, tok, batch_size=6, prefix_reuse=False).next_token_logprobs(histories, cand)
        plain_tokens = sum(seen_tokens)
    finally:
        handle.remove()
    assert torch.allclose(fast, plain, atol=1e-5)
    assert fast_tokens < plain_tokens / 2  # the shared header was run once, not six times


def test_left_padded_generation_matches_unbatched(tiny):
    model, tok = tiny
    backend = TransformersBackend(model, tok, batch_size=8)
    prompts = ["ab", "a much longer prompt here", [{"role": "user", "content": "hi"}]]
    batched = backend.generate(prompts, SamplingParams(max_new_tokens=6))
    single = [TransformersBackend(model, tok, batch_size=1).generate([p], SamplingParams(max_new_tokens=6))[0]
              for p in prompts]
    assert batched == single
    assert all(isinstance(t, str) for t in batched)


def test_render_chat_prefill_and_generation_prompt():
    tok = tiny_tokenizer()
    gen = render_prompt(tok, [{"role": "user", "content": "hi"}])
    prefill = render_prompt(tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Ok"}])
    assert gen.endswith("<|assistant|>")
    assert prefill.endswith("<|assistant|>Ok")  # continued, not closed
    with pytest.raises(BackendError, match="role"):
        render_prompt(tok, [{"text": "no role"}])


def test_first_token_ids_collisions_named():
    tok = tiny_tokenizer()
    with pytest.raises(BackendError, match="'dog' and 'duck'.*option letters"):
        first_token_ids(tok, ["cat", "dog", "duck"])
    assert len(set(first_token_ids(tok, ["A", "B", "C"]))) == 3


def test_bad_inputs(tiny):
    model, tok = tiny
    backend = TransformersBackend(model, tok)
    with pytest.raises(BackendError, match="2 prompts but 1 completions"):
        backend.sequence_logprobs(["a", "b"], ["x"])
    with pytest.raises(BackendError, match="candidate"):
        backend.next_token_logprobs(["a"], [10**6])
    with pytest.raises(BackendError, match="top_p"):
        SamplingParams(top_p=0)
    assert truncate_at_stop("answer\nQ: next", ["\nQ:"]) == "answer"


# ------------------------------------------------------------------------------------------------ vLLM fake
class FakeLogprob(SimpleNamespace):
    pass


class FakeEngine:
    """Mimics the parts of ``vllm.LLM`` the backend uses, computing answers from a tiny HF model."""

    def __init__(self, model, tok):
        self.model, self.tok = model, tok
        self.calls = []

    def get_tokenizer(self):
        return self.tok

    @staticmethod
    def sampling_params_factory(**kwargs):
        return SimpleNamespace(**kwargs)

    def _logprobs(self, ids):
        with torch.no_grad():
            return torch.log_softmax(self.model(input_ids=torch.tensor([ids])).logits[0].double(), -1)

    def generate(self, requests, params, use_tqdm=False):
        self.calls.append(params)
        outs = []
        for req in requests:
            ids = req["prompt_token_ids"]
            lp = self._logprobs(ids)
            prompt_lps = [None] + [{ids[i]: FakeLogprob(logprob=lp[i - 1, ids[i]].item())} for i in range(1, len(ids))]
            last = lp[-1]
            allowed = getattr(params, "allowed_token_ids", None)
            if allowed:  # vLLM masks disallowed tokens before the softmax ("processed" log-probs)
                masked = torch.full_like(last, float("-inf"))
                masked[allowed] = last[allowed]
                last = torch.log_softmax(masked, -1)
            k = getattr(params, "logprobs", None) or 1
            top = torch.topk(last, k)
            step = {int(t): FakeLogprob(logprob=float(v)) for v, t in zip(top.values, top.indices)}
            text = self.tok.decode([int(top.indices[0])] * 3) + "STOP tail"
            outs.append(SimpleNamespace(prompt_logprobs=prompt_lps,
                                        outputs=[SimpleNamespace(text=text, logprobs=[step])]))
        return outs


def test_vllm_backend_with_fake_engine_matches_transformers(tiny):
    model, tok = tiny
    engine = FakeEngine(model, tok)
    vb = VLLMBackend(engine=engine)
    tb = TransformersBackend(model, tok, min_prefix_tokens=4)
    s_v, n_v = vb.sequence_logprobs(PROMPTS, COMPLETIONS)
    s_t, n_t = tb.sequence_logprobs(PROMPTS, COMPLETIONS)
    assert torch.allclose(s_v, s_t, atol=1e-4) and torch.equal(n_v, n_t)
    assert engine.calls[-1].prompt_logprobs == 0 and engine.calls[-1].max_tokens == 1
    cand = [5, 6, 7]
    assert torch.allclose(vb.next_token_logprobs(PROMPTS, cand), tb.next_token_logprobs(PROMPTS, cand), atol=1e-5)
    assert engine.calls[-1].allowed_token_ids == cand
    texts = vb.generate(["hello"], SamplingParams(max_new_tokens=4, stop=["STOP"]))
    assert texts[0] and "STOP" not in texts[0]
    assert engine.calls[-1].max_tokens == 4 and engine.calls[-1].stop == ["STOP"]


def test_vllm_missing_gives_install_hint(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_vllm(name, *args, **kwargs):
        if name == "vllm":
            raise ImportError("No module named 'vllm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_vllm)
    with pytest.raises(BackendError, match=r"cmikit\[vllm\]"):
        VLLMBackend(model="some/model")
