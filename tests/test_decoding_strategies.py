"""Each strategy's commits per step, asserted exactly on hand-written oracle models (cmikit.decoding.testing)."""

from __future__ import annotations

import pytest
import torch

from cmikit.decoding import DiffusionGenerationConfig, adapt, generate
from cmikit.decoding.strategies import llada_num_transfer_tokens
from cmikit.decoding.testing import OracleModel, entropy_of, fixed_oracle

VOCAB, MASK, PROMPT = 32, 31, 2


def run(model, **cfg):
    cfg.setdefault("strategy", "low_confidence")
    config = DiffusionGenerationConfig(output_history=True, **cfg)
    prompt = torch.tensor([[5, 6]])
    out = generate(adapt(model, mask_token_id=MASK), prompt, config)
    return out, committed_sets(out, prompt)


def committed_sets(out, prompt) -> list[list[int]]:
    """Generation-relative positions newly filled at each step (row 0)."""
    prev = torch.cat([prompt, torch.full((1, out.generated.shape[1]), MASK)], 1)[0]
    sets = []
    for canvas in out.history:
        new = ((prev == MASK) & (canvas[0] != MASK)).nonzero().flatten() - PROMPT
        sets.append(sorted(new.tolist()))
        prev = canvas[0]
    return sets


def gen_oracle(conf: list[float], targets: list[int] | None = None) -> OracleModel:
    full_conf = torch.tensor([0.5] * PROMPT + conf, dtype=torch.float64)
    tgt = torch.tensor([5, 6] + (targets or [(i % 20) + 7 for i in range(len(conf))]))
    return fixed_oracle(VOCAB, tgt, full_conf)


# ---- LLaDA ----------------------------------------------------------------------------------------
def test_llada_num_transfer_tokens_matches_reference_schedule():
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, :3] = False  # 7 masks
    assert llada_num_transfer_tokens(mask, 4).tolist() == [[3, 3, 2, 2], [2, 2, 2, 1]]
    assert llada_num_transfer_tokens(torch.ones(1, 3, dtype=torch.bool), 5).tolist() == [[1, 1, 1, 0, 0]]


def test_low_confidence_commits_schedule_in_confidence_order():
    conf = [0.5, 0.9, 0.3, 0.8, 0.95, 0.2, 0.6, 0.7]
    out, sets = run(gen_oracle(conf), gen_length=8, steps=4)
    assert out.commits_per_step[:, 0].tolist() == [2, 2, 2, 2]
    assert sets == [[1, 4], [3, 7], [0, 6], [2, 5]]
    assert out.nfe == 4
    assert out.generated[0].tolist() == [(i % 20) + 7 for i in range(8)]


def test_low_confidence_semi_autoregressive_blocks():
    conf = [0.5, 0.9, 0.3, 0.8, 0.95, 0.2, 0.6, 0.7]
    out, sets = run(gen_oracle(conf), gen_length=8, block_length=4, steps=4)
    # Block 1 (positions 0-3) first, even though position 4 is the most confident overall.
    assert sets == [[1, 3], [0, 2], [4, 7], [5, 6]]
    assert out.block_nfe == [2, 2]


def test_random_remasking_follows_schedule_and_seed():
    conf = [0.5, 0.9, 0.3, 0.8, 0.95, 0.2, 0.6, 0.7]
    out1, sets1 = run(gen_oracle(conf), gen_length=8, steps=3, strategy="random", seed=3)
    out2, sets2 = run(gen_oracle(conf), gen_length=8, steps=3, strategy="random", seed=3)
    assert out1.commits_per_step[:, 0].tolist() == [3, 3, 2]
    assert sets1 == sets2


# ---- Dream ----------------------------------------------------------------------------------------
def dream_reference_counts(masks: int, steps: int, eps: float = 1e-3) -> list[int]:
    """Dream's `_sample` count rule, written out: int(M * (1 - s/t)) on float32, all at the last step."""
    ts = torch.linspace(1, eps, steps + 1)
    counts, left = [], masks
    for i in range(steps):
        n = int(torch.tensor(float(left)) * (1 - ts[i + 1] / ts[i])) if i < steps - 1 else left
        counts.append(n)
        left -= n
    return counts


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
def test_dream_eps_schedule_wastes_first_step(alg):
    conf = [0.5, 0.9, 0.3, 0.8, 0.95, 0.2, 0.6, 0.7]
    out, sets = run(gen_oracle(conf), gen_length=8, steps=8, strategy=alg)
    assert out.commits_per_step[:, 0].tolist() == [0, 1, 1, 1, 1, 1, 1, 2] == dream_reference_counts(8, 8)
    assert sets[0] == [] and sets[1] == [4] and sets[2] == [1]
    assert out.nfe == 8


