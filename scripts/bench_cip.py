"""Benchmarks for cip/ (issue 4 targets), each quoting its numbers from one run.

``--part speed``: one 20 Questions selection step on the embedded model: 85 AwA2 candidate queries x 4
simulated answers (340 posteriors) after a 3-turn history.
  * fast: the agent's step (``Agent.score_candidates``): identical (question, answer) histories computed once,
    all histories in ONE ``next_token_logprobs`` call, prefix KV cache reuse, batch 64;
  * naive: one forward per posterior (``prefix_reuse=False, batch_size=1``), all 340 rows
    (``--naive_rows n`` times n rows and scales to 340, saying so).
  The ratio, and that the two give the same probabilities, are printed and written to JSON.

``--part table``: with the table predictor on the AwA2 20 classes, every criterion plays every class once
per seed (seeds 0..S-1, thresholds calibrated per seed, N=100, alpha=0.1, 20 queries); reports accuracy at
the stop, success rate (a correct singleton set is reached) and mean queries to a correct singleton set,
with 95% bootstrap intervals over games and the per-seed means.

``--kb everyday`` runs ``--part table`` on the built-in knowledge base instead of AwA2.

``--part miscal``: the miscalibration study (issue 8): the exact-Bayes predictor on AwA2 miscalibrated by the
wrappers of :mod:`cmikit.cip.miscalibration` (over-confidence, first-label bias, unmodelled answer noise), swept one at
a time (``MISCAL_LEVELS``); per level: ECE, held-out coverage, and per criterion queries to a correct singleton
(95% CI), success rate, accuracy after 5/10/20 questions (and its paired difference to IP with a bootstrap
interval), in-game coverage. ``--plot`` draws it; ``--replot JSON`` redraws a saved run.

``--part players`` (issue 17): ``cip play``'s game (:func:`cmikit.cip.game.play_game`, table predictor with
"none of these", N=100, alpha=0.1, 20 questions, 3 guesses) against scripted players, on the built-in KB and
AwA2-20, seeds 0..S-1: truthful (cip-floor and IP), one mistaken answer at a random question of the
truthful game, "u" on a random 20% of questions, and items not in the KB (each item held out in turn,
answering from its row; then the game learns it and a replay must confirm it). Reports success rates,
questions, guesses, how held-out games end, and how often cip-floor's question equals IP's.

Run: ``.venv/bin/python scripts/bench_cip.py --part all --out runs/bench_cip.json``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def bench_speed(naive_rows: int, batch_size: int) -> dict:
    from cmikit.cip.agent import Agent, AgentConfig
    from cmikit.cip.environments import TwentyQuestions
    from cmikit.cip.knowledge import KnowledgeBase, Turn
    from cmikit.cip.predictors import LLMPredictor, TwentyQuestionsPrompt
    from cmikit.harness.backends import TransformersBackend

    kb = KnowledgeBase.load("awa2")
    backend = TransformersBackend.from_ref("smollm2-135m-instruct", batch_size=batch_size)
    predictor = LLMPredictor(backend, TwentyQuestionsPrompt(kb.classes, noun="animal"))
    env = TwentyQuestions(kb, remove_asked=False)
    from cmikit.cip.conformal import ConformalThresholds

    thresholds = ConformalThresholds(0.1, {k: [-0.01] * 20 for k in range(0, 6)}, list(kb.classes))
    agent = Agent(env, predictor, thresholds, AgentConfig(criterion="cip-code", n_est=4))
    history = tuple(Turn(q, kb.answer(1, q)) for q in kb.questions[10:13])
    post = agent.posterior(history, None)
    candidates = list(kb.questions)
    # The rows the naive loop scores: every (candidate, estimation sample), duplicates included.
    items, _ = env.estimation_items(np.random.default_rng(0), 4, "prior", post)
    rows = [history + (Turn(q, a),) for q in candidates for a in env.answers(items, q)]

    t0 = time.perf_counter()
    agent.score_candidates(candidates, history, post, 3, np.random.default_rng(0))
    fast_s = time.perf_counter() - t0
    n_unique = predictor.n_posteriors - 1
    print(f"  fast step: {fast_s:.2f} s for {n_unique} unique posteriors", flush=True)

    t0 = time.perf_counter()
    fast_all = predictor.predict(rows)  # no de-duplication: prefix reuse + batching alone
    batched_nodedupe_s = time.perf_counter() - t0
    print(f"  batched, no de-dup: {batched_nodedupe_s:.2f} s for {len(rows)} posteriors", flush=True)

    backend.prefix_reuse, backend.batch_size = False, 1
    subset = list(range(len(rows)))
    if naive_rows < len(rows):
        subset = sorted(np.random.default_rng(1).choice(len(rows), naive_rows, replace=False).tolist())
    t0 = time.perf_counter()
    naive = np.stack([predictor.predict([rows[i]])[0] for i in subset])
    naive_measured_s = time.perf_counter() - t0
    naive_s = naive_measured_s * len(rows) / len(subset)
    max_diff = float(np.abs(naive - fast_all[subset]).max())
    return {
        "setting": "AwA2 20 classes, 85 candidate queries x 4 simulated answers, 3-turn history, SmolLM2-135M",
        "n_posteriors": len(rows), "n_unique_posteriors": n_unique, "batch_size": batch_size,
        "fast_step_s": fast_s, "batched_no_dedupe_s": batched_nodedupe_s,
        "naive_rows_timed": len(subset), "naive_measured_s": naive_measured_s, "naive_s_for_all_rows": naive_s,
        "speedup_step_vs_naive": naive_s / fast_s, "speedup_batched_only_vs_naive": naive_s / batched_nodedupe_s,
        "max_abs_prob_diff_naive_vs_batched": max_diff,
    }


def bench_table(seeds: int, n_cal: int, alpha: float, max_queries: int, criteria: list[str],
                est_source: str, noise: float, tie_break: str = "first", nonempty_sets: bool = False,
                kb_name: str = "awa2") -> dict:
    from cmikit.cip.agent import Agent, AgentConfig
    from cmikit.cip.conformal import UniformHistorySampler, calibrate
    from cmikit.cip.environments import TwentyQuestions
    from cmikit.cip.knowledge import KnowledgeBase
    from cmikit.harness.evaluation import bootstrap_ci

    kb = KnowledgeBase.load(kb_name)
    from cmikit.cip.predictors import TablePredictor

    predictor = TablePredictor(kb, noise=noise)
    env = TwentyQuestions(kb)
    out: dict = {"setting": {"kb": kb_name, "seeds": seeds, "n_cal": n_cal, "alpha": alpha, "max_queries": max_queries,
                             "est_source": est_source, "table_noise": noise, "n_est": 4, "tie_break": tie_break,
                             "nonempty_sets": nonempty_sets}}
    for criterion in criteria:
        games = []
        for seed in range(seeds):
            th = calibrate(predictor, UniformHistorySampler.from_knowledge_base(kb), alpha, n_cal, max_queries + 1,
                           seed=seed, min_length=0, progress=False)
            agent = Agent(env, predictor, th, AgentConfig(criterion=criterion, alpha=alpha, max_queries=max_queries,
                                                          est_source=est_source, record_candidates=False,
                                                          tie_break=tie_break, nonempty_sets=nonempty_sets))
            for item in env.test_items():
                trace = agent.play(item, seed=1000 * seed + item)
                hit = [s["k"] for s in trace["steps"] if s.get("set") == [trace["true_label"]]]
                games.append({"seed": seed, "correct": float(trace["correct"]),
                              "success": float(bool(hit)), "k_singleton": hit[0] if hit else None})
        succ = [g["k_singleton"] for g in games if g["k_singleton"] is not None]
        res = {"n_games": len(games)}
        for key, vals in (("accuracy_at_stop", [g["correct"] for g in games]),
                          ("success_rate", [g["success"] for g in games]),
                          ("queries_to_correct_singleton", succ)):
            lo, hi = bootstrap_ci(vals) if vals else (float("nan"), float("nan"))
            res[key] = {"mean": float(np.mean(vals)) if vals else float("nan"), "ci95": [lo, hi]}
            res[key]["per_seed"] = [
                float(np.mean(v)) if (v := [x for g, x in zip(games if key != "queries_to_correct_singleton"
                                                              else [g for g in games if g["k_singleton"] is not None],
                                                              vals) if g["seed"] == s]) else None
                for s in range(seeds)]
        out[criterion] = res
        print(f"{criterion:10s} acc {res['accuracy_at_stop']['mean']:.3f}  success {res['success_rate']['mean']:.3f}"
              f"  queries to correct singleton {res['queries_to_correct_singleton']['mean']:.2f} "
              f"CI {np.round(res['queries_to_correct_singleton']['ci95'], 2).tolist()}", flush=True)
    return out


class ScriptedPlayer:
    """A player answering from an item's row of a knowledge base (``row``: question -> "Yes."/"No."), with
    an optional mistaken answer at question ``lie_at`` and "I don't know." with probability ``p_unknown``;
    ``name`` is the item (``confirm`` says yes to it only)."""

    def __init__(self, name: str, row: dict, lie_at: int | None = None, p_unknown: float = 0.0,
                 rng: np.random.Generator | None = None) -> None:
        self.name, self.row, self.lie_at, self.p_unknown = name, row, lie_at, p_unknown
        self.rng, self.n = rng or np.random.default_rng(0), 0
        self.unknown_screens = 0

    def answer(self, question: str) -> str:
        from cmikit.cip.knowledge import NO, UNKNOWN, YES

        i, self.n = self.n, self.n + 1
        if self.p_unknown and self.rng.random() < self.p_unknown:
            return UNKNOWN
        truth = self.row.get(question, UNKNOWN)
        if i == self.lie_at and truth != UNKNOWN:
            return NO if truth == YES else YES
        return truth

    def confirm(self, guess: str) -> bool:
        return guess == self.name


def _players_game(kb, seed: int, criterion: str, n_cal: int, alpha: float, max_queries: int, noise: float,
                  none_prior: float):
    from cmikit.cip.agent import Agent, AgentConfig
    from cmikit.cip.conformal import UniformHistorySampler, calibrate
    from cmikit.cip.environments import TwentyQuestions
    from cmikit.cip.predictors import OpenWorldPredictor, TablePredictor

    predictor = OpenWorldPredictor(TablePredictor(kb, noise), kb, noise, none_prior)
    th = calibrate(predictor, UniformHistorySampler.from_knowledge_base(kb), alpha, n_cal, max_queries + 1,
                   seed=seed, min_length=0, progress=False)
    agent = Agent(TwentyQuestions(kb), predictor, th, AgentConfig(criterion=criterion, alpha=alpha,
                                                                   max_queries=max_queries))
    return agent, predictor


def _choice_stats(trace: dict) -> tuple[int, int, int]:
    """(scored steps, steps where the chosen question is also IP's argmin, steps decided by the entropy
    tie-break of cip-floor: several candidates share the smallest set-size term)."""
    from cmikit.cip.criteria import FLOOR_TIE_WEIGHT

    n = same = tie = 0
    for step in trace["steps"]:
        cands, q = step.get("candidates"), step.get("question")
        if not cands or q is None:
            continue
        names = list(cands)
        ip = np.array([cands[c]["ip"] for c in names])
        floor = np.array([cands[c]["cip-floor"] for c in names])
        size_term = floor - FLOOR_TIE_WEIGHT * ip
        n += 1
        same += int(np.isclose(ip[names.index(q)], ip.min(), atol=1e-12))
        tie += int((size_term <= size_term.min() + 1e-9).sum() > 1)
    return n, same, tie


def bench_players(seeds: int, n_cal: int, alpha: float, max_queries: int, noise: float, kbs: list[str],
                  none_prior: float = 0.1, max_guesses: int = 3, none_threshold: float = 0.9) -> dict:
    from cmikit.cip.game import GameSettings, learn_item, play_game, teach_target
    from cmikit.cip.knowledge import KnowledgeBase

    settings = GameSettings(max_queries, max_guesses, none_threshold)
    out: dict = {"setting": {"seeds": seeds, "n_cal": n_cal, "alpha": alpha, "max_queries": max_queries,
                             "table_noise": noise, "none_prior": none_prior, "max_guesses": max_guesses,
                             "none_threshold": none_threshold, "criterion": "cip-floor", "n_est": 4}}

    def rows(kb):
        return {c: {q: kb.answer(i, q) for q in kb.questions} for i, c in enumerate(kb.classes)}

    for kb_name in kbs:
        kb = KnowledgeBase.load(kb_name)
        truth = rows(kb)
        res: dict = {}
        games: dict[str, list] = {"truthful": [], "truthful_ip": [], "one_mistake": [], "unknown_20": [],
                                  "held_out": [], "held_out_replay": []}
        choice = [0, 0, 0]
        t0 = time.perf_counter()
        for seed in range(seeds):
            agents = {c: _players_game(kb, seed, c, n_cal, alpha, max_queries, noise, none_prior)
                      for c in ("cip-floor", "ip")}
            for i, name in enumerate(kb.classes):
                game_seed = 1000 * seed + i
                rng = np.random.default_rng(game_seed)
                for label, crit in (("truthful", "cip-floor"), ("truthful_ip", "ip")):
                    agent, pred = agents[crit]
                    trace = play_game(agent, pred, ScriptedPlayer(name, truth[name]), settings, seed=game_seed)
                    games[label].append(trace)
                    if crit == "cip-floor":
                        for j, v in enumerate(_choice_stats(trace)):
                            choice[j] += v
                agent, pred = agents["cip-floor"]
                lie_at = int(rng.integers(max(1, games["truthful"][-1]["n_questions"])))
                games["one_mistake"].append(play_game(agent, pred, ScriptedPlayer(name, truth[name], lie_at=lie_at),
                                                      settings, seed=game_seed))
                games["unknown_20"].append(play_game(agent, pred, ScriptedPlayer(name, truth[name], p_unknown=0.2,
                                                                                 rng=rng), settings, seed=game_seed))
                # held out: a KB without the item, the player answering from its row
                small = kb.without(i)
                agent_h, pred_h = _players_game(small, seed, "cip-floor", n_cal, alpha, max_queries, noise, none_prior)
                trace = play_game(agent_h, pred_h, ScriptedPlayer(name, truth[name]), settings, seed=game_seed)
                games["held_out"].append(trace)
                if trace["outcome"] != "dont_know":
                    continue
                other = teach_target(trace)
                differing = [q for q in kb.questions if truth[name][q] != truth[other][q]]
                asked = {q for q, _ in trace["asked"]}
                question = next((q for q in differing if q not in asked), differing[0] if differing else None)
                learned = learn_item(small, trace, name, question, truth[name][question] if question else None, other)
                agent_l, pred_l = _players_game(learned, seed, "cip-floor", n_cal, alpha, max_queries, noise,
                                                none_prior)
                games["held_out_replay"].append(play_game(agent_l, pred_l, ScriptedPlayer(name, truth[name]),
                                                          settings, seed=game_seed))
            print(f"  {kb_name} seed {seed} done ({time.perf_counter() - t0:.0f} s)", flush=True)

        def summary(traces: list, name_of: list | None = None) -> dict:
            ok = [t["outcome"] == "confirmed" for t in traces]
            conf = [t for t in traces if t["outcome"] == "confirmed"]
            return {"n_games": len(traces), "success": float(np.mean(ok)) if traces else float("nan"),
                    "questions_when_confirmed": float(np.mean([t["n_questions"] for t in conf])) if conf else None,
                    "guesses_when_confirmed": float(np.mean([len(t["guesses"]) + 1 for t in conf])) if conf else None,
                    "within_20_questions_3_guesses": float(np.mean([t["outcome"] == "confirmed" and t["n_questions"]
                                                                    <= 20 and len(t["guesses"]) < 3 for t in traces])),
                    "empty_set_steps": int(sum(not s["set"] for t in traces for s in t["steps"]))}

        names = [c for _ in range(seeds) for c in kb.classes]
        for label in ("truthful", "truthful_ip", "one_mistake", "unknown_20"):
            res[label] = summary(games[label])
            res[label]["confirmed_wrong"] = sum(t["outcome"] == "confirmed" and t["item"] != n
                                                for t, n in zip(games[label], names))
        held = games["held_out"]
        res["held_out"] = {
            "n_games": len(held),
            "dont_know": float(np.mean([t["outcome"] == "dont_know" for t in held])),
            "dont_know_none_of_these": float(np.mean([t["reason"] == "none_of_these" for t in held])),
            "dont_know_guesses_out": float(np.mean([t["reason"] == "guesses_out" for t in held])),
            "wrong_item_confirmed": float(np.mean([t["outcome"] == "confirmed" for t in held])),
            "wrong_guesses": float(np.mean([len(t["guesses"]) for t in held])),
            "questions": float(np.mean([t["n_questions"] for t in held])),
        }
        res["held_out_replay"] = summary(games["held_out_replay"])
        t, ip = res["truthful"]["questions_when_confirmed"], res["truthful_ip"]["questions_when_confirmed"]
        res["truthful_questions_vs_ip"] = t / ip if t and ip else None
        res["cip_floor_choice"] = {"scored_steps": choice[0], "equals_ip_choice": choice[1] / max(choice[0], 1),
                                   "decided_by_entropy_tie_break": choice[2] / max(choice[0], 1)}
        out[kb_name] = res
        print(json.dumps({kb_name: res}, indent=1), flush=True)
    return out


MISCAL_LEVELS = {
    "temperature": [1.0, 0.7, 0.5, 0.3, 0.1],
    "first_label_bias": [1.0, 3.0, 10.0, 30.0],
    "unmodelled_noise": [0.05, 0.1, 0.2, 0.3],
}


def bench_miscalibration(seeds: int, n_cal: int, alpha: float, max_queries: int, criteria: list[str],
                         est_source: str, kinds: list[str], budgets: tuple[int, ...] = (5, 10, 20)) -> dict:
    """The miscalibration study (issue 8 item 4): per wrapper and strength, ECE, queries to a correct
    singleton, accuracy at fixed budgets and coverage (in-game and on held-out exchangeable histories)."""
    from cmikit.cip.agent import Agent, AgentConfig
    from cmikit.cip.conformal import UniformHistorySampler, calibrate
    from cmikit.cip.environments import TwentyQuestions
    from cmikit.cip.knowledge import KnowledgeBase
    from cmikit.cip.miscalibration import (
        FirstLabelBiasPredictor,
        TemperedPredictor,
        noisy_world,
        predictor_ece,
    )
    from cmikit.cip.predictors import TablePredictor
    from cmikit.harness.evaluation import bootstrap_ci

    kb = KnowledgeBase.load("awa2")
    out: dict = {"setting": {"kb": "awa2", "seeds": seeds, "n_cal": n_cal, "alpha": alpha,
                             "max_queries": max_queries, "est_source": est_source, "n_est": 4,
                             "predictor_noise": 0.05, "world_noise_default": 0.05, "levels": MISCAL_LEVELS}}
    for kind in kinds:
        out[kind] = []
        for level in MISCAL_LEVELS[kind]:
            row: dict = {"level": level, "ece": [], "criteria": {}}
            games: dict[str, list[dict]] = {c: [] for c in criteria}
            heldout: list[float] = []
            for seed in range(seeds):
                rho = level if kind == "unmodelled_noise" else 0.05
                world = noisy_world(kb, rho, seed)
                predictor = TablePredictor(kb, noise=0.05)
                if kind == "temperature":
                    predictor = TemperedPredictor(predictor, level)
                elif kind == "first_label_bias":
                    predictor = FirstLabelBiasPredictor(predictor, level)
                sampler = UniformHistorySampler.from_knowledge_base(world)
                env = TwentyQuestions(world)
                row["ece"].append(predictor_ece(predictor, sampler, max_queries, 100, seed))
                th = calibrate(predictor, sampler, alpha, n_cal, max_queries + 1, seed=seed, min_length=0,
                               progress=False)
                rng = np.random.default_rng(30_000 + seed)
                ex = [(k, sampler.sample(k, rng)) for k in range(max_queries + 1) for _ in range(50)]
                probs = predictor.predict([e.history for _, e in ex])
                heldout.append(float(np.mean([th.prediction_set(p, k)[e.label] for (k, e), p in zip(ex, probs)])))
                for criterion in criteria:
                    agent = Agent(env, predictor, th, AgentConfig(criterion=criterion, alpha=alpha,
                                                                  max_queries=max_queries, est_source=est_source,
                                                                  record_candidates=False))
                    for item in env.test_items():
                        trace = agent.play(item, seed=1000 * seed + item)
                        steps = trace["steps"]
                        hit = [s["k"] for s in steps if s.get("set") == [trace["true_label"]]]
                        games[criterion].append({
                            "k_singleton": hit[0] if hit else None,
                            "acc": {b: float(steps[min(b, len(steps) - 1)]["correct"]) for b in budgets},
                            "covered": float(np.mean([s["covered"] for s in steps])),
                            "set_size": float(np.mean([len(s["set"]) for s in steps]))})
            row["ece_mean"] = float(np.mean(row["ece"]))
            row["heldout_coverage"] = float(np.mean(heldout))
            for criterion, gs in games.items():
                succ = [g["k_singleton"] for g in gs if g["k_singleton"] is not None]
                lo, hi = bootstrap_ci(succ) if succ else (float("nan"), float("nan"))
                row["criteria"][criterion] = {
                    "n_games": len(gs), "success_rate": len(succ) / len(gs),
                    "queries_to_correct_singleton": float(np.mean(succ)) if succ else float("nan"),
                    "queries_ci95": [lo, hi],
                    **{f"acc@{b}": float(np.mean([g["acc"][b] for g in gs])) for b in budgets},
                    "in_game_coverage": float(np.mean([g["covered"] for g in gs])),
                    "mean_set_size": float(np.mean([g["set_size"] for g in gs]))}
            if "ip" in games:  # paired (same seed and item) differences to IP, with 95% bootstrap intervals
                rng = np.random.default_rng(0)
                for criterion, gs in games.items():
                    if criterion == "ip":
                        continue
                    for b in budgets:
                        diff = np.array([g["acc"][b] - h["acc"][b] for g, h in zip(gs, games["ip"])])
                        boots = [diff[rng.integers(len(diff), size=len(diff))].mean() for _ in range(2000)]
                        row["criteria"][criterion][f"acc@{b}_minus_ip"] = {
                            "mean": float(diff.mean()), "ci95": [float(np.quantile(boots, 0.025)),
                                                                 float(np.quantile(boots, 0.975))]}
            out[kind].append(row)
            cells = "  ".join(f"{c}: q {v['queries_to_correct_singleton']:.2f} succ {v['success_rate']:.2f} "
                              f"acc@10 {v['acc@10']:.2f}" for c, v in row["criteria"].items())
            print(f"{kind}={level:g}: ECE {row['ece_mean']:.3f}, held-out coverage {row['heldout_coverage']:.3f} | "
                  f"{cells}", flush=True)
    return out


def plot_miscalibration(result: dict, path: str | Path) -> None:
    """One column per wrapper: queries to a correct singleton (successful games) and accuracy after 10 questions
    against the wrapper's strength (its ECE in the axis label), one line per criterion."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in MISCAL_LEVELS if k in result]
    fig, axes = plt.subplots(2, len(kinds), figsize=(4.5 * len(kinds), 7), squeeze=False)
    for j, kind in enumerate(kinds):
        rows = result[kind]
        for criterion in rows[0]["criteria"]:
            x = [r["level"] for r in rows]
            axes[0, j].plot(x, [r["criteria"][criterion]["queries_to_correct_singleton"] for r in rows], "o-",
                            label=criterion)
            axes[1, j].plot(x, [r["criteria"][criterion]["acc@10"] for r in rows], "o-", label=criterion)
        for i, ylab in enumerate(("queries to correct singleton", "accuracy after 10 questions")):
            eces = ", ".join(f"{r['ece_mean']:.2f}" for r in rows)
            axes[i, j].set_xlabel(f"{kind} (ECE {eces})", fontsize=8)
            axes[i, j].set_ylabel(ylab)
            axes[i, j].grid(alpha=0.3)
        if kind == "temperature":
            axes[0, j].invert_xaxis()
            axes[1, j].invert_xaxis()
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("C-IP vs IP under miscalibration (AwA2 20 classes, table predictor, alpha=0.1)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["speed", "table", "miscal", "players", "all"], default="all")
    parser.add_argument("--kinds", nargs="+", default=list(MISCAL_LEVELS), help="miscalibration wrappers to sweep")
    parser.add_argument("--plot", default="", help="--part miscal: where to save the plot (PNG)")
    parser.add_argument("--replot", default="", help="redraw --plot from this saved --part miscal JSON and exit")
    parser.add_argument("--naive_rows", type=int, default=340, help="rows the naive loop times (scaled to 340)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--n_cal", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--max_queries", type=int, default=20)
    parser.add_argument("--est_source", default="prior")
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--tie_break", default="first", choices=["first", "random"])
    parser.add_argument("--nonempty_sets", action="store_true")
    parser.add_argument("--kb", default="awa2", help="knowledge base for --part table: awa2 or everyday (built-in)")
    parser.add_argument("--player_kbs", nargs="+", default=["everyday", "awa2"], help="knowledge bases for --part players")
    parser.add_argument("--criteria", nargs="+", default=["cip-code", "cip-paper", "ip", "random"])
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0 = torch's default); 1 keeps timings sane on an oversubscribed machine")
    parser.add_argument("--out", default="runs/bench_cip.json")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.replot:
        plot_miscalibration(json.loads(Path(args.replot).read_text())["miscalibration"], args.plot)
        print(f"wrote {args.plot}")
        return
    result: dict = {}
    if args.part in ("table", "all"):
        result["table"] = bench_table(args.seeds, args.n_cal, args.alpha, args.max_queries, args.criteria,
                                      args.est_source, args.noise, args.tie_break, args.nonempty_sets, args.kb)
    if args.part == "players":
        import os

        result["players"] = bench_players(args.seeds, args.n_cal, args.alpha, args.max_queries, args.noise,
                                          args.player_kbs)
        result["players"]["load_average_1min"] = os.getloadavg()[0]
    if args.part == "miscal":
        result["miscalibration"] = bench_miscalibration(args.seeds, args.n_cal, args.alpha, args.max_queries,
                                                        args.criteria, args.est_source, args.kinds)
        if args.plot:
            plot_miscalibration(result["miscalibration"], args.plot)
            print(f"wrote {args.plot}")
    if args.part in ("speed", "all"):
        result["speed"] = bench_speed(args.naive_rows, args.batch_size)
        import os

        import torch

        result["speed"].update(torch_threads=torch.get_num_threads(), load_average_1min=os.getloadavg()[0])
        s = result["speed"]
        print(f"speed: fast step {s['fast_step_s']:.2f} s ({s['n_unique_posteriors']} unique posteriors), "
              f"batched without de-dup {s['batched_no_dedupe_s']:.2f} s, naive {s['naive_s_for_all_rows']:.1f} s "
              f"({s['naive_rows_timed']} rows timed) -> {s['speedup_step_vs_naive']:.1f}x "
              f"(batching + prefix reuse alone: {s['speedup_batched_only_vs_naive']:.1f}x); "
              f"max |p_naive - p_batched| = {s['max_abs_prob_diff_naive_vs_batched']:.2e}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
