"""The ``cip`` command line: ``cip play``, ``cip calibrate``, ``cip eval [--quick]`` (paper §4-5 as tools).

Options come from :class:`cmikit.cip.evaluate.CIPConfig` (``--config file.yaml`` plus ``--key value`` overrides);
``cip <command> --help`` lists them all.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from cmikit.cip.criteria import DEFAULT_CRITERION

USAGE = """usage: cip <command> [--config FILE.yaml] [--key value ...]

Conformal Information Pursuit (Chan et al., NeurIPS 2025): agents that choose the next question by the
expected size of a conformal prediction set.

commands:
  play        you think of an item, the agent asks yes/no questions (answer y / n / u = unknown / q = quit);
              after each answer it shows the top candidates and the conformal set. Ctrl-C saves the
              transcript. Default: the exact-Bayes predictor over the built-in knowledge base (--kb awa2 or
              --kb FILE for others); --predictor llm (or a non-default --model) asks an LLM instead.
  calibrate   per history length k, the split-conformal threshold tau_k -> <out_dir>/thresholds.json
  eval        play simulated games for each method (--methods cip-floor cip-paper cip-code ip random ...),
              write records.jsonl (resumable; a folder made with other settings is refused, --overwrite
              starts over), summary.json and plots to --out_dir. --quick: seconds on a CPU.

