"""``cip calibrate`` and ``cip eval``: build the pieces from a config, calibrate, play simulated games through
the harness (resumable JSONL), summarise and plot (paper §4.2 and App. G.9-G.11).

Metrics per game (``record["metrics"]``): accuracy at the stop (``correct``), queries asked, whether and when a
correct singleton set was reached, and per history length k: ``acc@k`` (argmax correct at k), ``acc_cum@k``
(the paper's 20Q rule, G.9: correct once -> correct at every later k), ``set_size@k`` and ``covered@k``
(empirical coverage, G.11). ``summary.json`` holds the harness's per-method means with bootstrap intervals,
plus curves over k, coverage against 1-alpha (on the games' own histories and on held-out exchangeable
calibration-style histories, where the guarantee applies) and the post-hoc stopping rules.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cip.agent import Agent, AgentConfig, apply_stopping
from cip.conformal import (
    QUANTILE_RULES,
    ConformalThresholds,
    TrajectoryPrefixSampler,
    UniformHistorySampler,
    calibrate,
)
from cip.criteria import ALL_CRITERIA, SCORED_CRITERIA
from cip.knowledge import KnowledgeBase


@dataclass
class CIPConfig:
    """Settings shared by ``cip calibrate``, ``cip eval`` and ``cip play``.

    Environment: ``task`` 20q or mediq; ``kb`` a knowledge-base JSON or alias (everyday = the project's own,
    awa2 = the AwA2 dataset, see ``cmikit data``); ``answerer`` table or llm; ``answer_style`` yes_no or free_text;
    ``query_set`` closed (the bank; ``max_candidates`` scores a random subset per step) or open (the LLM
    proposes ``n_candidates`` per step).
    Predictor: ``predictor`` llm (the embedded model where it can serve) or table; ``model``; ``label_style``.
    Conformal: ``alpha``, ``n_cal`` (N per length), ``quantile_rule`` (finite-sample = paper, plain = code),
    ``set_rule``, ``replacement`` (uniform sampler), ``thresholds`` (a saved file; else calibrate).
    Agent: ``methods``, ``n_est``, ``est_source``, ``max_queries``, ``stop_epsilon``, ``tie_break``,
    ``nonempty_sets``.
    """

    task: str = field(default="20q", metadata={"choices": ["20q", "mediq"]})
    kb: str = "everyday"
    noun: str = "item"
    answerer: str = field(default="table", metadata={"choices": ["table", "llm"]})
    answer_style: str = field(default="yes_no", metadata={"choices": ["yes_no", "free_text"]})
    query_set: str = field(default="closed", metadata={"choices": ["closed", "open"]})
    n_candidates: int = 5
    max_candidates: int | None = None
    predictor: str = field(default="auto", metadata={"choices": ["auto", "llm", "table"], "help": (
        "auto (default): the LLM predictor on --model when that is not the embedded default or when the embedded "
        "SmolLM2-135M is prepared in the cache; otherwise the exact-Bayes table predictor")})
    model: str = "smollm2-135m-instruct"
    label_style: str = field(default="names", metadata={"choices": ["names", "letters"]})
    table_noise: float = 0.05
    batch_size: int = 64
    alpha: float = 0.1
    n_cal: int = 100
    quantile_rule: str = field(default="finite-sample", metadata={"choices": list(QUANTILE_RULES)})
    set_rule: str = field(default=">=", metadata={"choices": [">=", ">"]})
    replacement: bool = False
    trajectories: str | None = field(default=None, metadata={
        "help": "records.jsonl of a run with the 'direct' method: calibrate on prefixes of its games (eq. 14, "
                "for open query sets) instead of uniform histories"})
    thresholds: str | None = None
    methods: list[str] = field(default_factory=lambda: ["cip-code", "cip-paper", "cip-fano", "ip", "random"])
    n_est: int = 4
    est_source: str = field(default="prior", metadata={"choices": ["prior", "posterior", "exhaustive"]})
    max_queries: int = 20
    stop_epsilon: float = 0.0
    tie_break: str = field(default="first", metadata={"choices": ["first", "random"]})
    nonempty_sets: bool = False
    seeds: list[int] = field(default_factory=lambda: [0])
    n_games: int | None = None
    alphas: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.3, 0.4])
    mediq_dir: str | None = field(default=None, metadata={"help": "MediQ folder (default: the mediq dataset, "
                                  "$CMIKIT_DATA/mediq or fetched by `cmikit data fetch mediq`)"})
    specialty: str = "neurology"
    split: int = 0
    out_dir: str = "runs/cip_eval"
    quick: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        from cip.conformal import check_alpha

        check_alpha(self.alpha)
        for m in self.methods:
            if m not in ALL_CRITERIA:
                raise ValueError(f"methods: unknown method {m!r}; allowed: {', '.join(ALL_CRITERIA)}.")
        if self.max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {self.max_queries}.")
        if self.task == "20q" and self.answerer == "table" and ("direct" in self.methods or self.query_set == "open"):
            raise ValueError("Open questions (query_set open, or the 'direct' method) cannot be answered from the "
                             "knowledge-base table; add --answerer llm.")


QUICK_OVERRIDES = dict(kb="everyday", methods=["cip-code", "ip", "random"], n_cal=10, max_queries=3, n_games=5,
                       max_candidates=16, seeds=[0], alphas=[0.1, 0.2, 0.3, 0.4, 0.5])


def apply_quick(cfg: CIPConfig, explicit: set[str]) -> CIPConfig:
    """``--quick``: small settings that finish in minutes on 2 CPU cores (explicit options still win)."""
    if cfg.quick:
        for key, value in QUICK_OVERRIDES.items():
            if key not in explicit:
                setattr(cfg, key, value)
    return cfg


# ----------------------------------------------------------------------------------------- building
def resolve_predictor_kind(cfg: CIPConfig) -> str:
    if cfg.predictor != "auto":
        return cfg.predictor
    if cfg.task == "mediq":
        return "llm"
    try:
        from harness.embedded import is_prepared

        return "llm" if (cfg.model != "smollm2-135m-instruct" or is_prepared()) else "table"
    except Exception:  # pragma: no cover - harness import problems mean no LLM
        return "table"


@dataclass
class Setup:
    env: Any
    predictor: Any
    sampler: Any
    test_items: list[Any]
    backend: Any = None
    querier: Any = None
    model_name: str = ""


def build(cfg: CIPConfig, backend: Any = None) -> Setup:
    """Environment, predictor, calibration sampler and test items for a config."""
    from cip.environments import LLMAnswerer, LLMQuerier, MediQ, PatientLLM, TwentyQuestions, load_mediq_split
    from cip.predictors import LLMPredictor, MediQPrompt, TablePredictor, TwentyQuestionsPrompt

    kind = resolve_predictor_kind(cfg)
    needs_llm = kind == "llm" or cfg.answerer == "llm" or cfg.query_set == "open" or "direct" in cfg.methods
    if needs_llm and backend is None:
        from harness.backends import TransformersBackend

        backend = TransformersBackend.from_ref(cfg.model, batch_size=cfg.batch_size)
    if cfg.task == "mediq":
        from harness.data import data_dir as dataset_dir

        data_dir = Path(cfg.mediq_dir) if cfg.mediq_dir else dataset_dir("mediq")
        est = load_mediq_split(data_dir, cfg.specialty, cfg.split, "train")
        cal = load_mediq_split(data_dir, cfg.specialty, cfg.split, "cal")
        test = load_mediq_split(data_dir, cfg.specialty, cfg.split, "test")
        env = MediQ(est, patient=PatientLLM(backend) if cfg.answerer == "llm" else None)
        predictor = LLMPredictor(backend, MediQPrompt())

        def draw(rng: np.random.Generator):
            case = cal[int(rng.integers(len(cal)))]
            return env.label_of(case), case.context, case.queries

        sampler = UniformHistorySampler(draw, lambda label, ctx, q: _mediq_fact(cal, ctx, q), replacement=True)
        items = test[: cfg.n_games] if cfg.n_games else test
        return Setup(env, predictor, sampler, items, backend, model_name=cfg.model)
    kb = KnowledgeBase.load(cfg.kb)
    answerer = LLMAnswerer(backend, noun=cfg.noun, yes_no=cfg.answer_style == "yes_no") if cfg.answerer == "llm" else None
    querier = LLMQuerier(backend, kb.classes, noun=cfg.noun) if (cfg.query_set == "open" or "direct" in cfg.methods) else None
    env = TwentyQuestions(kb, answerer=answerer, querier=querier if cfg.query_set == "open" else None,
                          n_candidates=cfg.n_candidates, noun=cfg.noun, max_candidates=cfg.max_candidates)
    if kind == "llm":
        prompt = TwentyQuestionsPrompt(kb.classes, noun=cfg.noun, include_questions=cfg.answer_style == "yes_no",
                                       label_style=cfg.label_style)
        predictor = LLMPredictor(backend, prompt)
        model_name = cfg.model
    else:
        predictor = TablePredictor(kb, noise=cfg.table_noise)
        model_name = f"table(noise={cfg.table_noise})"
    if answerer is None:
        sampler = UniformHistorySampler.from_knowledge_base(kb, replacement=cfg.replacement)
    else:
        def draw(rng: np.random.Generator):
            return int(rng.integers(len(kb.classes))), None, kb.questions

        sampler = UniformHistorySampler(draw, lambda label, ctx, q: env.answer(label, q), cfg.replacement)
    if cfg.trajectories:
        sampler = trajectory_sampler(cfg.trajectories, kb.classes)
    items = env.test_items()
    if cfg.n_games and cfg.n_games < len(items):  # evenly spaced over the knowledge base, not its first rows
        items = [items[int(i * len(items) / cfg.n_games)] for i in range(cfg.n_games)]
    return Setup(env, predictor, sampler, items, backend, querier, model_name)


def trajectory_sampler(path: str | Path, labels: list[str]) -> TrajectoryPrefixSampler:
    """Eq. 14's sampler from the saved games of a direct-prompting run (``cip eval --methods direct``)."""
    from harness.evaluation import read_jsonl

    records = [r for r in read_jsonl(path) if r.get("method") == "direct"]
    if not records:
        raise ValueError(f"{path} holds no games of the 'direct' method; run `cip eval --methods direct` first.")
    return TrajectoryPrefixSampler([{"label": labels.index(r["trace"]["true_label"]), "history": r["trace"]["history"]}
                                    for r in records])


