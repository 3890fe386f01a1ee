"""``cip play`` with players who are not perfect (issue 17): unknown answers, a mistaken answer, an item the
game does not know (and learns), thresholds bound to what made them. The CLI is driven in-process through
scripted stdin."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from cmikit.cip.cli import main, play
from cmikit.cip.conformal import ThresholdsFileError
from cmikit.cip.evaluate import CIPConfig, check_thresholds_fit, thresholds_identity
from cmikit.cip.game import GameSettings, a, learn_item, play_game
from cmikit.cip.knowledge import NO, UNKNOWN, YES, KnowledgeBase, Turn
from cmikit.cip.predictors import OpenWorldPredictor, TablePredictor

FAST = ["--predictor", "table", "--n_cal", "30", "--progress", "false"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CMIKIT_CACHE", str(tmp_path / "cache"))


class Person(io.StringIO):
    """Answers from ``row`` (question -> "Yes."/"No."), says "u" to the questions in ``unknown`` and lies on
    ``lie``; "Is it a X?" -> y only for ``name``; then answers the learning questions from ``teach``."""

    def __init__(self, out: io.StringIO, name: str, row: dict[str, str], unknown: int = 0, lie: set[int] = frozenset(),
                 teach: list[str] = ()) -> None:
        super().__init__()
        self.out, self.name, self.row = out, name, row
        self.unknown, self.lie, self.teach = unknown, set(lie), list(teach)
        self.n_questions = 0

    def readline(self, *args) -> str:
        prompt = self.out.getvalue().rsplit("\n", 1)[-1]
        if prompt.startswith("Is it a"):
            return ("y" if prompt.split(" ", 3)[3].rsplit("? [", 1)[0] == self.name else "n") + "\n"
        if prompt.startswith("Q"):
            question = prompt.split(": ", 1)[1].rsplit(" [", 1)[0]
            i, self.n_questions = self.n_questions, self.n_questions + 1
            if i < self.unknown:
                return "u\n"
            truth = self.row[question] == YES
            return ("y" if truth != (i in self.lie) else "n") + "\n"
        return (self.teach.pop(0) if self.teach else "") + "\n"


def _row(kb: KnowledgeBase, name: str) -> dict[str, str]:
    i = kb.classes.index(name)
    return {q: kb.answer(i, q) for q in kb.questions}


def test_unknown_answers_add_no_evidence_and_never_show_an_empty_set(tmp_path):
    kb = KnowledgeBase.load()
    out = io.StringIO()
    rc = play([*FAST, "--transcript", str(tmp_path / "t.json")],
              stdin=Person(out, "umbrella", _row(kb, "umbrella"), unknown=3), stdout=out)
    text = out.getvalue()
    assert rc == 0 and "Got it: umbrella" in text
    assert "empty" not in text
    steps = json.loads((tmp_path / "t.json").read_text())["steps"]
    # three "u" answers: three questions asked, k still 0, the set the same as before any answer
    assert [s["k"] for s in steps[:4]] == [0, 0, 0, 0] and [s["n_asked"] for s in steps[:4]] == [0, 1, 2, 3]
    assert steps[3]["set"] == steps[0]["set"] and len(steps[0]["set"]) == len(kb.classes)


def test_a_mistaken_answer_is_outvoted_after_a_wrong_guess(tmp_path):
    kb = KnowledgeBase.load()
    out = io.StringIO()
    # a lie on the first question sends the game to a wrong item; "n" to its guess and more answers recover
    rc = play([*FAST, "--transcript", str(tmp_path / "t.json")],
              stdin=Person(out, "hammer", _row(kb, "hammer"), lie={0}), stdout=out)
    text = out.getvalue()
    saved = json.loads((tmp_path / "t.json").read_text())
    assert rc == 0 and "Got it: hammer" in text
    assert saved["guesses"] and "hammer" not in saved["guesses"] and len(saved["guesses"]) < 3
    assert f"Is it {a(saved['guesses'][0])}? [y/n]" in text


def test_an_item_it_does_not_know_is_said_learned_and_guessed_next_time(tmp_path):
    kb = KnowledgeBase.load()
    held = "umbrella"
    small = kb.without(kb.classes.index(held))
    kb_file = small.save(tmp_path / "kb.json")
    row = _row(kb, held)
    args = [*FAST, "--kb", str(kb_file), "--transcript", str(tmp_path / "t.json")]
    out = io.StringIO()
    person = Person(out, held, row, teach=[held, "Does it keep the rain off you?", "y"])
    assert play(args, stdin=person, stdout=out) == 0
    text = out.getvalue()
    assert "I don't know it" in text and "Got it" not in text
    learned = json.loads((tmp_path / "t.json").read_text())["learned"]
    user_kb = KnowledgeBase.load(learned["file"])
    assert held in user_kb.classes and "cip-play" in learned["file"]
    assert user_kb.answer(user_kb.classes.index(held), "Does it keep the rain off you?") == YES
    assert (user_kb.table[-1] == -1).any()  # questions the player was not asked stay unknown
    # the next game plays on the user KB, recalibrated for it, and guesses the learned item
    row["Does it keep the rain off you?"] = YES
    out2 = io.StringIO()
    assert play(args, stdin=Person(out2, held, row), stdout=out2) == 0
    text2 = out2.getvalue()
    assert "learned in earlier games" in text2 and "Calibrating conformal thresholds" in text2
    assert f"Got it: {held}" in text2


def test_open_world_predictor_is_exact_bayes_with_a_none_hypothesis():
    kb = KnowledgeBase.load()
    table = TablePredictor(kb, 0.05)
    pred = OpenWorldPredictor(table, kb, 0.05, none_prior=0.2)
    history = tuple(Turn(q, YES if j % 2 else NO) for j, q in enumerate(kb.questions[:6]))
    rates = kb.base_rates()
    like_items = np.exp(table.log_likelihood(history))
    like_none = np.prod([rates[j] if j % 2 else 1 - rates[j] for j in range(6)])
    joint = np.append(0.8 / len(kb.classes) * like_items, 0.2 * like_none)
    joint /= joint.sum()
    assert np.allclose(pred.predict([history])[0], joint[:-1])
    assert np.isclose(pred.none_probabilities([history])[0], joint[-1])
    # an unknown answer changes nothing; a rejected item gets 0 and every other probability grows
    assert np.allclose(pred.predict([history + (Turn(kb.questions[7], UNKNOWN),)]), pred.predict([history]))
    before = pred.predict([history])[0]
    pred.rejected = {int(np.argmax(before))}
    after = pred.predict([history])[0]
    assert after[np.argmax(before)] == 0 and (np.delete(after - before, np.argmax(before)) >= 0).all()


def test_learned_rows_keep_unknown_cells_and_use_the_base_rate():
    kb = KnowledgeBase.load()
    trace = {"asked": [[kb.questions[0], YES], [kb.questions[1], UNKNOWN], [kb.questions[2], NO]]}
    new = learn_item(kb, trace, "kazoo", "Does it buzz?", YES, kb.classes[0])
    row = new.table[new.classes.index("kazoo")]
    assert row[0] == 1 and row[1] == -1 and row[2] == 0 and row[-1] == 1
    assert new.table[0, -1] == 0 and (new.table[1:-1, -1] == -1).all()
    assert new.answer(new.classes.index("kazoo"), kb.questions[5]) == UNKNOWN
    assert new.content_hash() != kb.content_hash()
    assert KnowledgeBase.from_dict(json.loads(json.dumps(new.to_dict()))).content_hash() == new.content_hash()
    pred = TablePredictor(new, 0.05)
    p_yes = float(np.exp(pred._log_yes[new.classes.index("kazoo"), 5]))
    assert np.isclose(p_yes, np.clip(new.base_rates()[5], 0.05, 0.95))


def test_game_gives_up_after_the_guess_budget():
    kb = KnowledgeBase.load()
    from cmikit.cip.agent import Agent, AgentConfig
    from cmikit.cip.conformal import UniformHistorySampler, calibrate
    from cmikit.cip.environments import TwentyQuestions

    pred = OpenWorldPredictor(TablePredictor(kb, 0.05), kb, 0.05, 1e-9)  # "none of these" never leads here
    th = calibrate(pred, UniformHistorySampler.from_knowledge_base(kb), 0.1, 30, 6, min_length=0, progress=False)
    agent = Agent(TwentyQuestions(kb), pred, th, AgentConfig(max_queries=5))

    class Denier:  # truthful about "dog", but says no to every guess
        def answer(self, q):
            return kb.answer(kb.classes.index("dog"), q)

        def confirm(self, guess):
            return False

    trace = play_game(agent, pred, Denier(), GameSettings(max_queries=5, max_guesses=2, none_threshold=1.0))
    assert trace["outcome"] == "dont_know" and trace["reason"] == "guesses_out"
    assert len(trace["guesses"]) == 2 and trace["guesses"][0] == "dog" and trace["n_questions"] <= 5


def test_thresholds_are_bound_to_kb_predictor_settings_and_set_rule(tmp_path, capsys):
    kb = KnowledgeBase.load()
    calib = tmp_path / "cal"
    assert main(["calibrate", "--predictor", "table", "--n_cal", "20", "--max_queries", "8", "--none_prior", "0.1",
                 "--progress", "false", "--out_dir", str(calib)]) == 0
    capsys.readouterr()
    # play with the file: the budget is the calibrated one, exactly
    out = io.StringIO()
    assert play(["--predictor", "table", "--thresholds", str(calib), "--transcript", str(tmp_path / "t.json")],
                stdin=Person(out, "dog", _row(kb, "dog")), stdout=out) == 0
    assert "up to 8 yes/no questions" in out.getvalue()
    assert main(["play", "--predictor", "table", "--thresholds", str(calib), "--max_queries", "9"]) == 2
    assert "calibrated for up to 8 questions (--max_queries 8) but this run asks up to 9" in capsys.readouterr().err
    flipped = KnowledgeBase(kb.classes, kb.questions, 1 - kb.table, name="flipped")
    flipped_file = flipped.save(tmp_path / "flipped.json")
    for extra, key in ((["--kb", str(flipped_file)], "kb_sha256"), (["--table_noise", "0.1"], "predictor.noise"),
                       (["--set_rule", ">"], "set_rule"), (["--none_prior", "0.2"], "predictor.none_prior")):
        assert main(["play", "--predictor", "table", "--thresholds", str(calib), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"does not fit this run: {key} is" in err and "cip calibrate" in err
    # the LLM's prompt settings are part of the identity too
    llm = CIPConfig(predictor="llm", label_style="letters", max_queries=8)
    th_path = calib / "thresholds.json"
    from cmikit.cip.conformal import ConformalThresholds

    th = ConformalThresholds.load(th_path)
    th.metadata["identity"] = thresholds_identity(CIPConfig(predictor="llm"), kb)
    with pytest.raises(ThresholdsFileError, match="predictor.label_style is 'names' there and 'letters' here"):
        check_thresholds_fit(th, llm, kb.classes, thresholds_identity(llm, kb), th_path)


def test_ctrl_c_during_calibration_does_not_promise_a_resume(tmp_path, monkeypatch):
    import cmikit.cip.evaluate as evaluate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "calibrate_for", interrupted)
    out = io.StringIO()
    assert play([*FAST, "--transcript", str(tmp_path / "t.json")], stdin=io.StringIO(""), stdout=out) == 130
    assert "calibrates from the beginning" in out.getvalue() and "resume" not in out.getvalue()


def test_llm_cost_notice_estimates_from_a_measured_forward():
    import time
    from types import SimpleNamespace

    from cmikit.cip.cli import llm_cost_notice
    from cmikit.cip.conformal import UniformHistorySampler

    kb = KnowledgeBase.load()

    class SlowPredictor:  # 0.05 s per history, like a (fast) LLM forward
        def predict(self, histories, contexts=None):
            time.sleep(0.05 * len(histories))
            return np.full((len(histories), len(kb.classes)), 1 / len(kb.classes))

    setup = SimpleNamespace(predictor=SlowPredictor(), sampler=UniformHistorySampler.from_knowledge_base(kb),
                            env=SimpleNamespace(kb=kb))
    cfg = SimpleNamespace(n_cal=10, max_queries=12, max_candidates=None)
    text = llm_cost_notice(setup, cfg)
    # 10 x 14 histories at ~0.05 s = ~7 s of calibration; 2 x 40 posteriors per question = ~4 s
    seconds = float(text.split("calibrating 140 histories takes about ")[1].split(" s")[0])
    assert 6 <= seconds <= 12 and "40 candidate questions" in text and "cached for the next start" in text


@pytest.mark.slow  # ~5 s on an idle machine (a tiny LLM, loaded twice)
def test_play_with_an_llm_says_what_it_costs_and_caches_its_calibration(tmp_path):
    from cmikit.harness.testing import tiny_causal_lm, tiny_tokenizer

    model = tmp_path / "tiny"
    tiny_causal_lm().save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    kb = KnowledgeBase.load()
    small = KnowledgeBase(kb.classes[:4], kb.questions[:3], kb.table[:4, :3], name="small")
    kb_file = small.save(tmp_path / "small.json")
    args = ["--predictor", "llm", "--model", str(model), "--kb", str(kb_file), "--label_style", "letters",
            "--n_cal", "9", "--max_queries", "1", "--progress", "false", "--no_learned",
            "--transcript", str(tmp_path / "t.json")]
    texts = []
    for _ in range(2):
        out = io.StringIO()
        assert play(args, stdin=io.StringIO("y\nn\nn\nn\n\n"), stdout=out) == 0
        texts.append(out.getvalue())
    assert "The LLM predictor costs time on this machine (one forward took" in texts[0]
    assert "calibrating 27 histories takes about" in texts[0] and "Calibrating conformal thresholds" in texts[0]
    assert "costs time" not in texts[1] and "Loading cached conformal thresholds" in texts[1]
    assert "(chose this question in" in texts[0]


def test_learn_into_a_built_in_kb_is_refused_and_help_lists_the_new_options(capsys):
    assert main(["play", "--learn", "true"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--learn writes learned items into the --kb FILE" in err
    with pytest.raises(SystemExit):
        main(["play", "--help"])
    text = capsys.readouterr().out
    assert all(f"--{o}" in text for o in ("max_guesses", "none_prior", "none_threshold", "learn", "learned"))
