"""The LLM predictor on the real embedded model: label tokens, one batched call equals one forward per
posterior, and the open-query / answerer parsing helpers."""

from __future__ import annotations

import numpy as np
import pytest

from cmikit.cip.environments import parse_questions
from cmikit.cip.knowledge import NO, YES, KnowledgeBase, Turn
from cmikit.cip.predictors import LLMPredictor, TwentyQuestionsPrompt


def test_parse_questions_json_and_fallback():
    assert parse_questions('Sure! {"questions": ["Is it big?", "Does it fly?", "no question"]}') == [
        "Is it big?", "Does it fly?"]
    assert parse_questions("1. Is it alive?\n2. Can it swim?") == ["Is it alive?", "Can it swim?"]
    assert parse_questions("I have no idea") == []


@pytest.mark.embedded
def test_llm_predictor_batched_step_matches_one_forward_per_posterior(embedded_backend):
    kb = KnowledgeBase.load()
    pred = LLMPredictor(embedded_backend, TwentyQuestionsPrompt(kb.classes))
    # SmolLM2's BPE folds the space into each item's first token, and all 24 differ
    assert len(set(pred.label_token_ids)) == len(kb.classes)
    history = (Turn("Is it an animal?", YES), Turn("Does it have feathers?", YES))
    rows = [history + (Turn(q, a),) for q in kb.questions[5:8] for a in (YES, NO)]
    batched = pred.predict(rows)
    assert batched.shape == (6, 24) and np.allclose(batched.sum(1), 1, atol=1e-5)
    reuse, bs = embedded_backend.prefix_reuse, embedded_backend.batch_size
    embedded_backend.prefix_reuse, embedded_backend.batch_size = False, 1
    try:
        single = np.stack([pred.predict([r])[0] for r in rows[:2]])
    finally:
        embedded_backend.prefix_reuse, embedded_backend.batch_size = reuse, bs
    assert np.abs(single - batched[:2]).max() < 1e-4
    # the answer matters: different answers give different posteriors
    assert np.abs(batched[0] - batched[1]).max() > 1e-4


class ScriptedBackend:
    """A stand-in LM: ``generate`` answers from simple rules, ``next_token_logprobs`` favours the label whose
    name appears most often in the prompt (so answers move the posterior)."""

    def __init__(self, tokenizer, labels):
        self.tokenizer, self.labels, self.prompts = tokenizer, labels, []

    def render(self, prompt):
        return "\n".join(m["content"] for m in prompt)

    def generate(self, prompts, sampling=None):
        outs = []
        for p in prompts:
            text = self.render(p)
            self.prompts.append(text)
            if "Propose" in text:
                n = text.count("Q:")
                outs.append('{"questions": ["Is it number ' + str(n) + '?", "Is it round ' + str(n)
                            + '?", "Is it a zebra?"]}')
            else:  # the answerer: "yes" when the item's name has an 'a'
                item = text.split("'")[1]
                outs.append("Yes" if "a" in item else "No, it is not")
        return outs

    def next_token_logprobs(self, prompts, candidate_token_ids):
        import torch

        rows = []
        for p in prompts:
            text = self.render(p)
            rows.append([float(text.count("Yes")) * (1.0 if "a" in lab else -1.0) for lab in self.labels])
        return torch.log_softmax(torch.tensor(rows), dim=-1)


def test_open_query_set_and_direct_prompting_with_an_llm_answerer():
    from cmikit.cip.agent import Agent, AgentConfig
    from cmikit.cip.conformal import ConformalThresholds
    from cmikit.cip.environments import LLMAnswerer, LLMQuerier, TwentyQuestions
    from cmikit.harness.testing import tiny_tokenizer

    kb = KnowledgeBase.from_dict({"questions": ["Is it big?"], "classes": ["cat", "dog", "bee"],
                                  "answers": {"cat": [0], "dog": [0], "bee": [0]}})
    backend = ScriptedBackend(tiny_tokenizer(), kb.classes)
    pred = LLMPredictor(backend, TwentyQuestionsPrompt(kb.classes))
    querier = LLMQuerier(backend, kb.classes, max_tries=2)
    answerer = LLMAnswerer(backend, yes_no=True)
    env = TwentyQuestions(kb, answerer=answerer, querier=querier, n_candidates=2)
    th = ConformalThresholds(0.2, {k: [-0.3] * 9 for k in range(4)}, kb.classes)
    trace = Agent(env, pred, th, AgentConfig(criterion="cip-code", alpha=0.2, max_queries=3)).play(0, seed=0)
    asked = [q for q, _ in trace["history"]]
    assert len(asked) == 3 and all("zebra" not in q for q in asked)  # questions naming an item are dropped
    assert all(len(s["candidates"]) == 2 for s in trace["steps"][:3])  # m = 2 proposals per step
    assert {a for _, a in trace["history"]} == {YES}  # 'cat' has an 'a': the answerer says yes
    assert answerer.cache[("dog", asked[0])] == NO  # estimation items were answered too, then cached
    direct = Agent(env, pred, th, AgentConfig(criterion="direct", alpha=0.2, max_queries=2), querier=querier)
    trace = direct.play(2, seed=0)
    assert trace["n_queries"] == 2 and trace["history"][0][1] == NO  # 'bee' has no 'a'
