"""The ``cip`` command line: the interactive game with scripted answers, Ctrl-C, help, calibrate, eval + resume."""

from __future__ import annotations

import io
import json

import pytest

from cmikit.cip.cli import main, play
from cmikit.cip.knowledge import KnowledgeBase

TABLE = ["--predictor", "table", "--n_cal", "30", "--progress", "false"]


class Person(io.StringIO):
    """A scripted player thinking of ``item``: answers each question from the knowledge base, after giving
    some bad inputs first; raises KeyboardInterrupt after ``interrupt_after`` answers."""

    def __init__(self, kb: KnowledgeBase, item: str, out: io.StringIO, bad: list[str] = (),
                 interrupt_after: int | None = None, quit_after: int | None = None) -> None:
        super().__init__()
        self.kb, self.label, self.out = kb, kb.classes.index(item), out
        self.bad, self.n_answers = list(bad), 0
        self.interrupt_after, self.quit_after = interrupt_after, quit_after

    def readline(self, *args) -> str:
        if self.bad:
            return self.bad.pop(0) + "\n"
        if self.interrupt_after is not None and self.n_answers >= self.interrupt_after:
            raise KeyboardInterrupt
        if self.quit_after is not None and self.n_answers >= self.quit_after:
            return "q\n"
        prompt = self.out.getvalue().rsplit("\n", 1)[-1]
        if prompt.startswith("Is it a"):  # a guess is a question
            return ("y" if prompt.split(" ", 3)[3].rsplit("? [", 1)[0] == self.kb.classes[self.label] else "n") + "\n"
        question = prompt.split(": ", 1)[1].rsplit(" [", 1)[0]
        self.n_answers += 1
        return ("y" if self.kb.answer(self.label, question) == "Yes." else "n") + "\n"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CMIKIT_CACHE", str(tmp_path / "cache"))  # play caches its thresholds there


def test_play_with_scripted_answers_guesses_the_item_and_reprompts_on_bad_input(tmp_path):
    kb = KnowledgeBase.load()
    out = io.StringIO()
    person = Person(kb, "umbrella", out, bad=["maybe", "perhaps"])
    transcript = tmp_path / "t.json"
    rc = play([*TABLE, "--transcript", str(transcript)], stdin=person, stdout=out)
    text = out.getvalue()
    assert rc == 0
    assert text.count("is not allowed; answer y (yes), n (no) or u (unknown)") == 2
    assert "conformal set" in text and "top:" in text
    assert "Is it an umbrella? [y/n]" in text and "Got it: umbrella" in text
    saved = json.loads(transcript.read_text())
    assert saved["prediction"] == "umbrella" and saved["outcome"] == "confirmed"
    assert len(saved["turns"]) == person.n_answers
    assert "Calibrating conformal thresholds" in text
    # the next game reuses the calibration cached in $CMIKIT_CACHE
    out2 = io.StringIO()
    assert play([*TABLE, "--transcript", str(transcript)], stdin=Person(kb, "horse", out2), stdout=out2) == 0
    assert "Loading cached conformal thresholds" in out2.getvalue() and "Got it: horse" in out2.getvalue()


def test_ctrl_c_saves_the_transcript(tmp_path):
    kb = KnowledgeBase.load()
    out = io.StringIO()
    transcript = tmp_path / "interrupted.json"
    rc = play([*TABLE, "--transcript", str(transcript)], stdin=Person(kb, "dog", out, interrupt_after=2), stdout=out)
    assert rc == 130 and "transcript saved" in out.getvalue()
    saved = json.loads(transcript.read_text())
    assert saved["stop_reason"] == "interrupted" and len(saved["turns"]) == 2


def test_quit_stops_the_game(tmp_path):
    kb = KnowledgeBase.load()
    out = io.StringIO()
    rc = play([*TABLE, "--transcript", str(tmp_path / "q.json")], stdin=Person(kb, "dog", out, quit_after=1), stdout=out)
    assert rc == 0 and "Stopped after 1 answers. Leading candidates:" in out.getvalue()
    assert json.loads((tmp_path / "q.json").read_text())["stop_reason"] == "quit"


