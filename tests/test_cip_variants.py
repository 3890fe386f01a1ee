"""Issue 8: the game as a person plays it, the empty-set trap, the miscalibration wrappers, thresholds that do
not fit, and the reference-parity switches."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from cmikit.cip.agent import Agent, AgentConfig
from cmikit.cip.cli import play
from cmikit.cip.conformal import ConformalThresholds, UniformHistorySampler
from cmikit.cip.criteria import DEFAULT_CRITERION, draw_estimation_labels
from cmikit.cip.environments import TwentyQuestions
from cmikit.cip.knowledge import KnowledgeBase
from cmikit.cip.miscalibration import (
    FirstLabelBiasPredictor,
    TemperedPredictor,
    expected_calibration_error,
    noisy_world,
    predictor_ece,
)
from cmikit.cip.predictors import TablePredictor
from cmikit.harness.errors import CmikitError, ThresholdsError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CMIKIT_CACHE", str(tmp_path / "cache"))


class Player(io.StringIO):
    """Answers every question truthfully from the knowledge base for ``item``; end of input after ``eof_after``."""

    def __init__(self, kb: KnowledgeBase, item: str, out: io.StringIO, eof_after: int | None = None) -> None:
        super().__init__()
        self.kb, self.label, self.out, self.eof_after, self.n = kb, kb.classes.index(item), out, eof_after, 0

    def readline(self, *args) -> str:
        if self.eof_after is not None and self.n >= self.eof_after:
            return ""  # Ctrl-D
        prompt = self.out.getvalue().rsplit("\n", 1)[-1]
        if prompt.startswith("Is it a"):  # a guess is a question
            return ("y" if prompt.split(" ", 3)[3].rsplit("? [", 1)[0] == self.kb.classes[self.label] else "n") + "\n"
        question = self.out.getvalue().rsplit("\n", 1)[-1].split(": ", 1)[1].rsplit(" [", 1)[0]
        self.n += 1
        return ("y" if self.kb.answer(self.label, question) == "Yes." else "n") + "\n"


@pytest.mark.parametrize("item", ["umbrella", "salmon", "guitar"])
def test_play_finds_the_item_within_the_limit_and_never_answers_with_an_empty_set(tmp_path, item):
    kb = KnowledgeBase.load()
    out = io.StringIO()
    player = Player(kb, item, out)
    assert play(["--transcript", str(tmp_path / "t.json"), "--progress", "false"], stdin=player, stdout=out) == 0
    text = out.getvalue()
    assert f" {item}? [y/n]" in text and f"Got it: {item}" in text
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["criterion"] == DEFAULT_CRITERION and saved["predictor"].startswith("table")
    assert saved["prediction"] == item and len(saved["turns"]) <= 20
    assert "prediction set (0)" not in text and "prediction set: )" not in text
    for step in saved["steps"]:  # the screen names k, the leading candidates with probabilities and the set
        assert f"[k={step['k']}, {step['n_asked']} asked] top: " in text
    assert "conformal set (90%): " in text


def test_ctrl_d_says_it_stopped_and_shows_the_leading_candidates(tmp_path):
    kb = KnowledgeBase.load()
    out = io.StringIO()
    rc = play(["--transcript", str(tmp_path / "t.json"), "--progress", "false"], stdin=Player(kb, "dog", out, 2),
              stdout=out)
    text = out.getvalue()
    assert rc == 0
    assert "Stopped after 2 answers. Leading candidates: " in text
    leading = text.split("Leading candidates: ")[1].split("\n")[0]
    assert leading.count("(") == 3 and "dog" in leading
    assert json.loads((tmp_path / "t.json").read_text())["stop_reason"] == "quit"


def _trap() -> tuple[TwentyQuestions, TablePredictor, ConformalThresholds]:
    """20 items; one question no item says yes to, one that splits them 10/10. With tau_1 = 0.06 (just above
    the uniform 1/20), the uninformative question leaves every simulated set empty."""
    classes = [f"item{i}" for i in range(20)]
    questions = ["Is it red?", "Is it big?"]
    answers = {c: [0, int(i < 10)] for i, c in enumerate(classes)}
    kb = KnowledgeBase.from_dict({"questions": questions, "classes": classes, "answers": answers})
    scores = {0: [-0.04] * 50, 1: [-0.06] * 50, 2: [-0.06] * 50}
    return TwentyQuestions(kb), TablePredictor(kb), ConformalThresholds(0.1, scores, classes)


@pytest.mark.parametrize("criterion", ["cip-paper", "cip-code", DEFAULT_CRITERION, "cip-selffano", "ip"])
def test_the_empty_set_trap(criterion):
    env, predictor, th = _trap()
    agent = Agent(env, predictor, th, AgentConfig(criterion=criterion, max_queries=1))
    first = agent.play(3, seed=0)["steps"][0]["question"]
    if criterion in ("cip-paper", "cip-code"):  # the paper's and the reference's forms take the bait
        assert first == "Is it red?"
    else:
        assert first == "Is it big?"


@pytest.mark.parametrize("make, levels", [
    (lambda p, x: TemperedPredictor(p, x), [1.0, 0.7, 0.5, 0.3]),
    (lambda p, x: FirstLabelBiasPredictor(p, x), [1.0, 3.0, 10.0, 30.0]),
])
def test_miscalibration_wrappers_raise_ece_monotonically(make, levels):
    kb = KnowledgeBase.load()
    world = noisy_world(kb, 0.1, seed=0)  # a world with the noise the predictor models: calibrated at level 1
    sampler = UniformHistorySampler.from_knowledge_base(world)
    eces = [predictor_ece(make(TablePredictor(kb, noise=0.1), x), sampler, 10, 100) for x in levels]
    assert all(b > a for a, b in zip(eces, eces[1:])), eces
    assert eces[0] < 0.05


def test_unmodelled_answer_noise_raises_ece_monotonically():
    kb = KnowledgeBase.load()
    eces = [predictor_ece(TablePredictor(kb, noise=0.05), UniformHistorySampler.from_knowledge_base(
        noisy_world(kb, rho, seed=0)), 10, 60) for rho in (0.05, 0.1, 0.2, 0.3)]
    assert all(b > a for a, b in zip(eces, eces[1:])), eces


def test_expected_calibration_error_of_known_cases():
    probs = np.array([[0.9, 0.1]] * 10)
    assert expected_calibration_error(probs, [0] * 9 + [1]) == pytest.approx(0.0)
    assert expected_calibration_error(probs, [0] * 5 + [1] * 5) == pytest.approx(0.4)


def test_thresholds_for_fewer_questions_are_refused(tmp_path):
    from cmikit.cip.cli import main

    th_dir = tmp_path / "th3"
    base = ["--predictor", "table", "--n_cal", "20", "--progress", "false"]
    assert main(["calibrate", *base, "--max_queries", "3", "--out_dir", str(th_dir)]) == 0
    from cmikit.cip.evaluate import CIPConfig, preflight

    cfg = CIPConfig(predictor="table", n_cal=20, max_queries=5, thresholds=str(th_dir))
    with pytest.raises(ThresholdsError, match=r"up to 3 questions \(--max_queries 3\) but this run asks up to 5") as err:
        preflight(cfg)
    assert "cip calibrate" in str(err.value) and isinstance(err.value, CmikitError)
    cfg4 = CIPConfig(predictor="table", n_cal=20, max_queries=4, thresholds=str(th_dir / "thresholds.json"))
    with pytest.raises(ThresholdsError, match="up to 3 questions"):  # the calibrated budget, exactly
        preflight(cfg4)
    preflight(CIPConfig(predictor="table", n_cal=20, max_queries=3, thresholds=str(th_dir / "thresholds.json")))
    other = CIPConfig(predictor="table", n_cal=20, max_queries=3, thresholds=str(th_dir), table_noise=0.1)
    with pytest.raises(ThresholdsError, match="predictor.noise is 0.05 there and 0.1 here"):
        preflight(other)


def test_reference_parity_switches():
    from cmikit.cip.criteria import cip_code_score

    rng = np.random.default_rng(0)
    labels, _ = draw_estimation_labels(rng, 12, "prior", np.ones(20) / 20, replacement=False)
    assert len(set(labels.tolist())) == 12  # without replacement: the MediQ IP baseline of the reference
    post = rng.dirichlet(np.ones(5), size=(3, 4))
    w = np.full(4, 0.25)
    with_corr = cip_code_score(post, w, np.zeros(4, int), 0.1, 0.2)
    without = cip_code_score(post, w, np.zeros(4, int), 0.1, 0.2, alpha_n_correction=False)
    assert not np.allclose(with_corr, without)


def test_play_on_awa2_with_a_kb_file(tmp_path, shared_data):
    path = shared_data / "awa2" / "twenty_questions_awa2_20.json"
    kb = KnowledgeBase.load(path)
    out = io.StringIO()
    args = ["--kb", str(path), "--noun", "animal", "--transcript", str(tmp_path / "t.json"), "--progress", "false"]
    assert play(args, stdin=Player(kb, "zebra", out), stdout=out) == 0
    text = out.getvalue()
    assert "Think of one of these 20 animals" in text and "Got it: zebra" in text
