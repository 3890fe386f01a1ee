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

from cmikit.cip.agent import Agent, AgentConfig, apply_stopping
from cmikit.cip.conformal import (
    QUANTILE_RULES,
    ConformalThresholds,
    TrajectoryPrefixSampler,
    UniformHistorySampler,
    calibrate,
    min_calibration_size,
)
from cmikit.cip.criteria import ALL_CRITERIA, DEFAULT_CRITERION, SCORED_CRITERIA
from cmikit.cip.knowledge import KnowledgeBase
from cmikit.harness.config import check_at_least, check_range
from cmikit.harness.errors import ConfigError


def validate_common(cfg: Any) -> None:
    """Start-up checks shared by ``cip play``/``calibrate``/``eval`` (before any model loads): every count
    >= 1 where 0 has no meaning, every probability in range; nothing is reinterpreted."""
    check_range("alpha", cfg.alpha, 0, 1, low_open=True, high_open=True)
    check_at_least("n_cal", cfg.n_cal, 1)
    check_at_least("n_est", cfg.n_est, 1)
    check_at_least("max_queries", cfg.max_queries, 1)
    check_at_least("max_candidates", cfg.max_candidates, 1, allow_none=True)
    check_at_least("batch_size", cfg.batch_size, 1)
    check_range("table_noise", cfg.table_noise, 0, 0.5, high_open=True)
    check_range("none_prior", getattr(cfg, "none_prior", 0.0), 0, 1, high_open=True)
    check_at_least("stop_epsilon", getattr(cfg, "stop_epsilon", 0.0), 0.0)
    if cfg.quantile_rule == "finite-sample" and cfg.n_cal < min_calibration_size(cfg.alpha):
        raise ConfigError(f"--n_cal {cfg.n_cal} is too small for --alpha {cfg.alpha}: the finite-sample threshold "
                          f"needs n_cal >= 1/alpha - 1 = {min_calibration_size(cfg.alpha)}; raise one of them.")


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
        "auto (default): the exact-Bayes table predictor for 20q with the embedded default --model, the LLM "
        "predictor for MediQ or when --model names another model (never depends on the cache's state)")})
    model: str = "smollm2-135m-instruct"
    trust_remote_code: bool = field(default=False, metadata={
        "help": "allow a Hub model's own code to run when it is loaded (off by default)"})
    label_style: str = field(default="names", metadata={"choices": ["names", "letters"]})
    table_noise: float = 0.05
    none_prior: float = field(default=0.0, metadata={"help": (
        "prior of an explicit 'none of these' hypothesis in the predictor (answers under it follow each "
        "question's base rate); 0 = off. cip play uses 0.1: calibrate with the same value for its --thresholds")})
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
    methods: list[str] = field(default_factory=lambda: [DEFAULT_CRITERION, *(
        m for m in ("cip-floor", "cip-selffano", "cip-paper", "cip-code", "ip", "random") if m != DEFAULT_CRITERION)])
    n_est: int = 4
    est_source: str = field(default="prior", metadata={"choices": ["prior", "posterior", "exhaustive"]})
    max_queries: int = 20
    stop_epsilon: float = 0.0
    tie_break: str = field(default="first", metadata={"choices": ["first", "random"]})
    nonempty_sets: bool = False
    record_candidates: bool = field(default=True, metadata={
        "help": "keep every candidate's scores in each step of the saved traces (needed for --stop_epsilon "
                "re-analysis; large files with 40+ candidates)"})
    ip_no_replacement: bool = field(default=False, metadata={
        "help": "MediQ IP baseline as the reference code runs it: estimation patients drawn without replacement"})
    mediq_alpha_n: str = field(default="paper", metadata={"choices": ["paper", "code"], "help": (
        "alpha_n in the cip-code bound on MediQ: paper = alpha - 1/(n_est+1) (as in 20Q); code = alpha (the "
        "reference MediQ code comments the correction out)")})
    seeds: list[int] = field(default_factory=lambda: [0])
    n_games: int | None = None
    alphas: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.3, 0.4])
    mediq_dir: str | None = field(default=None, metadata={"help": "MediQ folder (default: the mediq dataset, "
                                  "$CMIKIT_DATA/mediq or fetched by `cmikit data fetch mediq`)"})
    specialty: str = "neurology"
    split: int = 0
    out_dir: str = "runs/cip_eval"
    overwrite: bool = field(default=False, metadata={"help": "empty --out_dir first (a run folder made with other "
                                                             "settings is refused otherwise)"})
    quick: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        validate_common(self)
        if not self.methods:
            raise ConfigError("--methods is empty; give one or more of " + ", ".join(ALL_CRITERIA) + ".")
        for m in self.methods:
            if m not in ALL_CRITERIA:
                raise ConfigError(f"--methods {m!r}: unknown method; allowed: {', '.join(ALL_CRITERIA)}.")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"--methods {' '.join(self.methods)}: a method is listed twice.")
        if not self.seeds:
            raise ConfigError("--seeds is empty; give one or more integer seeds (e.g. --seeds 0 1 2).")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"--seeds {' '.join(map(str, self.seeds))}: a seed is listed twice.")
        for seed in self.seeds:
            check_at_least("--seeds", seed, 0)
        check_at_least("n_games", self.n_games, 1, allow_none=True)
        check_at_least("n_candidates", self.n_candidates, 1)
        if not self.alphas:
            raise ConfigError("--alphas is empty; give miscoverage levels in (0, 1), e.g. --alphas 0.1 0.2.")
        for a in self.alphas:
            check_range("alphas", a, 0, 1, low_open=True, high_open=True)
        check_at_least("split", self.split, 0)
        if self.task == "20q" and self.answerer == "table" and ("direct" in self.methods or self.query_set == "open"):
            raise ValueError("Open questions (query_set open, or the 'direct' method) cannot be answered from the "
                             "knowledge-base table; add --answerer llm.")