def test_dream_schedule_uneven_and_corrected():
    conf = [0.5, 0.9, 0.3, 0.8, 0.95, 0.2, 0.6, 0.7, 0.1, 0.4]
    out, _ = run(gen_oracle(conf), gen_length=10, steps=4, strategy="entropy")
    assert out.commits_per_step[:, 0].tolist() == dream_reference_counts(10, 4) == [2, 2, 2, 4]
    out, _ = run(gen_oracle(conf[:8]), gen_length=8, steps=8, strategy="entropy", corrected_schedule=True)
    assert out.commits_per_step[:, 0].tolist() == [1] * 8


def test_dream_origin_reveals_everything_by_last_step():
    conf = [0.9] * 8
    out, _ = run(gen_oracle(conf), gen_length=8, steps=4, strategy="origin", seed=0)
    assert out.nfe == 4 and int(out.commits_per_step.sum()) == 8
    assert (out.generated != MASK).all()


# ---- Fast-dLLM threshold ---------------------------------------------------------------------------
def test_threshold_commits_all_above_tau_else_top1():
    conf = [0.95, 0.5, 0.92, 0.3, 0.85, 0.91, 0.2, 0.6]
    out, sets = run(gen_oracle(conf), gen_length=8, strategy="threshold", threshold=0.9)
    assert sets == [[0, 2, 5], [4], [7], [1], [3], [6]]
    assert out.nfe == 6
    out, sets = run(gen_oracle(conf), gen_length=8, strategy="threshold", threshold=0.84)
    assert sets[0] == [0, 2, 4, 5]


# ---- EB-Sampler -------------------------------------------------------------------------------------
def test_entropy_bound_accepts_largest_prefix():
    conf = [0.99, 0.6, 0.97, 0.4, 0.98, 0.5, 0.3, 0.2]
    order = sorted(range(8), key=lambda i: -conf[i])
    entropies = [entropy_of(conf[i], VOCAB) for i in order]
    gamma = entropies[0] + entropies[1] + 1e-4  # admits the three most confident: sum(H_0..2) - H_2
    out, sets = run(gen_oracle(conf), gen_length=8, strategy="entropy_bound", entropy_bound=gamma)
    assert sets[0] == sorted(order[:3])
    out, sets = run(gen_oracle(conf), gen_length=8, strategy="entropy_bound", entropy_bound=0.0)
    assert out.commits_per_step[:, 0].tolist() == [1] * 8


# ---- CCD as released --------------------------------------------------------------------------------
def test_ccd_stable_predictions_grow_budget_to_vmax():
    conf = [0.99 - 0.01 * i for i in range(16)]
    out, sets = run(gen_oracle(conf), gen_length=16, steps=16, strategy="ccd", seek_mode=True)
    # Warm-up 5 single commits, then the buffer (n_v = 2, 3, 4, 5) passes the consistency test whole.
    assert out.commits_per_step[:, 0].tolist() == [1, 1, 1, 1, 1, 2, 3, 4, 2]
    assert sets[5] == [5, 6] and sets[6] == [7, 8, 9]
    out, _ = run(gen_oracle(conf), gen_length=16, steps=16, strategy="ccd", seek_mode=False)
    assert out.commits_per_step[:, 0].tolist() == [1] * 16  # fixed-budget CCD with T dividing N takes T steps