criteria: cip-floor = the paper's mean set size with an empty simulated set counted as the current set (our
fix, the default); cip-paper = mean prediction-set size (the paper's objective); cip-code = the Fano-style
bound the reference code computes; cip-fano / cip-selffano = Fano forms with the empirical / the predictor's
own miscoverage (ours); ip = mean entropy; random; direct = the LLM proposes the next question.
quantile rules: --quantile_rule finite-sample (paper, Alg. 1) | plain (reference code).

examples:
  cip play
  cip play --kb awa2
  cip calibrate --kb awa2 --out_dir runs/thresholds_awa2
  cip eval --quick --out_dir runs/cip_quick
  cip eval --config configs/cip/awa2_table.yaml
  cip eval --kb everyday --predictor llm --quick --out_dir runs/cip_llm   # the embedded 135M LLM
"""


@dataclass
class PlayConfig:
    """Options of ``cip play`` (and only those)."""

    kb: str = field(default="everyday", metadata={"help": "knowledge base: everyday (built-in), awa2, or a JSON file"})
    noun: str | None = field(default=None, metadata={"help": "what the items are called (default: animal for "
                                                            "--kb awa2, else item)"})
    predictor: str = field(default="auto", metadata={"choices": ["auto", "table", "llm"], "help": (
        "auto (default): the exact-Bayes table predictor unless --model names another model; llm: the LLM")})
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "the LLM for --predictor llm"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow a Hub model's own code to run"})
    label_style: str = field(default="names", metadata={"choices": ["names", "letters"]})
    table_noise: float = field(default=0.05, metadata={"help": "chance an answer disagrees with the table (what "
                                                               "lets one mistaken answer be outvoted)"})
    batch_size: int = 64
    criterion: str = field(default=DEFAULT_CRITERION, metadata={"help": "cip-floor, cip-selffano, cip-paper, "
                                                                        "cip-code, cip-fano, ip or random"})
    alpha: float = 0.1
    n_cal: int | None = field(default=None, metadata={"help": "calibration histories per length (default 100; "
                                                              "10 with the LLM)"})
    quantile_rule: str = field(default="finite-sample", metadata={"choices": ["finite-sample", "plain"]})
    set_rule: str = field(default=">=", metadata={"choices": [">=", ">"]})
    thresholds: str | None = field(default=None, metadata={"help": "a `cip calibrate` folder or file (made with "
                                                                   "the same KB, predictor settings, --none_prior "
                                                                   "and --set_rule)"})
    n_est: int = 4
    est_source: str = field(default="prior", metadata={"choices": ["prior", "posterior", "exhaustive"]})
    max_queries: int | None = field(default=None, metadata={"help": "question limit, unknown answers included "
                                                                    "(default 20; 12 with the LLM; with "
                                                                    "--thresholds, the budget it was calibrated for)"})
    max_guesses: int = field(default=3, metadata={"help": "'Is it a ...?' guesses before the game gives up"})
    none_prior: float = field(default=0.1, metadata={"help": "prior of 'none of these' (an item the game does "
                                                             "not know)"})
    none_threshold: float = field(default=0.9, metadata={"help": "P(none of these) at which the game says it does "
                                                                 "not know the item"})
    learned: bool = field(default=True, metadata={"help": "play with the items learned in earlier games (the user "
                                                          "KB under $CMIKIT_CACHE/cip-play/learned/)"})
    learn: bool = field(default=False, metadata={"help": "save a learned item into the --kb FILE itself instead of "
                                                         "the user KB"})
    max_candidates: int | None = field(default=None, metadata={"help": "score a random subset of this many bank "
                                                                       "questions per step (default: all)"})
    tie_break: str = field(default="first", metadata={"choices": ["first", "random"]})
    seed: int = 0
    transcript: str = "cip_transcript.json"
    progress: bool = field(default=True, metadata={"help": "progress bar while calibrating"})


def _explicit_keys(argv: Sequence[str], types: Any = None) -> set[str]:
    """The options the command line or its ``--config`` file sets (any spelling: ``--x-y``, ``--no_x``...)."""
    from cmikit.cip.evaluate import CIPConfig
    from cmikit.harness.config import explicit_keys

    return explicit_keys(types or CIPConfig, argv)


def _parse(types: Any, argv: Sequence[str], command: str = "") -> Any:
    """The harness convention (``cmikit.harness.config.parse_config``) for ``cip <command>``."""
    from cmikit.harness.config import parse_config

    return parse_config(types, argv, prog=f"cip {command}".strip())


# --------------------------------------------------------------------------------------------- play
def user_kb_path(kb: str) -> Path:
    """Where ``cip play`` keeps the items it learned on top of ``--kb`` (a copy of that base plus them)."""
    import hashlib

    from cmikit.cip.knowledge import KB_ALIASES
    from cmikit.harness.embedded import cache_root

    name = kb if kb in KB_ALIASES else f"{Path(kb).stem}-{hashlib.sha256(str(Path(kb).resolve()).encode()).hexdigest()[:8]}"
    return cache_root() / "cip-play" / "learned" / f"{name}.json"


def _calibrated_budget(opts: PlayConfig) -> int | None:
    """With ``--thresholds`` and no ``--max_queries``: the question budget the file was calibrated for."""
    if not opts.thresholds or opts.max_queries is not None:
        return opts.max_queries
    from cmikit.cip.conformal import ConformalThresholds
    from cmikit.cip.evaluate import thresholds_path

    return max(ConformalThresholds.load(thresholds_path(opts.thresholds)).lengths) - 1


def _play_cip_config(opts: PlayConfig, kb: str | None = None) -> Any:
    """The :class:`cmikit.cip.evaluate.CIPConfig` that ``build`` needs, from play's options (validated there)."""
    from cmikit.cip.criteria import ALL_CRITERIA
    from cmikit.cip.evaluate import CIPConfig, resolve_predictor_kind
    from cmikit.harness.config import check_at_least, check_choice, check_range

    check_at_least("n_cal", opts.n_cal, 1, allow_none=True)
    check_at_least("max_queries", opts.max_queries, 1, allow_none=True)
    check_at_least("max_guesses", opts.max_guesses, 1)
    check_range("none_prior", opts.none_prior, 0, 1, low_open=True, high_open=True)
    check_range("none_threshold", opts.none_threshold, 0, 1, low_open=True)
    check_choice("criterion", opts.criterion, [c for c in ALL_CRITERIA if c != "direct"])
    kind = resolve_predictor_kind(opts)
    noun = opts.noun or ("animal" if opts.kb == "awa2" else "item")
    max_queries = _calibrated_budget(opts)
    return CIPConfig(kb=kb or opts.kb, noun=noun, predictor=kind, model=opts.model,
                     trust_remote_code=opts.trust_remote_code, label_style=opts.label_style,
                     table_noise=opts.table_noise, none_prior=opts.none_prior, batch_size=opts.batch_size,
                     alpha=opts.alpha, n_cal=opts.n_cal or (10 if kind == "llm" else 100),
                     quantile_rule=opts.quantile_rule, set_rule=opts.set_rule, thresholds=opts.thresholds,
                     methods=[opts.criterion], n_est=opts.n_est, est_source=opts.est_source,
                     max_queries=max_queries or (12 if kind == "llm" else 20),
                     max_candidates=opts.max_candidates, tie_break=opts.tie_break, seeds=[opts.seed],
                     progress=opts.progress)


def play_cache_dir(cfg: Any) -> Path:
    """Where ``cip play`` caches its calibration: a key of the thresholds' identity (the knowledge base's
    content hash, the predictor's full settings, the set rule) and every other setting that changes the
    thresholds (N, quantile rule, history length, seed)."""
    import hashlib

    from cmikit.cip.evaluate import thresholds_identity
    from cmikit.cip.knowledge import KnowledgeBase
    from cmikit.harness.embedded import cache_root

    key = json.dumps({"identity": thresholds_identity(cfg, KnowledgeBase.load(cfg.kb)), "n_cal": cfg.n_cal,
                      "quantile_rule": cfg.quantile_rule, "max_length": cfg.max_queries + 1, "seed": cfg.seeds[0],
                      "replacement": cfg.replacement}, sort_keys=True)
    return cache_root() / "cip-play" / hashlib.sha256(key.encode()).hexdigest()[:16]


def llm_cost_notice(setup: Any, cfg: Any, n_probe: int = 4) -> str:
    """What the LLM predictor will cost on this machine, from one measured batch of forwards: the
    calibration (n_cal x (max_queries + 2) histories) and one question (<= 2 posteriors per bank question)."""
    import time

    import numpy as np

    rng = np.random.default_rng(0)
    probe = [setup.sampler.sample(min(3, cfg.max_queries), rng) for _ in range(n_probe)]
    t0 = time.perf_counter()
    setup.predictor.predict([e.history for e in probe], [e.context for e in probe])
    per_history = (time.perf_counter() - t0) / n_probe
    n_hist = cfg.n_cal * (cfg.max_queries + 2)
    n_bank = cfg.max_candidates or len(setup.env.kb.questions)
    return (f"The LLM predictor costs time on this machine (one forward took {per_history:.2f} s): calibrating "
            f"{n_hist} histories takes about {_duration(n_hist * per_history)} before the first question (once: "
            f"it is cached for the next start), then each question about {_duration(2 * n_bank * per_history)} "
            f"({n_bank} candidate questions).")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


class _Terminal:
    """The person at the terminal, as a :class:`cmikit.cip.game.Player`."""

    def __init__(self, stdin: TextIO, stdout: TextIO, noun: str, show_time: bool) -> None:
        import time

        self.stdin, self.stdout, self.noun, self.show_time = stdin, stdout, noun, show_time
        self.clock = time.perf_counter
        self.t = self.clock()
        self.turns: list[list[str]] = []

    def say(self, text: str = "") -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def read(self, prompt: str) -> str | None:
        self.stdout.write(prompt)
        self.stdout.flush()
        line = self.stdin.readline()
        if line == "":  # end of input (Ctrl-D)
            self.say("")
            return None
        return line.strip()

    def answer(self, question: str) -> str | None:
        from cmikit.cip.knowledge import KnowledgeBaseError, normalize_answer

        if self.show_time:
            self.say(f"       (chose this question in {self.clock() - self.t:.1f} s)")
        while True:
            text = self.read(f"Q{len(self.turns) + 1}: {question} [y/n/u/q] ")
            if text is None or text.lower() in ("q", "quit", "exit"):
                return None
            try:
                answer = normalize_answer(text)
            except KnowledgeBaseError as err:
                self.say(str(err))
                continue
            self.turns.append([question, answer])
            return answer

    def yes_no(self, prompt: str) -> bool | None:
        while True:
            text = self.read(prompt)
            if text is None or text.lower() in ("q", "quit", "exit"):
                return None
            if text.lower() in ("y", "yes", "n", "no"):
                return text.lower().startswith("y")
            self.say("Answer y (yes) or n (no), or q to quit.")

    def confirm(self, guess: str) -> bool | None:
        from cmikit.cip.game import a

        return self.yes_no(f"Is it {a(guess)}? [y/n] ")


def play(argv: Sequence[str], stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """The interactive game (:func:`cmikit.cip.game.play_game`). ``stdin``/``stdout`` default to the terminal
    (tests pass scripted streams)."""
    from cmikit.cip.agent import Agent, AgentConfig
    from cmikit.cip.evaluate import build, preflight, thresholds_for_seed
    from cmikit.cip.game import GameSettings, describe_empty_set, play_game
    from cmikit.cip.knowledge import KB_ALIASES, KnowledgeBase, KnowledgeBaseError

    opts = _parse(PlayConfig, argv, "play")
    if opts.learn and opts.kb in KB_ALIASES:
        raise KnowledgeBaseError(f"--learn writes learned items into the --kb FILE, and {opts.kb!r} is built in; "
                                 f"give --kb FILE, or leave --learn out to keep them in {user_kb_path(opts.kb)}.")
    user_kb = None if opts.learn else user_kb_path(opts.kb)
    kb_arg = str(user_kb) if user_kb is not None and opts.learned and user_kb.is_file() else None
    cfg = _play_cip_config(opts, kb_arg)  # every check happens here, before any model loads
    preflight(cfg)
    from cmikit.harness.runs import check_writable, usable_cache_dir

    check_writable("--transcript", opts.transcript)  # refused now, not after the game is played
    kind = cfg.predictor
    term = _Terminal(stdin or sys.stdin, stdout or sys.stdout, cfg.noun, kind == "llm")
    say = term.say
    base_kb = KnowledgeBase.load(cfg.kb)
    if kb_arg:
        say(f"Playing with the {cfg.noun}s learned in earlier games ({kb_arg}; --no_learned leaves them out).")

    say(f"Loading ({'LLM predictor: ' + cfg.model if kind == 'llm' else 'exact-Bayes table predictor'}) ...")
    setup = build(cfg)
    cache_dir = None
    if not cfg.thresholds:
        cache_dir = play_cache_dir(cfg)
        cached = cache_dir / "thresholds" / f"seed{cfg.seeds[0]}.json"
        problem = None if cached.is_file() else usable_cache_dir(cache_dir)
        if problem:  # a read-only or full CMIKIT_CACHE: play anyway, calibrating without caching
            say(f"note: the cache {cache_dir} cannot be written ({problem}); calibrating without caching.")
            cache_dir = None
        if kind == "llm" and not cached.is_file():
            say(llm_cost_notice(setup, cfg))
        where = f"cache {cached}" if cache_dir is not None else "not cached"
        say(f"{'Loading cached' if cached.is_file() else 'Calibrating'} conformal thresholds (alpha={cfg.alpha}, "
            f"N={cfg.n_cal}, {where}); pass --thresholds DIR (from `cip calibrate`) to use your own.")
    try:
        thresholds = thresholds_for_seed(cfg, setup, cfg.seeds[0], cache_dir)
    except KeyboardInterrupt:
        say("\nInterrupted while calibrating; nothing was cached, so the next start calibrates from the beginning.")
        return 130
    agent = Agent(setup.env, setup.predictor, thresholds,
                  AgentConfig(criterion=opts.criterion, alpha=cfg.alpha, n_est=cfg.n_est, est_source=cfg.est_source,
                              max_queries=cfg.max_queries, tie_break=cfg.tie_break))
    settings = GameSettings(cfg.max_queries, opts.max_guesses, opts.none_threshold)
    names = setup.env.labels
    say(f"\nThink of one of these {len(names)} {cfg.noun}s: {', '.join(names)} (or of another one: I will say "
        "when I do not know it, and you can teach it to me).")
    say(f"I will ask up to {cfg.max_queries} yes/no questions and make up to {opts.max_guesses} guesses "
        f"(criterion {opts.criterion}; the conformal set holds your {cfg.noun} with probability >= "
        f"{1 - cfg.alpha:.2f} on random histories, when it is one of these).")
    say("Answer each question with y (yes), n (no), u (unknown: it counts as no answer) or q (quit).\n")
    transcript: dict[str, Any] = {"labels": names, "criterion": opts.criterion, "predictor": setup.model_name,
                                  "kb": cfg.kb, "steps": [], "turns": term.turns}

    def show(step: dict[str, Any]) -> None:
        transcript["steps"].append(step)
        top = ", ".join(f"{name} {p:.2f}" for name, p in step["top"][:5])
        members = step["set"]
        if not members:
            described = describe_empty_set(cfg.noun)
        elif len(members) <= 8:
            described = f"{len(members)}: {', '.join(members)}"
        else:
            described = f"{len(members)} {cfg.noun}s"
        say(f"[k={step['k']}, {step['n_asked']} asked] top: {top}")
        say(f"       conformal set ({1 - cfg.alpha:.0%}): {described}")
        term.t = term.clock()

    path = Path(opts.transcript)
    try:
        trace = play_game(agent, setup.predictor, term, settings, seed=cfg.seeds[0], on_step=show)
    except KeyboardInterrupt:
        transcript["stop_reason"] = "interrupted"
        _save(path, transcript)
        say(f"\nInterrupted; transcript saved to {path}.")
        return 130
    transcript.update(outcome=trace["outcome"], reason=trace["reason"], prediction=trace["item"],
                      guesses=trace["guesses"], stop_reason=trace["reason"] or trace["outcome"])
    leading = ", ".join(f"{name} ({p:.2f})" for name, p in trace["steps"][-1]["top"][:3])
    if trace["outcome"] == "quit":
        say(f"Stopped after {trace['n_questions']} answers. Leading candidates: {leading}.")
    elif trace["outcome"] == "confirmed":
        say(f"\nGot it: {trace['item']} (after {trace['n_questions']} questions and {len(trace['guesses']) + 1} "
            f"guess{'es' if trace['guesses'] else ''}).")
    else:
        why = ("your answers fit none of them" if trace["reason"] == "none_of_these"
               else f"my {len(trace['guesses'])} guesses were wrong")
        say(f"\nI don't know it: your {cfg.noun} is not one of the {len(names)} I know ({why}).")
        learned = _teach(term, base_kb, trace, cfg.noun, opts, user_kb)
        if learned:
            transcript["learned"] = learned
    _save(path, transcript)
    say(f"Transcript saved to {path}.")
    return 0


def _teach(term: _Terminal, kb: Any, trace: dict[str, Any], noun: str, opts: PlayConfig,
           user_kb: Path | None) -> dict[str, Any] | None:
    """Ask the item's name and one question that tells it from a guess; save the new row."""
    from cmikit.cip.game import a, learn_item, teach_target
    from cmikit.cip.knowledge import KnowledgeBaseError

    name = term.read(f"What {noun} were you thinking of? (Enter to skip) ")
    if not name:
        return None
    if name in kb.classes:
        term.say(f"{name} is one of the {noun}s I know; some answers must have differed from my table. Not saved.")
        return None
    other = teach_target(trace)
    question = term.read(f"Give me a yes/no question that tells {a(name)} from {a(other)}: ") if other else None
    answer = None
    if question:
        question = question if question.endswith("?") else question + "?"
        verdict = term.yes_no(f"For {a(name)}, the answer to {question!r} is? [y/n] ")
        answer = None if verdict is None else ("Yes." if verdict else "No.")
        if answer is None:
            question = None
    try:
        new_kb = learn_item(kb, trace, name, question, answer, other)
    except KnowledgeBaseError as err:
        term.say(f"Not saved: {err}")
        return None
    target = Path(opts.kb) if user_kb is None else user_kb
    new_kb.save(target)
    term.say(f"Saved {name} to {target} ({len(new_kb.classes)} {noun}s now). The next game plays with it; its "
             "thresholds are recalibrated for the new knowledge base (learned rows are part of it).")
    return {"name": name, "question": question, "answer": answer, "other": other, "file": str(target)}


def _save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str))