# ``--quick`` (``make demo``): the exact-Bayes predictor, every built-in item, games long enough to finish.
QUICK_OVERRIDES = dict(kb="everyday", methods=[DEFAULT_CRITERION, *(m for m in ("cip-floor", "cip-selffano", "cip-paper",
                       "cip-code", "ip", "random") if m != DEFAULT_CRITERION)],
                       n_cal=100, max_queries=20, n_games=None, max_candidates=None, seeds=[0, 1, 2],
                       alphas=[0.05, 0.1, 0.2, 0.3, 0.4, 0.5], record_candidates=False)
# ``--quick`` with an LLM predictor: a pipeline check in minutes on a CPU.
QUICK_LLM_OVERRIDES = dict(kb="everyday", methods=[DEFAULT_CRITERION, "ip", "random"], n_cal=10, max_queries=3, n_games=5,
                           max_candidates=16, seeds=[0], alphas=[0.1, 0.2, 0.3, 0.4, 0.5], record_candidates=False)
# ``--task mediq --quick``: the embedded model on a few Neurology cases (see docs/cip.md for the full cost).
QUICK_MEDIQ_OVERRIDES = dict(methods=[DEFAULT_CRITERION, "ip"], alpha=0.3, n_cal=10, max_queries=2, n_games=3, n_est=2,
                             max_candidates=4, seeds=[0], alphas=[0.3, 0.4, 0.5], record_candidates=False)


def quick_overrides(cfg: CIPConfig) -> dict[str, Any]:
    if cfg.task == "mediq":
        return QUICK_MEDIQ_OVERRIDES
    return QUICK_LLM_OVERRIDES if resolve_predictor_kind(cfg) == "llm" else QUICK_OVERRIDES


def apply_quick(cfg: CIPConfig, explicit: set[str]) -> CIPConfig:
    """``--quick``: settings that finish in minutes on 2 CPU cores (explicit options still win)."""
    if cfg.quick:
        for key, value in quick_overrides(cfg).items():
            if key not in explicit:
                setattr(cfg, key, value)
        validate_common(cfg)
    return cfg


# ----------------------------------------------------------------------------------------- building
DEFAULT_MODEL = "smollm2-135m-instruct"


