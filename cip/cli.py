"""The ``cip`` command line: ``cip play``, ``cip calibrate``, ``cip eval [--quick]`` (paper §4-5 as tools).

Options come from :class:`cip.evaluate.CIPConfig` (``--config file.yaml`` plus ``--key value`` overrides);
``cip <command> --help`` lists them all.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

USAGE = """usage: cip <command> [--config FILE.yaml] [--key value ...]

Conformal Information Pursuit (Chan et al., NeurIPS 2025): agents that choose the next question by the
expected size of a conformal prediction set.

commands:
  play        you think of an item, the agent asks yes/no questions (answer y / n / u = unknown / q = quit);
              after each answer it shows the prediction set and the top probabilities. Ctrl-C saves the
              transcript. --predictor llm|table|auto (auto, the default: the embedded SmolLM2-135M model when
              it is prepared in the cache, else the exact-Bayes table predictor).
  calibrate   per history length k, the split-conformal threshold tau_k -> --output thresholds.json
  eval        play simulated games for each method (--methods cip-code cip-paper ip random direct), write
              records.jsonl (resumable), summary.json and plots to --out_dir. --quick: minutes on a CPU.

criteria: cip-paper = mean prediction-set size (the paper's objective); cip-code = the Fano-style bound the
reference code computes; cip-fano = that bound with the empirical miscoverage (our extension); ip = mean
entropy; random; direct = the LLM proposes the next question.
quantile rules: --quantile_rule finite-sample (paper, Alg. 1) | plain (reference code).

examples:
  cip play --predictor table
  cip calibrate --kb awa2 --predictor table --output runs/thresholds_awa2.json
  cip eval --quick --out_dir runs/cip_quick
  cip eval --config configs/cip/awa2_table.yaml
"""


@dataclass
class PlayOptions:
    """Options of ``cip play`` only."""

    criterion: str = field(default="cip-code", metadata={"help": "cip-code, cip-paper, cip-fano, ip or random"})
    transcript: str = "cip_transcript.json"


@dataclass
class CalibrateOptions:
    """Options of ``cip calibrate`` only."""

    output: str = "thresholds.json"


def _explicit_keys(argv: Sequence[str]) -> set[str]:
    keys = {a[2:].split("=")[0] for a in argv if a.startswith("--")}
    if "--config" in argv:
        from harness.config import load_yaml

        path = argv[list(argv).index("--config") + 1] if list(argv).index("--config") + 1 < len(argv) else None
        if path:
            keys |= set(load_yaml(path))
    return keys


def _parse(types: Any, argv: Sequence[str]) -> Any:
    from harness.config import parse_config

    return parse_config(types, list(argv))


# --------------------------------------------------------------------------------------------- play
def play(argv: Sequence[str], stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """The interactive game. ``stdin``/``stdout`` default to the terminal (tests pass scripted streams)."""
    from cip.agent import Agent, AgentConfig
    from cip.evaluate import CIPConfig, build, resolve_predictor_kind
    from cip.knowledge import KnowledgeBaseError, normalize_answer

    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    cfg, opts = _parse((CIPConfig, PlayOptions), argv)
    explicit = _explicit_keys(argv)
    kind = resolve_predictor_kind(cfg)
    if kind == "llm" and "n_cal" not in explicit and not cfg.thresholds:
        cfg.n_cal = 10  # quick on-the-fly calibration for an interactive session (cached for the next game)
    if "max_queries" not in explicit:
        cfg.max_queries = 12 if kind == "llm" else 15
    cfg.progress = False

    def say(text: str = "") -> None:
        stdout.write(text + "\n")
        stdout.flush()

    say(f"Loading ({'LLM predictor: ' + cfg.model if kind == 'llm' else 'table predictor'}) ...")
    setup = build(cfg)
    from cip.evaluate import thresholds_for_seed

    cache_dir = None
    if not cfg.thresholds:
        from harness.embedded import cache_root

        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{Path(cfg.kb).stem}-{setup.model_name}-{cfg.quantile_rule}")
        cache_dir = cache_root() / "cip-play" / slug
        cached = cache_dir / "thresholds" / f"seed{cfg.seeds[0]}.json"
        say(f"{'Loading cached' if cached.is_file() else 'Calibrating'} conformal thresholds (alpha={cfg.alpha}, "
            f"N={cfg.n_cal}, cache {cached}); pass --thresholds FILE (from `cip calibrate`) to use your own.")
    thresholds = thresholds_for_seed(cfg, setup, cfg.seeds[0], cache_dir)
    agent = Agent(setup.env, setup.predictor, thresholds,
                  AgentConfig(criterion=opts.criterion, alpha=cfg.alpha, n_est=cfg.n_est, est_source=cfg.est_source,
                              max_queries=cfg.max_queries, stop_singleton=True, tie_break=cfg.tie_break,
                              nonempty_sets=cfg.nonempty_sets))
    names = setup.env.labels
    say(f"\nThink of one of these {len(names)} {cfg.noun}s: {', '.join(names)}.")
    say("Answer each question with y (yes), n (no), u (unknown) or q (quit).\n")
    transcript: dict[str, Any] = {"labels": names, "criterion": opts.criterion, "steps": [], "turns": []}

    def show(step: dict[str, Any]) -> None:
        transcript["steps"].append(step)
        top = ", ".join(f"{name} {p:.2f}" for name, p in step["top"])
        say(f"[after {step['k']} answers] prediction set ({len(step['set'])}): "
            f"{', '.join(step['set']) if len(step['set']) <= 12 else str(len(step['set'])) + ' items'}")
        say(f"  top probabilities: {top}")

    def ask(question: str) -> str | None:
        while True:
            stdout.write(f"Q{len(transcript['turns']) + 1}: {question} [y/n/u/q] ")
            stdout.flush()
            line = stdin.readline()
            if line == "":  # end of input
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
    final_set = trace["steps"][-1].get("set", [])
    if trace["stop_reason"] == "quit":
        say("\nStopped.")
    say(f"\nMy guess: {trace['prediction']}  (prediction set: {', '.join(final_set)})")
    _save(path, transcript)
    say(f"Transcript saved to {path}.")
    return 0


def _save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str))


# ------------------------------------------------------------------------------------ calibrate/eval
def calibrate_cmd(argv: Sequence[str]) -> int:
    from cip.evaluate import CIPConfig, run_calibrate

    cfg, opts = _parse((CIPConfig, CalibrateOptions), argv)
    th = run_calibrate(cfg, opts.output)
    taus = ", ".join(f"k={k}: {v:.4f}" for k, v in th.taus.items())
    print(f"thresholds (alpha={th.alpha}, N={th.n_cal}, {th.quantile_rule}, model {th.model}): {taus}")
    print(f"wrote {opts.output}")
    return 0


def eval_cmd(argv: Sequence[str]) -> int:
    from cip.evaluate import CIPConfig, apply_quick, run_eval

    cfg = apply_quick(_parse(CIPConfig, argv), _explicit_keys(argv))
    summary = run_eval(cfg)
    print(f"\npredictor: {summary['predictor']}; results in {cfg.out_dir}")
    header = f"{'method':10s} {'acc@stop':>9s} {'succ.singleton':>15s} {'q->singleton':>13s} {'set@L':>7s} {'cov@L':>7s}"
    print(header)
    for method, row in summary["per_method"].items():
        vals = [row.get(k) for k in ("correct", "success_singleton", "queries_to_correct_singleton",
                                     f"set_size@{cfg.max_queries}", f"covered@{cfg.max_queries}")]
        cells = [f"{v:.3f}" if isinstance(v, float) else "   -" for v in vals]
        print(f"{method:10s} {cells[0]:>9s} {cells[1]:>15s} {cells[2]:>13s} {cells[3]:>7s} {cells[4]:>7s}")
    return 0


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"play": play, "calibrate": calibrate_cmd, "eval": eval_cmd}


def main(argv: Sequence[str] | None = None) -> int:
    from harness.cli import dispatch

    return dispatch("cip", USAGE, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