# ------------------------------------------------------------------------------------ calibrate/eval
def calibrate_cmd(argv: Sequence[str]) -> int:
    from cmikit.cip.evaluate import CIPConfig, run_calibrate

    cfg = _parse(CIPConfig, argv, "calibrate")
    if "out_dir" not in _explicit_keys(argv):
        cfg.out_dir = "runs/cip_calibrate"
    th, path = run_calibrate(cfg)
    taus = ", ".join(f"k={k}: {v:.4f}" for k, v in th.taus.items())
    print(f"thresholds (alpha={th.alpha}, N={th.n_cal}, {th.quantile_rule}, model {th.model}): {taus}")
    print(f"wrote {path} (use it with --thresholds {cfg.out_dir})")
    return 0


def eval_cmd(argv: Sequence[str]) -> int:
    from cmikit.cip.evaluate import CIPConfig, apply_quick, run_eval

    cfg = apply_quick(_parse(CIPConfig, argv, "eval"), _explicit_keys(argv))
    summary = run_eval(cfg)
    print(summary_table(summary, cfg))
    return 0


def summary_table(summary: dict[str, Any], cfg: Any) -> str:
    """The table ``cip eval`` prints: one row per method."""
    import numpy as np

    groups = summary.get("groups", {})
    n_games = next(iter(groups.values()))["correct"]["n"] if groups else 0
    lines = [
        f"\npredictor: {summary['predictor']}; {n_games} games per method (seeds {cfg.seeds}), up to "
        f"{cfg.max_queries} questions, alpha = {cfg.alpha}; results in {cfg.out_dir}",
        f"{'method':13s} {'queries to correct singleton [95% CI]':>38s} {'reached':>8s} {'acc@stop':>9s} "
        f"{'set size@stop':>14s} {'coverage (in game)':>19s}",
    ]
    for method in [m for m in cfg.methods if m in groups]:
        group = groups[method]
        q = group.get("queries_to_correct_singleton")
        qtext = f"{q['mean']:.2f} [{q['ci_low']:.2f}, {q['ci_high']:.2f}]" if q and q.get("mean") is not None else "-"
        cells = []
        for key in ("success_singleton", "correct", f"set_size@{cfg.max_queries}"):
            v = group.get(key, {}).get("mean")
            cells.append(f"{v:.2f}" if isinstance(v, (int, float)) else "-")
        cov = [group[f"covered@{k}"]["mean"] for k in range(cfg.max_queries + 1) if f"covered@{k}" in group]
        cells.append(f"{np.mean(cov):.3f}" if cov else "-")
        lines.append(f"{method:13s} {qtext:>38s} {cells[0]:>8s} {cells[1]:>9s} {cells[2]:>14s} {cells[3]:>19s}")
    held = summary.get("heldout_coverage_per_k", {}).get("coverage") or {}
    if held:
        lines.append(f"held-out exchangeable histories (where the guarantee applies): coverage {np.mean(list(held.values())):.3f} "
                     f"(per k from {min(held.values()):.2f} to {max(held.values()):.2f}), target >= {1 - cfg.alpha:.2f} "
                     f"(n = {summary['heldout_coverage_per_k']['n_per_k']} per k over {len(cfg.seeds)} calibrations)")
    lines.append("queries to correct singleton: the first k whose conformal set is exactly the true item (mean over "
                 "the games that reach it; 'reached' = their share). In-game coverage carries no guarantee "
                 "(adaptive histories).")
    return "\n".join(lines)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"play": play, "calibrate": calibrate_cmd, "eval": eval_cmd}


def main(argv: Sequence[str] | None = None) -> int:
    from cmikit.harness.cli import dispatch

    return dispatch("cip", USAGE, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