def resolve_predictor_kind(cfg: Any) -> str:
    """``auto``: the LLM for MediQ or a non-default ``--model``, else the exact-Bayes table predictor. Never
    depends on what the cache holds (the same command always runs the same job)."""
    if cfg.predictor != "auto":
        return cfg.predictor
    if getattr(cfg, "task", "20q") == "mediq":
        return "llm"
    return "llm" if cfg.model != DEFAULT_MODEL else "table"


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
    from cmikit.cip.environments import (
        LLMAnswerer,
        LLMQuerier,
        MediQ,
        PatientLLM,
        TwentyQuestions,
        load_mediq_split,
    )
    from cmikit.cip.predictors import (
        LLMPredictor,
        MediQPrompt,
        OpenWorldPredictor,
        TablePredictor,
        TwentyQuestionsPrompt,
    )

    kind = resolve_predictor_kind(cfg)
    needs_llm = kind == "llm" or cfg.answerer == "llm" or cfg.query_set == "open" or "direct" in cfg.methods
    if needs_llm and backend is None:
        from cmikit.harness.backends import TransformersBackend

        backend = TransformersBackend.from_ref(cfg.model, batch_size=cfg.batch_size,
                                               trust_remote_code=cfg.trust_remote_code)
    if cfg.task == "mediq":
        data_dir = mediq_root(cfg)
        est = load_mediq_split(data_dir, cfg.specialty, cfg.split, "train")
        cal = load_mediq_split(data_dir, cfg.specialty, cfg.split, "cal")
        test = load_mediq_split(data_dir, cfg.specialty, cfg.split, "test")
        env = MediQ(est, patient=PatientLLM(backend) if cfg.answerer == "llm" else None,
                    max_candidates=cfg.max_candidates)
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
    if cfg.none_prior > 0:
        predictor = OpenWorldPredictor(predictor, kb, noise=cfg.table_noise, none_prior=cfg.none_prior)
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
    from cmikit.harness.evaluation import read_jsonl

    records = [r for r in read_jsonl(path) if r.get("method") == "direct"]
    if not records:
        from cmikit.harness.errors import DataFileError

        raise DataFileError(f"{path} holds no games of the 'direct' method; run `cip eval --methods direct` first.")
    return TrajectoryPrefixSampler([{"label": labels.index(r["trace"]["true_label"]), "history": r["trace"]["history"]}
                                    for r in records])


def _mediq_fact(cases: list[Any], context: dict[str, Any], query: str) -> str:
    # MediQ calibration uses the raw atomic facts as answers (no patient LLM), as the reference code does.
    for c in cases:
        if c.question == context["question"] and query in c.queries:
            return c.facts[c.queries.index(query)]
    return query


def thresholds_path(value: str | Path) -> Path:
    """``--thresholds`` may name the JSON file or the folder ``cip calibrate`` wrote (its thresholds.json)."""
    path = Path(value)
    return path / "thresholds.json" if path.is_dir() else path


def predictor_name(cfg: Any) -> str:
    """The name calibration records for the predictor (``ConformalThresholds.model``), known before loading."""
    return cfg.model if resolve_predictor_kind(cfg) == "llm" else f"table(noise={cfg.table_noise})"


def predictor_settings(cfg: Any) -> dict[str, Any]:
    """Every predictor setting that changes its probabilities (and so the thresholds)."""
    kind = resolve_predictor_kind(cfg)
    if getattr(cfg, "task", "20q") == "mediq":
        out: dict[str, Any] = {"kind": "llm", "model": cfg.model, "prompt": "mediq"}
    elif kind == "llm":
        out = {"kind": "llm", "model": cfg.model, "noun": cfg.noun, "label_style": cfg.label_style,
               "answer_style": getattr(cfg, "answer_style", "yes_no")}
    else:
        out = {"kind": "table", "noise": cfg.table_noise}
    if getattr(cfg, "none_prior", 0.0) > 0:
        out.update(none_prior=cfg.none_prior, none_noise=cfg.table_noise)
    return out