def ccd_release_reference(predict, n: int, steps: int, seek: bool, warmup=5, ratio=4.0, late=0.1):
    """Batch-1 walk-through of the released algorithm (brief §1.3) with Python lists, for comparison."""
    x = torch.tensor([5, 6] + [MASK] * n)
    k = max(1, n // steps)
    vmax = k + int(k * ratio)
    n_v, buffer, prev, sets = 1, [], None, []
    for i in range(4 * n):
        masked = [p for p in range(PROMPT, PROMPT + n) if x[p] == MASK]
        if not masked:
            break
        n_v = 1 if i < warmup - 1 else min((1 if len(masked) <= late * n else n_v) + 1, vmax)
        targets, conf = predict(x[None])
        logits = OracleModel(VOCAB, predict)(x[None]).logits[0]
        probs = logits.softmax(-1)
        score = (probs * torch.log(probs + 1e-10)).sum(-1)
        argmax = logits.argmax(-1)
        order = sorted(masked, key=lambda p: (-float(score[p]), p))
        top = order[:k]
        commit = top
        if warmup <= i < steps - 1 and prev is not None and any(p in buffer for p in top):
            match = [p for p in order[:n_v] if p in buffer and argmax[p] == prev[p]]
            if len(match) >= k:
                commit = match if seek else match[:k]
        for p in commit:
            x[p] = argmax[p]
        buffer = [p for p in order if p not in commit][:n_v]
        prev = argmax
        sets.append(sorted(p - PROMPT for p in commit))
    return sets, x


@pytest.mark.parametrize("seek", [True, False])
def test_ccd_matches_release_walkthrough_when_predictions_change(seek):
    n = 20
    base = torch.tensor([0.5, 0.5] + [0.97 - 0.013 * ((7 * i) % n) for i in range(n)], dtype=torch.float64)

    def predict(x):
        masks = int((x == MASK).sum())
        pos = torch.arange(x.shape[1])
        flip = ((masks + pos) % 3 == 0) & (pos >= PROMPT)
        targets = torch.where(flip, pos % 7 + 20, pos % 7 + 10).expand_as(x)
        conf = (base + 0.004 * ((masks * pos) % 3)).expand(x.shape)
        return targets, conf

    expected_sets, expected_x = ccd_release_reference(predict, n, n, seek)
    out, sets = run(OracleModel(VOCAB, predict), gen_length=n, steps=n, strategy="ccd", seek_mode=seek)
    assert sets == expected_sets
    assert out.sequences[0].tolist() == expected_x.tolist()
    assert any(len(s) > 1 for s in sets) == seek


def test_ccd_argmax_change_blocks_early_commit():
    n = 16
    conf = torch.tensor([0.5, 0.5] + [0.99 - 0.01 * i for i in range(n)], dtype=torch.float64)

    def predict(x):  # position 5 of the generation changes its argmax at every step
        masks = int((x == MASK).sum())
        targets = torch.arange(x.shape[1]) % 5 + 10
        targets[PROMPT + 5] = 20 + masks % 2
        return targets.expand_as(x), conf.expand(x.shape)

    out, sets = run(OracleModel(VOCAB, predict), gen_length=n, steps=n, strategy="ccd")
    # Step 5 would commit [5, 6]; position 5 fails the argmax test, so only the plain top-1 (5) ... and the
    # match set [6] is a single token >= k, which the release commits instead of the top-1.
    assert sets[5] == [6]


# ---- CCD as the paper states it --------------------------------------------------------------------
def test_ccd_marginal_ds_commits_buffered_low_entropy_positions():
    conf = [0.99 - 0.005 * i for i in range(16)]
    out, _ = run(gen_oracle(conf), gen_length=16, steps=16, strategy="ccd_marginal",
                 ccd_top_v=4, ccd_window=3, ccd_entropy_threshold=1.0)
    assert out.commits_per_step[:, 0].tolist() == [1, 4, 4, 4, 3]
    out, _ = run(gen_oracle(conf), gen_length=16, steps=16, strategy="ccd_marginal", ccd_entropy_threshold=None)
    assert out.commits_per_step[:, 0].tolist() == [1] * 16


def test_ccd_marginal_prefers_context_insensitive_tokens():
    # Generation position 0 is the easiest (committed first). Position 1 is confident (0.95) but its argmax
    # flips between steps; position 2 is steady at 0.9. Single-step entropy picks 1, the mixture picks 2.
    conf = torch.tensor([0.5, 0.5, 0.999, 0.95, 0.9, 0.3], dtype=torch.float64)

    def predict(x):
        masks = int((x == MASK).sum())
        targets = torch.tensor([5, 6, 10, 11 + masks % 2, 14, 15])
        return targets.expand_as(x), conf.expand(x.shape)

    _, sets = run(OracleModel(VOCAB, predict), gen_length=4, steps=4, strategy="ccd_marginal",
                  ccd_entropy_threshold=None)
    assert sets[:2] == [[0], [2]]
    _, sets = run(OracleModel(VOCAB, predict), gen_length=4, steps=4, strategy="entropy", corrected_schedule=True)
    assert sets[:2] == [[0], [1]]


# ---- CCD where the release departs from itself (documented in CCDOfficial) --------------------------
def assert_never_remasks(out, prompt_len=PROMPT):
    """Prompt intact, a committed token never changes or returns to MASK, and the canvas ends full."""
    prev = None
    for canvas in out.history:
        assert canvas[0, :prompt_len].tolist() == [5, 6]
        if prev is not None:
            done = prev != MASK
            assert (canvas[0][done] == prev[done]).all()
        prev = canvas[0]
    assert (out.generated != MASK).all()


@pytest.mark.parametrize("n,steps,seek", [(10, 3, False), (10, 3, True), (16, 8, True), (12, 4, True)])
def test_ccd_fewer_masks_than_k_commits_only_the_masks_left(n, steps, seek):
    # k = n // steps >= 2. The release's top-k then picks non-mask positions and writes MASK over decoded or
    # prompt tokens; here a step commits at most the masks it has.
    conf = [0.99 - 0.01 * i for i in range(n)]
    out, sets = run(gen_oracle(conf), gen_length=n, steps=steps, strategy="ccd", seek_mode=seek)
    assert_never_remasks(out)
    k = n // steps
    assert all(1 <= len(s) for s in sets)
    if not seek:
        assert [len(s) for s in sets] == [k] * (n // k) + ([n % k] if n % k else [])


def test_ccd_steps_not_dividing_length_finishes_the_block():
    # N = 10, T = 4: k = 2. The release runs exactly T = 4 passes and returns with 2 masks left; here the
    # block runs one more plain top-k step: 5 passes, no mask left.
    out, sets = run(gen_oracle([0.99 - 0.01 * i for i in range(10)]), gen_length=10, steps=4, strategy="ccd",
                    seek_mode=False)
    assert out.nfe == 5 and [len(s) for s in sets] == [2, 2, 2, 2, 2]
    assert_never_remasks(out)


def test_ccd_more_steps_than_length_decodes_one_token_per_step():
    # N = 4, T = 8: the release's k = int(N / T) = 0 commits nothing in 8 passes; here k = max(1, N // T) = 1.
    model = gen_oracle([0.9, 0.8, 0.7, 0.6])
    out, sets = run(model, gen_length=4, steps=8, strategy="ccd")
    assert out.nfe == 4 and sets == [[0], [1], [2], [3]]
    assert_never_remasks(out)
    padded, padded_sets = run(gen_oracle([0.9, 0.8, 0.7, 0.6]), gen_length=4, steps=8, strategy="ccd",
                              fixed_steps=True)
    assert padded.nfe == 8 and padded.generated.tolist() == out.generated.tolist()
    assert padded_sets == sets + [[]] * 4


def test_ccd_nfe_is_the_number_of_forward_passes():
    # The release reports finish_step, the loop index at exit (NFE - 1 when the last commit happens after
    # warm-up); `nfe` here counts the passes the model actually ran.
    model = gen_oracle([0.99 - 0.01 * i for i in range(16)])
    out, _ = run(model, gen_length=16, steps=16, strategy="ccd", seek_mode=True)
    assert out.nfe == model.calls == out.commits_per_step.shape[0] == 9


# ---- fixed step count (references' NFE) -------------------------------------------------------------
def test_fixed_steps_runs_the_references_step_count():
    conf = [0.9 - 0.1 * i for i in range(6)]
    skipped, _ = run(gen_oracle(conf), gen_length=6, steps=12)  # LLaDA: steps > length, half the steps empty
    fixed, sets = run(gen_oracle(conf), gen_length=6, steps=12, fixed_steps=True)
    assert (skipped.nfe, fixed.nfe) == (6, 12)
    assert fixed.generated.tolist() == skipped.generated.tolist()
    assert [len(s) for s in sets] == [1] * 6 + [0] * 6 and fixed.nfe_per_row.tolist() == [12]
    # Dream origin reveals at random and may finish early; with fixed_steps it runs every step.
    origin = [run(gen_oracle(conf), gen_length=6, steps=6, strategy="origin", seed=s, fixed_steps=True)[0].nfe
              for s in range(4)]
    assert origin == [6] * 4
    # Blocks: each block runs its own budget.
    out, _ = run(gen_oracle(conf), gen_length=6, block_length=3, steps=8, fixed_steps=True)
    assert out.nfe == 8 and out.block_nfe == [4, 4]
