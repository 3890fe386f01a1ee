"""Games end to end: the table predictor, the agent loop and its trace, stopping rules re-applied afterwards,
knowledge bases and bad inputs, and MediQ with a tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from cmikit.cip.agent import Agent, AgentConfig, AgentError, apply_stopping
from cmikit.cip.conformal import UniformHistorySampler, calibrate
from cmikit.cip.environments import (
    EnvironmentSetupError,
    MediQ,
    TwentyQuestions,
    load_mediq_jsonl,
    load_mediq_split,
)
from cmikit.cip.knowledge import NO, YES, KnowledgeBase, KnowledgeBaseError, Turn, normalize_answer
from cmikit.cip.predictors import (
    LLMPredictor,
    MediQPrompt,
    PredictorError,
    TablePredictor,
    TwentyQuestionsPrompt,
)


@pytest.fixture(scope="module")
def awa2(shared_data):
    return KnowledgeBase.load(shared_data / "awa2" / "twenty_questions_awa2_20.json")


def test_table_predictor_is_exact_bayes():
    kb = KnowledgeBase.from_dict({"questions": ["q1", "q2"], "classes": ["a", "b", "c"],
                                  "answers": {"a": [1, 1], "b": [1, 0], "c": [0, 0]}})
    pred = TablePredictor(kb, noise=0.1)
    p = pred.predict([(Turn("q1", YES),), (Turn("q1", YES), Turn("q2", NO)), ()])
    # likelihoods of "q1 yes": .9, .9, .1 -> normalised
    assert p[0] == pytest.approx(np.array([0.9, 0.9, 0.1]) / 1.9)
    # then "q2 no": .9*.1, .9*.9, .1*.9
    assert p[1] == pytest.approx(np.array([0.09, 0.81, 0.09]) / 0.99)
    assert p[2] == pytest.approx([1 / 3] * 3)
    # unknown answers carry no information
    assert pred.predict([(Turn("q1", "I don't know."),)])[0] == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize("criterion", ["cip-code", "cip-paper", "ip"])
def test_full_awa2_game_with_the_table_predictor_finds_the_hidden_class(awa2, criterion):
    pred = TablePredictor(awa2, noise=0.05)
    th = calibrate(pred, UniformHistorySampler.from_knowledge_base(awa2), 0.1, 50, 21, seed=0, min_length=0,
                   progress=False)
    env = TwentyQuestions(awa2)
    agent = Agent(env, pred, th, AgentConfig(criterion=criterion, max_queries=20, est_source="posterior",
                                             tie_break="random"))
    for name in ("zebra", "dolphin", "moose"):
        item = awa2.classes.index(name)
        trace = agent.play(item, seed=item)
        assert trace["prediction"] == name and trace["correct"]
        asked = [q for q, _ in trace["history"]]
        assert len(set(asked)) == len(asked)  # asked questions leave the bank
        assert all(a == awa2.answer(item, q) for q, a in trace["history"])
        # the trace has every candidate's score at every step
        first = trace["steps"][0]
        assert len(first["candidates"]) == 85 and set(first["candidates"]["Is the animal black?"]) >= {
            "cip-paper", "cip-code", "ip", "mean-set-size"}
        assert first["question"] == min(first["candidates"], key=lambda q: first["candidates"][q][criterion]) or \
            first["candidates"][first["question"]][criterion] == pytest.approx(
                min(c[criterion] for c in first["candidates"].values()))


def test_singleton_stop_online_equals_the_rule_reapplied_to_the_trace(awa2):
    pred = TablePredictor(awa2, noise=0.05)
    th = calibrate(pred, UniformHistorySampler.from_knowledge_base(awa2), 0.1, 30, 21, seed=1, min_length=0,
                   progress=False)
    env = TwentyQuestions(awa2)
    full = Agent(env, pred, th, AgentConfig(criterion="cip-code", max_queries=20)).play(3, seed=5)
    online = Agent(env, pred, th, AgentConfig(criterion="cip-code", max_queries=20, stop_singleton=True)).play(3, seed=5)
    assert online["stop_reason"] == "singleton"
    assert apply_stopping(full, singleton=True) == online["n_queries"] < full["n_queries"]
    # epsilon stopping afterwards: a huge epsilon stops at once, zero never
    assert apply_stopping(full, epsilon=1e9) == 0
    assert apply_stopping(full, epsilon=0.0) == 20
    eps = full["steps"][2]["score_std"] * 1.0001
    k_eps = apply_stopping(full, epsilon=eps)
    assert k_eps <= 2
    online_eps = Agent(env, pred, th, AgentConfig(criterion="cip-code", max_queries=20, stop_epsilon=eps)).play(3, seed=5)
    assert online_eps["n_queries"] == k_eps and online_eps["stop_reason"] == "spread"


def test_random_baseline_and_missing_thresholds(awa2):
    pred = TablePredictor(awa2)
    env = TwentyQuestions(awa2)
    trace = Agent(env, pred, None, AgentConfig(criterion="random", max_queries=5)).play(0, seed=0)
    assert trace["n_queries"] == 5 and "set" not in trace["steps"][0]
    with pytest.raises(AgentError, match="needs conformal thresholds"):
        Agent(env, pred, None, AgentConfig(criterion="cip-paper"))
    with pytest.raises(AgentError, match="needs an LLM querier"):
        Agent(env, pred, None, AgentConfig(criterion="direct"))


def test_shipped_knowledge_base_is_big_enough_and_separable():
    kb = KnowledgeBase.load()
    assert len(kb.classes) >= 20 and len(kb.questions) >= 30
    assert len({tuple(row) for row in kb.table.tolist()}) == len(kb.classes)  # every item can be told apart


def test_bad_knowledge_bases_and_answers(tmp_path):
    with pytest.raises(KnowledgeBaseError, match=r"at classes: found \[\]; must have at least 1 item"):
        KnowledgeBase.from_dict({"questions": ["q"], "classes": [], "answers": {}})
    with pytest.raises(KnowledgeBaseError, match="the key 'answers' is required"):
        KnowledgeBase.from_dict({"questions": ["q"], "classes": ["a", "b"]})
    with pytest.raises(KnowledgeBaseError, match=r"at answers.a\[1\]: found 2; must be 0, 1 or null"):
        KnowledgeBase.from_dict({"questions": ["q", "r"], "classes": ["a", "b"], "answers": {"a": [1, 2]}})
    with pytest.raises(KnowledgeBaseError, match="answers of 'b' must be 2 values of 0, 1 or null"):
        KnowledgeBase.from_dict({"questions": ["q", "r"], "classes": ["a", "b"], "answers": {"a": [1, 0],
                                                                                           "b": [1]}})
    with pytest.raises(KnowledgeBaseError, match="not found"):
        KnowledgeBase.load(tmp_path / "nope.json")
    with pytest.raises(KnowledgeBaseError, match="answer y \\(yes\\), n \\(no\\) or u"):
        normalize_answer("maybe")
    assert normalize_answer(" Y ") == YES and normalize_answer("no") == NO
    kb = KnowledgeBase.load()
    with pytest.raises(EnvironmentSetupError, match="LLM answerer"):
        TwentyQuestions(kb).answer(0, "Is it from Mars?")


def test_colliding_label_first_tokens_are_refused_with_a_fix():
    from cmikit.harness.backends import TransformersBackend
    from cmikit.harness.testing import tiny_causal_lm, tiny_tokenizer

    backend = TransformersBackend(tiny_causal_lm(), tiny_tokenizer())
    labels = ["giraffe", "giant panda", "zebra"]
    with pytest.raises(PredictorError, match="giraffe' and 'giant panda'.*label_style='letters'"):
        LLMPredictor(backend, TwentyQuestionsPrompt(labels))
    pred = LLMPredictor(backend, TwentyQuestionsPrompt(labels, label_style="letters"))
    p = pred.predict([(), (Turn("Is it big?", YES),)])
    assert p.shape == (2, 3) and np.allclose(p.sum(1), 1)


# ------------------------------------------------------------------------------------------------ MediQ
def test_mediq_loaders_read_the_shared_files(shared_data):
    cases = load_mediq_jsonl(shared_data / "mediq" / "all_dev_good.jsonl", limit=50)
    assert len(cases) == 50 and all(c.answer_idx in c.options for c in cases)
    assert cases[0].initial_info.startswith("A 21-year-old") and not cases[0].facts[0][0].isdigit()
    sizes = {sp: sum(len(load_mediq_split(shared_data / "mediq", sp, 0, r)) for r in ("train", "cal", "test"))
             for sp in ("internal_medicine", "pediatrics", "neurology")}
    assert sizes == {"internal_medicine": 290, "pediatrics": 217, "neurology": 108}  # the paper's 615 cases
    with pytest.raises(EnvironmentSetupError, match="Specialties available"):
        load_mediq_split(shared_data / "mediq", "cardiology", 0, "test")


def test_mediq_game_runs_with_a_tiny_model(shared_data):
    from cmikit.harness.backends import TransformersBackend
    from cmikit.harness.testing import tiny_causal_lm, tiny_tokenizer

    data = shared_data / "mediq"
    est = load_mediq_split(data, "neurology", 0, "train")[:6]
    cal = load_mediq_split(data, "neurology", 0, "cal")[:6]
    case = load_mediq_split(data, "neurology", 0, "test")[0]
    backend = TransformersBackend(tiny_causal_lm(), tiny_tokenizer(), batch_size=32)
    pred = LLMPredictor(backend, MediQPrompt())
    env = MediQ(est)

    def draw(rng):
        c = cal[int(rng.integers(len(cal)))]
        return env.label_of(c), c.context, c.queries

    def answer(label, ctx, q):
        c = next(c for c in cal if c.question == ctx["question"])
        return c.facts[c.queries.index(q)]

    th = calibrate(pred, UniformHistorySampler(draw, answer, replacement=True), 0.2, 6, 3, min_length=0, progress=False)
    agent = Agent(env, pred, th, AgentConfig(criterion="cip-code", alpha=0.2, n_est=2, max_queries=2))
    trace = agent.play(case, seed=0)
    assert trace["n_queries"] == 2 and len(trace["steps"]) == 3
    assert all(a in case.facts for _, a in trace["history"])  # answers are the patient's own facts
    assert len(trace["steps"][0]["candidates"]) == len(case.facts)
    assert trace["true_label"] == case.answer_idx and trace["prediction"] in "ABCD"


def test_mediq_eval_pipeline_with_a_tiny_model(shared_data, tmp_path):
    import json

    from cmikit.cip.evaluate import CIPConfig, run_eval
    from cmikit.harness.backends import TransformersBackend
    from cmikit.harness.testing import tiny_causal_lm, tiny_tokenizer

    backend = TransformersBackend(tiny_causal_lm(), tiny_tokenizer(), batch_size=32)
    cfg = CIPConfig(task="mediq", mediq_dir=str(shared_data / "mediq"), specialty="neurology", n_games=2,
                    max_queries=1, n_cal=4, alpha=0.25, n_est=2, methods=["cip-code", "random"], alphas=[0.25, 0.5],
                    out_dir=str(tmp_path / "mediq"), progress=False)
    summary = run_eval(cfg, backend=backend)
    assert set(summary["per_method"]) == {"cip-code", "random"}
    records = [json.loads(line) for line in (tmp_path / "mediq" / "records.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["trace"]["n_queries"] == 1 for r in records)
    assert json.loads((tmp_path / "mediq" / "thresholds" / "seed0.json").read_text())["n_cal"] == 4


def test_mediq_estimation_patients_answer_from_their_own_facts():
    from cmikit.cip.environments import CANNOT_ANSWER, MediQCase, fact_to_question

    test_case = MediQCase("t", "Q?", {"A": "a", "B": "b", "C": "c", "D": "d"}, "A", "init",
                          ["Patient has a fever of 39 C.", "Patient reports a painful left knee."])
    other = MediQCase("o", "Q2?", {"A": "a", "B": "b", "C": "c", "D": "d"}, "B", "init",
                      ["Patient reports a painful right knee for two days.", "Blood pressure is normal."])
    env = MediQ([other])
    q_knee, q_fever = test_case.queries[1], test_case.queries[0]
    assert q_knee == fact_to_question(test_case.facts[1])
    assert env.answer(test_case, q_knee) == test_case.facts[1]  # the test patient: its own fact
    assert env.answer(other, q_knee) == other.facts[0]  # another patient: its closest fact
    assert env.answer(other, q_fever) == CANNOT_ANSWER
    with pytest.raises(EnvironmentSetupError, match="D_est"):
        env.estimation_items(np.random.default_rng(0), 2, "posterior", np.ones(4) / 4)