def thresholds_identity(cfg: Any, kb: KnowledgeBase | None) -> dict[str, Any]:
    """What made a set of thresholds: the knowledge base's content hash (or the MediQ split), the predictor's
    full settings and the set rule. Stored in the thresholds file's metadata; :func:`check_thresholds_fit`
    refuses a file whose identity differs from the run's, naming the key."""
    data = kb.content_hash() if kb is not None else f"mediq/{cfg.specialty}/split{cfg.split}"
    return {"kb_sha256" if kb is not None else "data": data, "predictor": predictor_settings(cfg),
            "set_rule": cfg.set_rule}


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def calibrate_command(cfg: Any, max_queries: int | None = None) -> str:
    """The ``cip calibrate`` command that makes thresholds fitting this run."""
    parts = [f"cip calibrate --kb {getattr(cfg, 'kb', '...')} --predictor {resolve_predictor_kind(cfg)}"]
    if resolve_predictor_kind(cfg) == "llm":
        parts.append(f"--model {cfg.model} --noun {cfg.noun} --label_style {cfg.label_style}")
    else:
        parts.append(f"--table_noise {cfg.table_noise}")
    if getattr(cfg, "none_prior", 0.0) > 0:
        parts.append(f"--none_prior {cfg.none_prior}")
    parts.append(f"--set_rule '{cfg.set_rule}' --max_queries {max_queries or cfg.max_queries} --out_dir DIR")
    return " ".join(parts)


def check_thresholds_fit(th: ConformalThresholds, cfg: Any, labels: list[str], identity: dict[str, Any],
                         path: str | Path) -> None:
    """Refuse a thresholds file that does not fit this run, in one line naming what differs and how to
    recalibrate: another label set (:meth:`ConformalThresholds.check_labels`), fewer questions than
    ``max_queries``, or any key of :func:`thresholds_identity` (knowledge-base content, predictor settings,
    set rule)."""
    from cmikit.cip.conformal import ThresholdsFileError

    how = f"recalibrate with `{calibrate_command(cfg)}` and pass --thresholds DIR"
    th.check_labels(labels)
    budget = max(th.lengths) - 1  # `cip calibrate --max_queries B` calibrates k = 0..B+1 (one step of lookahead)
    if budget < cfg.max_queries:
        raise ThresholdsFileError(f"{path} was calibrated for up to {budget} questions (--max_queries {budget}) but "
                                  f"this run asks up to {cfg.max_queries}; {how}.")
    theirs = th.metadata.get("identity")
    if not isinstance(theirs, dict):
        raise ThresholdsFileError(f"{path} does not record what made it (knowledge-base hash, predictor settings, "
                                  f"set rule; written by an older cmikit); {how}.")
    mine, theirs = _flat(identity), _flat(theirs)
    for key in sorted(set(mine) | set(theirs)):
        if mine.get(key) != theirs.get(key):
            raise ThresholdsFileError(f"{path} does not fit this run: {key} is {theirs.get(key)!r} there and "
                                      f"{mine.get(key)!r} here; {how}.")


def calibrate_for(cfg: Any, setup: Setup, seed: int) -> ConformalThresholds:
    """Alg. 1 for this run's predictor and sampler (k = 0..max_queries+1), with the identity recorded."""
    th = calibrate(setup.predictor, setup.sampler, cfg.alpha, cfg.n_cal, cfg.max_queries + 1, seed=seed,
                   min_length=0, quantile_rule=cfg.quantile_rule, set_rule=cfg.set_rule, model=setup.model_name,
                   progress=cfg.progress)
    th.metadata["identity"] = thresholds_identity(cfg, getattr(setup.env, "kb", None))
    return th


def thresholds_for_seed(cfg: CIPConfig, setup: Setup, seed: int, out_dir: Path | None) -> ConformalThresholds:
    """Load ``cfg.thresholds`` (refused when it does not fit, see :func:`check_thresholds_fit`) or a cached
    per-seed file in ``out_dir``, else calibrate (and cache it)."""
    if cfg.thresholds:
        path = thresholds_path(cfg.thresholds)
        th = ConformalThresholds.load(path)
        identity = thresholds_identity(cfg, getattr(setup.env, "kb", None))
        check_thresholds_fit(th, cfg, list(setup.predictor.labels), identity, path)
        return th.with_alpha(cfg.alpha)
    path = out_dir / "thresholds" / f"seed{seed}.json" if out_dir is not None else None
    if path is not None and path.is_file():
        th = ConformalThresholds.load(path, labels=setup.predictor.labels)
        if (th.n_cal == cfg.n_cal and max(th.lengths) >= cfg.max_queries + 1 and th.metadata.get("identity")
                == thresholds_identity(cfg, getattr(setup.env, "kb", None))):
            return th.with_alpha(cfg.alpha, cfg.quantile_rule)
    th = calibrate_for(cfg, setup, seed)
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
    from cmikit.harness.evaluation import bootstrap_ci

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
    from cmikit.cip.conformal import CalibrationError

    try:
        return th.with_alpha(alpha)
    except CalibrationError:
        return None


