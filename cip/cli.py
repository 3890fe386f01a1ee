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
    table_noise: float = field(default=0.05, metadata={"help": "chance an answer disagrees with the table"})
    batch_size: int = 64
    criterion: str = field(default=DEFAULT_CRITERION, metadata={"help": "cip-floor, cip-selffano, cip-paper, "
                                                                        "cip-code, cip-fano, ip or random"})
    alpha: float = 0.1
    n_cal: int | None = field(default=None, metadata={"help": "calibration histories per length (default 100; "
                                                              "10 with the LLM)"})
    quantile_rule: str = field(default="finite-sample", metadata={"choices": ["finite-sample", "plain"]})
    set_rule: str = field(default=">=", metadata={"choices": [">=", ">"]})
    thresholds: str | None = field(default=None, metadata={"help": "a `cip calibrate` folder or file"})
    n_est: int = 4
    est_source: str = field(default="prior", metadata={"choices": ["prior", "posterior", "exhaustive"]})
    max_queries: int | None = field(default=None, metadata={"help": "question limit (default 20; 12 with the LLM)"})
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
def _play_cip_config(opts: PlayConfig) -> Any:
    """The :class:`cmikit.cip.evaluate.CIPConfig` that ``build`` needs, from play's options (validated there)."""
    from cmikit.cip.criteria import ALL_CRITERIA
    from cmikit.cip.evaluate import CIPConfig, resolve_predictor_kind
    from cmikit.harness.config import check_at_least, check_choice

    check_at_least("n_cal", opts.n_cal, 1, allow_none=True)
    check_at_least("max_queries", opts.max_queries, 1, allow_none=True)
    check_choice("criterion", opts.criterion, [c for c in ALL_CRITERIA if c != "direct"])
    kind = resolve_predictor_kind(opts)
    noun = opts.noun or ("animal" if opts.kb == "awa2" else "item")
    return CIPConfig(kb=opts.kb, noun=noun, predictor=kind, model=opts.model, trust_remote_code=opts.trust_remote_code,
                     label_style=opts.label_style, table_noise=opts.table_noise, batch_size=opts.batch_size,
                     alpha=opts.alpha, n_cal=opts.n_cal or (10 if kind == "llm" else 100),
                     quantile_rule=opts.quantile_rule, set_rule=opts.set_rule, thresholds=opts.thresholds,
                     methods=[opts.criterion], n_est=opts.n_est, est_source=opts.est_source,
                     max_queries=opts.max_queries or (12 if kind == "llm" else 20),
                     max_candidates=opts.max_candidates, tie_break=opts.tie_break, seeds=[opts.seed],
                     progress=opts.progress)


def play_cache_dir(cfg: Any) -> Path:
    """Where ``cip play`` caches its calibration: a key of the knowledge base's *content* and every setting
    that changes the thresholds (predictor and model, N, rules, history length, seed)."""
    import hashlib

    from cmikit.cip.evaluate import predictor_name
    from cmikit.cip.knowledge import resolve_kb_path
    from cmikit.harness.embedded import cache_root
    from cmikit.harness.runs import file_digest

    key = json.dumps({"kb": file_digest(resolve_kb_path(cfg.kb)), "predictor": predictor_name(cfg),
                      "label_style": cfg.label_style, "noun": cfg.noun, "n_cal": cfg.n_cal,
                      "quantile_rule": cfg.quantile_rule, "set_rule": cfg.set_rule,
                      "max_length": cfg.max_queries + 1, "seed": cfg.seeds[0], "replacement": cfg.replacement},
                     sort_keys=True)
    return cache_root() / "cip-play" / hashlib.sha256(key.encode()).hexdigest()[:16]