def test_help_and_bad_commands(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(c in text for c in ("play", "calibrate", "eval", "--quick", "finite-sample", "embedded"))
    assert main(["dance"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["play", "--help"])
    assert exc.value.code == 0
    play_help = capsys.readouterr().out
    assert "--predictor" in play_help and "--criterion" in play_help
    for eval_only in ("--methods", "--seeds", "--alphas", "--out_dir", "--n_games", "--mediq_dir"):
        assert eval_only not in play_help
    assert main(["eval", "--alpha", "1.5"]) == 2
    assert "--alpha 1.5: must lie in (0, 1)" in capsys.readouterr().err
    assert main(["eval", "--methods", "direct", "ip"]) == 2
    assert "add --answerer llm" in capsys.readouterr().err


def test_calibrate_then_eval_resumes_and_refuses_foreign_thresholds(tmp_path, capsys):
    th_dir = tmp_path / "th"
    th = th_dir / "thresholds.json"
    args = [*TABLE, "--kb", "everyday", "--max_queries", "6"]
    assert main(["calibrate", *args, "--out_dir", str(th_dir)]) == 0
    assert json.loads(th.read_text())["n_cal"] == 30
    assert json.loads((th_dir / "run.json").read_text())["kind"] == "cip-calibrate"
    out = tmp_path / "run"
    eval_args = [*args, "--methods", "cip-code", "ip", "--n_games", "5", "--thresholds", str(th),
                 "--out_dir", str(out)]
    assert main(["eval", *eval_args]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["per_method"]) == {"cip-code", "ip"}
    assert summary["groups"]["ip"]["correct"]["n"] == 5
    assert summary["curves"]["acc_cum"]["ip"]["x"] == list(range(7))
    held = summary["coverage_vs_1_minus_alpha"]["held-out histories"]
    assert all(c >= x - 0.1 for x, c in zip(held["x"], held["y"]))  # exchangeable histories are covered
    per_k = summary["heldout_coverage_per_k"]
    assert sorted(per_k["coverage"], key=int) == [str(k) for k in range(7)] and "guarantee" in per_k["note"]
    assert "no coverage guarantee applies" in summary["covered_at_k_note"]
    for png in ("accuracy_vs_k.png", "set_size_vs_k.png", "coverage_vs_1_minus_alpha.png"):
        assert (out / png).stat().st_size > 1000
    lines = (out / "records.jsonl").read_text().splitlines()
    assert len(lines) == 10
    # resume: a second run finds every game done and plays none
    (out / "records.jsonl").write_text("\n".join(lines[:7]) + "\n")
    assert main(["eval", *eval_args]) == 0
    assert len((out / "records.jsonl").read_text().splitlines()) == 10
    # thresholds calibrated for another knowledge base are refused
    other_kb = tmp_path / "other_kb.json"
    other_kb.write_text(json.dumps({"questions": ["Is it big?", "Is it red?"], "classes": ["ant", "bus", "rose"],
                                    "answers": {"ant": [0, 0], "bus": [1, 1], "rose": [0, 1]}}))
    assert main(["eval", *TABLE, "--kb", str(other_kb), "--thresholds", str(th), "--out_dir", str(tmp_path / "x")]) == 2
    assert "another label set" in capsys.readouterr().err


def test_quick_preset_is_small_and_explicit_options_win():
    from cmikit.cip.cli import _explicit_keys
    from cmikit.cip.criteria import DEFAULT_CRITERION
    from cmikit.cip.evaluate import CIPConfig, apply_quick
    from cmikit.harness.config import parse_config

    argv = ["--quick", "--n_games", "2"]
    cfg = apply_quick(parse_config(CIPConfig, argv), _explicit_keys(argv))
    # the table predictor whatever the cache holds: games long enough to finish, every method
    assert cfg.predictor == "auto" and cfg.n_games == 2 and cfg.n_cal == 100 and cfg.max_queries == 20
    assert cfg.methods[0] == DEFAULT_CRITERION and {"ip", "random", "cip-paper", "cip-code"} <= set(cfg.methods)
    llm_argv = ["--quick", "--predictor", "llm"]
    llm = apply_quick(parse_config(CIPConfig, llm_argv), _explicit_keys(llm_argv))
    assert llm.n_cal == 10 and llm.max_queries == 3 and llm.max_candidates == 16
    plain = apply_quick(parse_config(CIPConfig, []), set())
    assert plain.n_cal == 100 and plain.max_candidates is None and plain.methods[0] == DEFAULT_CRITERION
    mediq_argv = ["--quick", "--task", "mediq"]
    mediq = apply_quick(parse_config(CIPConfig, mediq_argv), _explicit_keys(mediq_argv))
    assert (mediq.n_games, mediq.max_queries, mediq.n_est, mediq.max_candidates, mediq.n_cal) == (3, 2, 2, 4, 10)
    assert mediq.methods == [DEFAULT_CRITERION, "ip"]


def test_demo_job_does_not_depend_on_the_model_cache(monkeypatch):
    """`make demo` (`cip eval --quick`) runs the table predictor whether or not the embedded model is prepared."""
    import cmikit.harness.embedded
    from cmikit.cip.cli import _explicit_keys
    from cmikit.cip.evaluate import CIPConfig, apply_quick, resolve_predictor_kind
    from cmikit.harness.config import parse_config

    for prepared in (False, True):
        monkeypatch.setattr(cmikit.harness.embedded, "is_prepared", lambda *a, prepared=prepared: prepared)
        cfg = apply_quick(parse_config(CIPConfig, ["--quick"]), _explicit_keys(["--quick"]))
        assert resolve_predictor_kind(cfg) == "table" and cfg.max_queries == 20
    other = parse_config(CIPConfig, ["--model", "some/other-model"])
    assert resolve_predictor_kind(other) == "llm"  # a model the user names is used