def _mediq_fact(cases: list[Any], context: dict[str, Any], query: str) -> str:
    # MediQ calibration uses the raw atomic facts as answers (no patient LLM), as the reference code does.
    for c in cases:
        if c.question == context["question"] and query in c.queries:
            return c.facts[c.queries.index(query)]
    return query


def thresholds_for_seed(cfg: CIPConfig, setup: Setup, seed: int, out_dir: Path | None) -> ConformalThresholds:
    """Load ``cfg.thresholds`` or a cached per-seed file in ``out_dir``, else calibrate (and cache it)."""
    if cfg.thresholds:
        return ConformalThresholds.load(cfg.thresholds, labels=setup.predictor.labels).with_alpha(cfg.alpha)
    path = out_dir / "thresholds" / f"seed{seed}.json" if out_dir is not None else None
    if path is not None and path.is_file():
        th = ConformalThresholds.load(path, labels=setup.predictor.labels)
        if th.n_cal == cfg.n_cal and max(th.lengths) >= cfg.max_queries + 1 and th.model == setup.model_name:
            return th.with_alpha(cfg.alpha, cfg.quantile_rule)
    th = calibrate(setup.predictor, setup.sampler, cfg.alpha, cfg.n_cal, cfg.max_queries + 1, seed=seed,
                   min_length=0, quantile_rule=cfg.quantile_rule, set_rule=cfg.set_rule, model=setup.model_name,
                   progress=cfg.progress)
    if path is not None:
        th.save(path)
    return th