def play(argv: Sequence[str], stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """The interactive game. ``stdin``/``stdout`` default to the terminal (tests pass scripted streams)."""
    import time

    from cmikit.cip.agent import Agent, AgentConfig
    from cmikit.cip.evaluate import build, preflight, thresholds_for_seed
    from cmikit.cip.knowledge import KnowledgeBaseError, normalize_answer

    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    opts = _parse(PlayConfig, argv, "play")
    cfg = _play_cip_config(opts)  # every check happens here, before any model loads
    preflight(cfg)
    from cmikit.harness.runs import check_writable, usable_cache_dir

    check_writable("--transcript", opts.transcript)  # refused now, not after the game is played
    kind = cfg.predictor

    def say(text: str = "") -> None:
        stdout.write(text + "\n")
        stdout.flush()

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
        where = f"cache {cached}" if cache_dir is not None else "not cached"
        say(f"{'Loading cached' if cached.is_file() else 'Calibrating'} conformal thresholds (alpha={cfg.alpha}, "
            f"N={cfg.n_cal}, {where}); pass --thresholds DIR (from `cip calibrate`) to use your own.")
    thresholds = thresholds_for_seed(cfg, setup, cfg.seeds[0], cache_dir)
    agent = Agent(setup.env, setup.predictor, thresholds,
                  AgentConfig(criterion=opts.criterion, alpha=cfg.alpha, n_est=cfg.n_est, est_source=cfg.est_source,
                              max_queries=cfg.max_queries, stop_singleton=True, tie_break=cfg.tie_break))
    names = setup.env.labels
    say(f"\nThink of one of these {len(names)} {cfg.noun}s: {', '.join(names)}.")
    say(f"I will ask up to {cfg.max_queries} yes/no questions (criterion {opts.criterion}; the conformal set holds "
        f"the {cfg.noun} with probability >= {1 - cfg.alpha:.2f} on random histories).")
    say("Answer each question with y (yes), n (no), u (unknown) or q (quit).\n")
    transcript: dict[str, Any] = {"labels": names, "criterion": opts.criterion, "predictor": setup.model_name,
                                  "steps": [], "turns": []}
    clock = {"t": time.perf_counter()}

    def show(step: dict[str, Any]) -> None:
        transcript["steps"].append(step)
        top = ", ".join(f"{name} {p:.2f}" for name, p in step["top"][:5])
        members = step["set"]
        if not members:
            described = f"empty (no {cfg.noun} reaches tau_{step['k']} = {step['tau']:.3f})"
        elif len(members) <= 8:
            described = f"{len(members)}: {', '.join(members)}"
        else:
            described = f"{len(members)} {cfg.noun}s"
        say(f"[k={step['k']}] top: {top}")
        say(f"       conformal set ({1 - cfg.alpha:.0%}): {described}")
        clock["t"] = time.perf_counter()

    def ask(question: str) -> str | None:
        if kind == "llm":
            say(f"       (chose this question in {time.perf_counter() - clock['t']:.1f} s)")
        while True:
            stdout.write(f"Q{len(transcript['turns']) + 1}: {question} [y/n/u/q] ")
            stdout.flush()
            line = stdin.readline()
            if line == "":  # end of input (Ctrl-D)
                say("")
                return None
            text = line.strip().lower()
            if text in ("q", "quit", "exit"):
                return None
            try:
                answer = normalize_answer(text)
            except KnowledgeBaseError as err:
                say(str(err))
                continue
            transcript["turns"].append([question, answer])
            return answer

    path = Path(opts.transcript)
    try:
        trace = agent.play(None, seed=cfg.seeds[0], answer_fn=ask, on_step=show)
    except KeyboardInterrupt:
        transcript["stop_reason"] = "interrupted"
        _save(path, transcript)
        say(f"\nInterrupted; transcript saved to {path}.")
        return 130
    transcript.update(prediction=trace["prediction"], stop_reason=trace["stop_reason"])
    last = trace["steps"][-1]
    leading = ", ".join(f"{name} ({p:.2f})" for name, p in last["top"][:3])
    if trace["stop_reason"] == "quit":
        say(f"Stopped after {trace['n_queries']} answers. Leading candidates: {leading}.")
    elif trace["stop_reason"] == "singleton":
        say(f"\nMy answer: {trace['prediction']} (the conformal set holds only it, after {trace['n_queries']} "
            "questions).")
    else:
        members = last.get("set", [])
        if members:
            say(f"\nOut of questions. My guess: {trace['prediction']}; the conformal set still holds "
                f"{len(members)}: {', '.join(members[:8])}{' ...' if len(members) > 8 else ''}.")
        else:
            say(f"\nOut of questions. My guess: {trace['prediction']} (no {cfg.noun} is certain enough for the set; "
                f"leading candidates: {leading}).")
    _save(path, transcript)
    say(f"Transcript saved to {path}.")
    return 0


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