def heldout_coverage(setup: Setup, thresholds: ConformalThresholds, alphas: list[float], n: int, max_k: int,
                     seed: int, alpha: float | None = None) -> dict[str, Any]:
    """Coverage on fresh exchangeable histories from the calibration sampler (where the guarantee holds):
    pooled over k per alpha (``x``, ``y``), and per k at ``alpha`` (``per_k``: k -> coverage, ``n_per_k``)."""
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
    out: dict[str, Any] = {"x": xs, "y": ys}
    th = _safe_alpha(thresholds, alpha if alpha is not None else thresholds.alpha)
    if th is not None:
        out["alpha"] = th.alpha
        out["n_per_k"] = n
        out["per_k"] = {str(k): float(np.mean([bool(th.prediction_set(p, kk)[e.label])
                                                for (kk, e), p in zip(examples, probs) if kk == k]))
                        for k in range(0, max_k + 1)}
    return out


# ------------------------------------------------------------------------------------------------ run
def mediq_root(cfg: Any) -> Path:
    """``--mediq_dir``, else the ``mediq`` dataset (``CMIKIT_DATA`` or ``cmikit data fetch mediq``)."""
    if cfg.mediq_dir:
        return Path(cfg.mediq_dir)
    from cmikit.harness.data import data_dir

    return data_dir("mediq")


# The settings that change the results of `cip calibrate` / `cip eval` (the run identity, cmikit.harness.runs): a
# new option that changes results belongs here. Not listed, so recorded in run.json but not refusing a resume:
# out_dir, overwrite, progress, batch_size (records are per game), quick (it only sets listed options), alphas
# (they only shape the summary, recomputed each run), trust_remote_code, mediq_dir (the files are hashed).
CIP_IDENTITY = (
    "task", "kb", "noun", "answerer", "answer_style", "query_set", "n_candidates", "max_candidates", "predictor",
    "model", "label_style", "table_noise", "none_prior", "alpha", "n_cal", "quantile_rule", "set_rule", "replacement",
    "trajectories", "thresholds", "methods", "n_est", "est_source", "max_queries", "stop_epsilon", "tie_break",
    "nonempty_sets", "record_candidates", "ip_no_replacement", "mediq_alpha_n", "seeds", "n_games", "specialty",
    "split",
)


def run_inputs(cfg: CIPConfig) -> tuple[dict[str, Path], dict[str, Any]]:
    """The data files and models a run depends on (hashed into its fingerprint; nothing is loaded)."""
    files: dict[str, Path] = {}
    if cfg.task == "mediq":
        for role in ("train", "cal", "test"):
            files[f"mediq_{role}"] = mediq_root(cfg) / "splits" / cfg.specialty / f"split{cfg.split}_{role}.csv"
    else:
        from cmikit.cip.knowledge import resolve_kb_path

        files["kb"] = resolve_kb_path(cfg.kb)
    if cfg.thresholds:
        files["thresholds"] = thresholds_path(cfg.thresholds)
    if cfg.trajectories:
        files["trajectories"] = Path(cfg.trajectories)
    kind = resolve_predictor_kind(cfg)
    needs_llm = kind == "llm" or cfg.answerer == "llm" or cfg.query_set == "open" or "direct" in cfg.methods
    models: dict[str, Any] = {"predictor": cfg.model if kind == "llm" else f"table(noise={cfg.table_noise})"}
    if needs_llm and kind != "llm":
        models["answerer/querier"] = cfg.model
    return files, models