# ----------------------------------------------------------------------------------------- metrics
def game_metrics(trace: dict[str, Any], max_queries: int, stop_epsilon: float = 0.0) -> dict[str, float]:
    steps = trace["steps"]
    m: dict[str, float] = {"correct": float(bool(trace["correct"])), "n_queries": float(trace["n_queries"])}
    hit = [s["k"] for s in steps if s.get("set") == [trace["true_label"]]]
    m["success_singleton"] = float(bool(hit))
    if hit:
        m["queries_to_correct_singleton"] = float(hit[0])
    ever = False
    for s in steps:
        k = s["k"]
        ever = ever or bool(s["correct"])
        m[f"acc@{k}"] = float(bool(s["correct"]))
        m[f"acc_cum@{k}"] = float(ever)
        if "set" in s:
            m[f"set_size@{k}"] = float(len(s["set"]))
            m[f"covered@{k}"] = float(bool(s["covered"]))
    if "set" in steps[0]:
        k_single = apply_stopping(trace, singleton=True)
        m["stop_singleton_k"] = float(k_single)
        m["stop_singleton_correct"] = float(bool(steps[k_single]["correct"]))
    if stop_epsilon > 0 and trace["criterion"] in SCORED_CRITERIA:
        k_eps = apply_stopping(trace, epsilon=stop_epsilon)
        m["stop_epsilon_k"] = float(k_eps)
        m["stop_epsilon_correct"] = float(bool(steps[k_eps]["correct"]))
    return m


def curves(records: list[dict[str, Any]], max_queries: int) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Per metric (acc_cum, acc, set_size, covered) and method: mean and bootstrap band over k."""
    from harness.evaluation import bootstrap_ci

    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    methods = sorted({r["method"] for r in records})
    for metric in ("acc_cum", "acc", "set_size", "covered"):
        out[metric] = {}
        for method in methods:
            xs, ys, lo, hi = [], [], [], []
            for k in range(max_queries + 1):
                vals = [r["metrics"][f"{metric}@{k}"] for r in records
                        if r["method"] == method and f"{metric}@{k}" in r["metrics"]]
                if vals:
                    a, b = bootstrap_ci(vals)
                    xs.append(k)
                    ys.append(float(np.mean(vals)))
                    lo.append(a)
                    hi.append(b)
            if xs:
                out[metric][method] = {"x": xs, "y": ys, "low": lo, "high": hi}
    return out


def coverage_vs_alpha(records: list[dict[str, Any]], thresholds: dict[int, ConformalThresholds],
                      alphas: list[float]) -> dict[str, dict[str, list[float]]]:
    """Empirical coverage (all steps of all games) of each method at each alpha, from the recorded
    true-label probabilities and the per-seed calibration scores."""
    out: dict[str, dict[str, list[float]]] = {}
    for method in sorted({r["method"] for r in records}):
        xs, ys = [], []
        for a in alphas:
            hits = []
            for r in records:
                if r["method"] != method or r["seed"] not in thresholds:
                    continue
                th = _safe_alpha(thresholds[r["seed"]], a)
                if th is None:
                    continue
                for s in r["trace"]["steps"]:
                    hits.append(s["true_prob"] >= th.tau(s["k"]) if th.set_rule == ">=" else s["true_prob"] > th.tau(s["k"]))
            if hits:
                xs.append(1 - a)
                ys.append(float(np.mean(hits)))
        out[method] = {"x": xs, "y": ys}
    return out


def _safe_alpha(th: ConformalThresholds, alpha: float) -> ConformalThresholds | None:
    from cip.conformal import CalibrationError

    try:
        return th.with_alpha(alpha)
    except CalibrationError:
        return None


def heldout_coverage(setup: Setup, thresholds: ConformalThresholds, alphas: list[float], n: int, max_k: int,
                     seed: int) -> dict[str, list[float]]:
    """Coverage on fresh exchangeable histories from the calibration sampler (where the guarantee holds)."""
    rng = np.random.default_rng(10_000 + seed)
    examples = [(k, setup.sampler.sample(k, rng)) for k in range(0, max_k + 1) for _ in range(n)]
    probs = setup.predictor.predict([e.history for _, e in examples], [e.context for _, e in examples])
    xs, ys = [], []
    for a in alphas:
        th = _safe_alpha(thresholds, a)
        if th is None:
            continue
        hits = [bool(th.prediction_set(p, k)[e.label]) for (k, e), p in zip(examples, probs)]
        xs.append(1 - a)
        ys.append(float(np.mean(hits)))
    return {"x": xs, "y": ys}


# ------------------------------------------------------------------------------------------------ run
def run_calibrate(cfg: CIPConfig, out_path: str | Path, seed: int | None = None) -> ConformalThresholds:
    setup = build(cfg)
    seed = cfg.seeds[0] if seed is None else seed
    th = calibrate(setup.predictor, setup.sampler, cfg.alpha, cfg.n_cal, cfg.max_queries + 1, seed=seed,
                   min_length=0, quantile_rule=cfg.quantile_rule, set_rule=cfg.set_rule, model=setup.model_name,
                   progress=cfg.progress)
    th.save(out_path)
    return th


def run_eval(cfg: CIPConfig, backend: Any = None) -> dict[str, Any]:
    """Calibrate per seed, play every (method, seed, item) game through the harness, summarise, plot."""
    from harness.config import config_to_dict
    from harness.evaluation import Task, plot_curves, read_jsonl, run_task

    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    setup = build(cfg, backend)
    (out_dir / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))
    thresholds = {seed: thresholds_for_seed(cfg, setup, seed, out_dir) for seed in cfg.seeds}
    examples = [{"id": f"{method}-s{seed}-{i}", "method": method, "seed": seed, "index": i}
                for method in cfg.methods for seed in cfg.seeds for i in range(len(setup.test_items))]
    agents: dict[tuple[str, int], Agent] = {}

    def run_batch(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        records = []
        for ex in batch:
            key = (ex["method"], ex["seed"])
            if key not in agents:
                # every method gets the thresholds: its trace then records sets and coverage too
                agents[key] = Agent(setup.env, setup.predictor, thresholds[ex["seed"]],
                                    AgentConfig(criterion=ex["method"], alpha=cfg.alpha, n_est=cfg.n_est,
                                                est_source=cfg.est_source, max_queries=cfg.max_queries,
                                                tie_break=cfg.tie_break, nonempty_sets=cfg.nonempty_sets),
                                    querier=setup.querier)
            item = setup.test_items[ex["index"]]
            trace = agents[key].play(item, seed=1000 * ex["seed"] + ex["index"])
            records.append({"method": ex["method"], "seed": ex["seed"], "item": trace["item"],
                            "metrics": game_metrics(trace, cfg.max_queries, cfg.stop_epsilon), "trace": trace})
        return records

    task = Task(f"cip-{cfg.task}", examples, run_batch, group_by="method", metadata=config_to_dict(cfg))
    summary = run_task(task, out_dir, batch_size=1, resume=True, progress=cfg.progress)
    records = read_jsonl(out_dir / "records.jsonl")
    curve = curves(records, cfg.max_queries)
    summary["curves"] = curve
    summary["coverage_vs_1_minus_alpha"] = coverage_vs_alpha(records, thresholds, cfg.alphas)
    first_seed = cfg.seeds[0]
    summary["coverage_vs_1_minus_alpha"]["held-out histories"] = heldout_coverage(
        setup, thresholds[first_seed], cfg.alphas, cfg.n_cal, cfg.max_queries, first_seed)
    summary["thresholds"] = {str(s): {str(k): v for k, v in th.taus.items()} for s, th in thresholds.items()}
    summary["predictor"] = setup.model_name
    summary["per_method"] = {
        m: {key: summary["groups"][m].get(key, {}).get("mean") for key in
            ("correct", "n_queries", "success_singleton", "queries_to_correct_singleton", "stop_singleton_k",
             "stop_singleton_correct", f"set_size@{cfg.max_queries}", f"covered@{cfg.max_queries}")}
        for m in summary.get("groups", {})
    }
    summary = _nan_to_none(summary)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str, allow_nan=False))
    plot_curves(curve["acc_cum"], out_dir / "accuracy_vs_k.png", "queries asked k", "accuracy (correct by k)",
                title="20 Questions: accuracy vs k" if cfg.task == "20q" else "MediQ: accuracy vs k")
    if curve["set_size"]:
        plot_curves(curve["set_size"], out_dir / "set_size_vs_k.png", "queries asked k", "conformal set size",
                    title=f"prediction-set size vs k (alpha={cfg.alpha})")
    cov = {m: v for m, v in summary["coverage_vs_1_minus_alpha"].items() if v["x"]}
    if cov:
        plot_curves(cov, out_dir / "coverage_vs_1_minus_alpha.png", "1 - alpha", "empirical coverage",
                    title="coverage vs target", diagonal=True)
    return summary


def _nan_to_none(value: Any) -> Any:
    """Strict JSON: NaN (a metric with no values, e.g. no successful game) becomes null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value