def preflight(cfg: Any) -> list[str]:
    """Check every input file before any model loads or any folder is touched (the knowledge base or MediQ
    split files parse, a --thresholds file fits); returns the label set."""
    if getattr(cfg, "task", "20q") == "mediq":
        from cmikit.cip.environments import load_mediq_split

        for role in ("train", "cal", "test"):
            load_mediq_split(mediq_root(cfg), cfg.specialty, cfg.split, role)
        labels, kb = ["A", "B", "C", "D"], None
    else:
        kb = KnowledgeBase.load(cfg.kb)
        labels = list(kb.classes)
    if getattr(cfg, "thresholds", None):
        path = thresholds_path(cfg.thresholds)
        check_thresholds_fit(ConformalThresholds.load(path), cfg, labels, thresholds_identity(cfg, kb), path)
    return labels


def _open(cfg: CIPConfig, kind: str):
    from cmikit.harness.config import config_to_dict
    from cmikit.harness.runs import open_run

    preflight(cfg)
    files, models = run_inputs(cfg)
    return open_run(cfg.out_dir, kind, config_to_dict(cfg), keys=CIP_IDENTITY, files=files, models=models,
                    overwrite=cfg.overwrite)


def run_calibrate(cfg: CIPConfig, seed: int | None = None) -> tuple[ConformalThresholds, Path]:
    """``cip calibrate``: thresholds for ``cfg.seeds[0]`` into ``<out_dir>/thresholds.json`` (a run folder)."""
    with _open(cfg, "cip-calibrate") as run:
        path = run.path("thresholds.json")
        if run.resumed and path.is_file():
            return ConformalThresholds.load(path), path
        setup = build(cfg)
        seed = cfg.seeds[0] if seed is None else seed
        th = calibrate_for(cfg, setup, seed)
        th.save(path)
    return th, path


def run_eval(cfg: CIPConfig, backend: Any = None) -> dict[str, Any]:
    """Calibrate per seed, play every (method, seed, item) game through the harness, summarise, plot. The
    output folder is opened with :func:`cmikit.harness.runs.open_run` (refuses other settings, one run at a time)."""
    with _open(cfg, "cip-eval"):
        return _run_eval(cfg, backend)


def _run_eval(cfg: CIPConfig, backend: Any = None) -> dict[str, Any]:
    from cmikit.harness.config import config_to_dict
    from cmikit.harness.evaluation import Task, plot_curves, read_jsonl, run_task

    out_dir = Path(cfg.out_dir)
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
                                                tie_break=cfg.tie_break, nonempty_sets=cfg.nonempty_sets,
                                                record_candidates=cfg.record_candidates,
                                                alpha_n_correction=not (cfg.task == "mediq"
                                                                        and cfg.mediq_alpha_n == "code"),
                                                est_replacement=not (cfg.task == "mediq" and cfg.ip_no_replacement
                                                                     and ex["method"] == "ip")),
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
    held_by_seed = [heldout_coverage(setup, thresholds[s], cfg.alphas, cfg.n_cal, cfg.max_queries, s, cfg.alpha)
                    for s in cfg.seeds]
    held = held_by_seed[0]
    summary["coverage_vs_1_minus_alpha"]["held-out histories"] = {
        "x": held["x"], "y": [float(np.mean(v)) for v in zip(*(h["y"] for h in held_by_seed))]}
    per_k = None
    if held.get("per_k"):  # mean over the seeds' calibrations (the guarantee is marginal over them)
        per_k = {k: float(np.mean([h["per_k"][k] for h in held_by_seed])) for k in held["per_k"]}
    summary["heldout_coverage_per_k"] = {
        "alpha": cfg.alpha, "n_per_k": len(cfg.seeds) * cfg.n_cal, "n_seeds": len(cfg.seeds), "coverage": per_k,
        "note": "exchangeable histories drawn like the calibration ones (eq. 13/14): the conformal guarantee "
                "P(y in C_k) >= 1 - alpha holds here, for each k"}
    summary["covered_at_k_note"] = (
        "curves['covered'] and covered@k are measured on the games' own histories, which the agent chose "
        "adaptively: they are not exchangeable with the calibration histories, so no coverage guarantee applies")
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
