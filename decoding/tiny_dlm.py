"""Tiny LLaDA-style masked diffusion LMs, trained from scratch on the synthetic tasks of :mod:`cmikit.decoding.tiny_task`
(``copy-one-of-two``, :class:`~cmikit.decoding.tiny_task.CopyOneTask`, gen_length 24; ``one-class-upper``,
:class:`~cmikit.decoding.tiny_task.OneClassUpperTask`, gen_length 64).

The model is a stock ``LlamaForCausalLM`` that always attends bidirectionally (a 4D all-visible mask),
with ``config.mask_token_id``, ``config.shift_logits = False`` (LLaDA convention: logits at i predict
token i) and ``config.is_bidirectional = True``. The tokenizer is the character-level
:func:`cmikit.harness.testing.tiny_tokenizer`; every special id is read from it.

Training is the masked-diffusion SFT objective of LLaDA (Nie et al., 2025, Eq. 5 / their SFT recipe):
the prompt stays visible, each answer token (EOS padding included) is masked with probability
``p = (1 - eps) * t + eps`` for ``t ~ U(0, 1)`` per sequence, and the loss is the masked tokens'
cross-entropy weighted by ``1/p`` and averaged over answer positions.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cmikit.decoding.tiny_task import CopyOneTask, OneClassUpperTask, task_from_dict, task_name

#: Checkpoint folder name per task (under ``decoding/assets`` or the cache).
CHECKPOINT_NAMES = {"copy-one-of-two": "tiny-copy-dlm", "one-class-upper": "tiny-case-dlm"}
#: The block-diffusion checkpoints (causal between blocks of ``bd_size``, see :mod:`cmikit.decoding.block_diffusion`).
BD_CHECKPOINT_NAMES = {"copy-one-of-two": "tiny-copy-bd-dlm"}
DEFAULT_TASK = "copy-one-of-two"
ASSET_DIR = Path(__file__).parent / "assets" / CHECKPOINT_NAMES[DEFAULT_TASK]


def _checkpoint_name(task: str, block_diffusion: bool) -> str:
    names = BD_CHECKPOINT_NAMES if block_diffusion else CHECKPOINT_NAMES
    if task not in names:
        raise ValueError(f"task={task!r}: no {'block-diffusion ' if block_diffusion else ''}checkpoint; choose one "
                         f"of {sorted(names)}")
    return names[task]


def asset_dir(task: str = DEFAULT_TASK, block_diffusion: bool = False) -> Path:
    """The packaged checkpoint folder of ``task`` (its block-diffusion model when ``block_diffusion``)."""
    return Path(__file__).parent / "assets" / _checkpoint_name(task, block_diffusion)


def cache_dir(task: str = DEFAULT_TASK, block_diffusion: bool = False) -> Path:
    """``$CMIKIT_CACHE/decoding/<checkpoint>`` (default ``~/.cache/cmikit``)."""
    root = Path(os.environ.get("CMIKIT_CACHE", Path.home() / ".cache" / "cmikit"))
    return root / "decoding" / _checkpoint_name(task, block_diffusion)


@dataclass
class TinyDLMTrainConfig:
    """Everything that determines the trained weights (same config + same seed = same checkpoint).

    ``task`` picks the problem family; ``n_diff`` applies to ``copy-one-of-two`` only, ``choice`` to
    ``one-class-upper`` only. :func:`train_config_for` gives each task's shipped settings.
    """

    task_name: str = DEFAULT_TASK
    choice: str = "abcd"
    length: int = 24
    n_diff: int = 6
    alphabet: str = "abcdefgh"
    gen_length: int = 24
    hidden_size: int = 64
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 192
    steps: int = 1500
    batch_size: int = 32
    save_every: int = 250
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    mask_eps: float = 1e-3
    #: 0: a fully bidirectional (LLaDA-style) model; ``N``: a block-diffusion model, causal between blocks of N.
    bd_size: int = 0
    seed: int = 0
    heldout_seed: int = 12345
    n_heldout: int = 512

    def __post_init__(self) -> None:
        from cmikit.harness.config import check_at_least, check_choice, check_range

        check_choice("--task-name", self.task_name, sorted(CHECKPOINT_NAMES))
        for name in ("length", "gen_length", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "steps", "batch_size"):
            check_at_least("--" + name.replace("_", "-"), getattr(self, name), 1)
        for name in ("n_diff", "save_every", "warmup_steps", "seed", "heldout_seed", "n_heldout"):
            check_at_least("--" + name.replace("_", "-"), getattr(self, name), 0)
        check_range("--lr", self.lr, 0.0, 10.0, low_open=True)
        check_range("--weight-decay", self.weight_decay, 0.0, 1.0)
        check_range("--mask-eps", self.mask_eps, 0.0, 1.0, low_open=True, high_open=True)
        if not self.alphabet:
            from cmikit.harness.errors import ConfigError

            raise ConfigError("--alphabet '': give at least one letter.")

    def task(self) -> CopyOneTask | OneClassUpperTask:
        if self.task_name == "one-class-upper":
            return OneClassUpperTask(length=self.length, alphabet=self.alphabet, choice=self.choice,
                                     gen_length=self.gen_length)
        if self.task_name == "copy-one-of-two":
            return CopyOneTask(length=self.length, n_diff=self.n_diff, alphabet=self.alphabet,
                               gen_length=self.gen_length)
        raise ValueError(f"task_name={self.task_name!r}: choose one of {sorted(CHECKPOINT_NAMES)}")


#: Per-task settings of the shipped checkpoints (the rest are the dataclass defaults).
TASK_TRAIN_SETTINGS: dict[str, dict] = {
    "copy-one-of-two": {},
    "one-class-upper": {"length": 64, "gen_length": 64, "num_layers": 4, "steps": 3000, "save_every": 500},
}
#: The block-diffusion checkpoints' settings (``dlm-decode train-tiny --bd-size 8``: the copy task, blocks of 8).
BD_TRAIN_SETTINGS: dict[str, dict] = {
    "copy-one-of-two": {"bd_size": 8},
}


def train_config_for(task: str = DEFAULT_TASK, block_diffusion: bool = False, **overrides) -> TinyDLMTrainConfig:
    """The shipped training settings of ``task`` (its block-diffusion model's when ``block_diffusion``) with
    ``overrides`` applied."""
    table = BD_TRAIN_SETTINGS if block_diffusion else TASK_TRAIN_SETTINGS
    if task not in table:
        raise ValueError(f"task={task!r}: choose one of {sorted(table)}")
    return TinyDLMTrainConfig(**{"task_name": task, **table[task], **overrides})


def _tokenizer():
    from cmikit.harness.testing import tiny_tokenizer

    return tiny_tokenizer()


def build_model(cfg: TinyDLMTrainConfig, tokenizer) -> torch.nn.Module:
    """A randomly initialised bidirectional Llama mask predictor sized by ``cfg``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    task = cfg.task()
    prompt_len = len(task.sample(random.Random(0))[0])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=max(128, prompt_len + cfg.gen_length),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    config.mask_token_id = tokenizer.mask_token_id
    config.shift_logits = False
    config.is_bidirectional = True
    if cfg.bd_size:
        config.block_diffusion = True
        config.bd_size = cfg.bd_size
    config.tiny_dlm_task = {"name": task_name(task), **asdict(task)}
    # Eager attention: on CPU it is ~3x faster than sdpa with an explicit 4D mask at this size.
    config._attn_implementation = "eager"
    return LlamaForCausalLM(config)


def encode_problems(problems: list[tuple[str, str]], tokenizer, gen_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prompt_ids [N, P], answer_ids [N, gen_length])``, answers padded with EOS (all prompts equal length)."""
    prompts = torch.tensor([tokenizer.convert_tokens_to_ids(list(p)) for p, _ in problems])
    answers = torch.full((len(problems), gen_length), tokenizer.eos_token_id)
    for row, (_, ans) in enumerate(problems):
        answers[row, : len(ans)] = torch.tensor(tokenizer.convert_tokens_to_ids(list(ans)))
    return prompts, answers


def bidirectional_logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    from cmikit.harness.testing import bidirectional_attention_mask

    return model(input_ids=input_ids, attention_mask=bidirectional_attention_mask(None, input_ids)).logits


def block_diffusion_train_logits(model: torch.nn.Module, prompts: torch.Tensor, noisy: torch.Tensor,
                                 clean: torch.Tensor, bd_size: int) -> torch.Tensor:
    """Logits of the noisy answer ``[N, G, V]`` from one pass over ``[prompt | noisy | clean]`` (BD3-LM's vectorised
    block-diffusion training; masks from :func:`cmikit.decoding.block_diffusion.block_causal_mask`)."""
    from cmikit.decoding.block_diffusion import block_causal_mask, block_ids

    p, g = prompts.shape[1], noisy.shape[1]
    positions = torch.cat([torch.arange(p + g), torch.arange(p, p + g)])
    blocks = block_ids(positions, p, bd_size)
    is_noisy = torch.zeros(p + 2 * g, dtype=torch.bool)
    is_noisy[p:p + g] = True
    mask = block_causal_mask(blocks, blocks, query_noisy=is_noisy, key_noisy=is_noisy,
                             dtype=next(model.parameters()).dtype).expand(prompts.shape[0], -1, -1, -1)
    out = model(input_ids=torch.cat([prompts, noisy, clean], dim=1), attention_mask=mask,
                position_ids=positions.expand(prompts.shape[0], -1))
    return out.logits[:, p:p + g]


TRAIN_LOG = "train_log.json"


def check_output_dir(output_dir: str | Path, flag: str = "--output") -> Path:
    """``output_dir`` when training may write there, else :class:`ConfigError`: never inside the installed
    ``cmikit`` packages (the shipped checkpoints are read-only data), and never into an existing folder that
    holds files but no ``train_log.json`` of an earlier training (a folder this command did not create)."""
    from cmikit.harness.errors import ConfigError

    out = Path(output_dir).expanduser()
    resolved = out.resolve()
    package_root = Path(__file__).resolve().parent.parent
    for package in ("decoding", "harness", "sami", "cip"):
        if resolved.is_relative_to(package_root / package):
            raise ConfigError(f"{flag} {out}: inside the cmikit package ({package_root / package}); train into "
                              f"another folder (default: {cache_dir()}).")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} {out}: is a file; choose a folder.")
    if out.is_dir() and any(out.iterdir()):
        log = out / TRAIN_LOG
        try:
            ours = "train_config" in json.loads(log.read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            ours = False
        if not ours:
            raise ConfigError(f"{flag} {out}: holds files but no {TRAIN_LOG} from `dlm-decode train-tiny`, so it "
                              f"is not a folder this command made; choose an empty or new folder.")
    return out


def train_tiny_dlm(cfg: TinyDLMTrainConfig, output_dir: str | Path, progress: bool = True) -> Path:
    """Train from scratch and save ``model.safetensors`` + ``config.json`` (+ ``train_log.json``) to ``output_dir``
    (checked first by :func:`check_output_dir`)."""
    from tqdm.auto import tqdm

    check_output_dir(output_dir)

    torch.manual_seed(cfg.seed)
    tokenizer = _tokenizer()
    model = build_model(cfg, tokenizer).train()
    task = cfg.task()
    heldout = task.problems(cfg.n_heldout, seed=cfg.heldout_seed)
    heldout_prompts = {p for p, _ in heldout}
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    mask_id = tokenizer.mask_token_id

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    log = []
    start, cpu_start = time.time(), time.process_time()
    bar = tqdm(range(cfg.steps), desc="train tiny DLM", disable=not progress)
    for step in bar:
        batch = []
        while len(batch) < cfg.batch_size:
            prompt, answer = task.sample(rng)
            if prompt not in heldout_prompts:
                batch.append((prompt, answer))
        prompts, answers = encode_problems(batch, tokenizer, cfg.gen_length)
        t = torch.rand(cfg.batch_size, 1, generator=gen)
        p_mask = (1 - cfg.mask_eps) * t + cfg.mask_eps
        masked = torch.rand(answers.shape, generator=gen) < p_mask
        noisy = torch.where(masked, torch.full_like(answers, mask_id), answers)
        if cfg.bd_size:
            logits = block_diffusion_train_logits(model, prompts, noisy, answers, cfg.bd_size)
        else:
            logits = bidirectional_logits(model, torch.cat([prompts, noisy], dim=1))[:, prompts.shape[1]:]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), answers.reshape(-1), reduction="none")
        loss = (ce.view_as(answers) * masked / p_mask).sum() / answers.numel()
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            log.append({"step": step, "loss": round(loss.item(), 5), "seconds": round(time.time() - start, 1),
                        "cpu_seconds": round(time.process_time() - cpu_start, 1)})
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if cfg.save_every and step and step % cfg.save_every == 0:
            _save(model, Path(output_dir) / "partial", {"step": step, "log": log})
            model.train()

    summary = {"train_config": asdict(cfg), "train_seconds": round(time.time() - start, 1),
               "train_cpu_seconds": round(time.process_time() - cpu_start, 1), "threads": torch.get_num_threads(),
               "log": log}
    return _save(model, Path(output_dir), summary)


def _save(model: torch.nn.Module, out: Path, summary: dict) -> Path:
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").unlink(missing_ok=True)
    (out / TRAIN_LOG).write_text(json.dumps(summary, indent=1))
    return out


def load_tiny_dlm(path: str | Path | None = None, train_if_missing: bool = True, progress: bool = True,
                  task: str = DEFAULT_TASK, block_diffusion: bool = False):
    """``(model, tokenizer, task)`` for the trained tiny DLM of ``task``.

    Looks in ``path``, else the packaged ``decoding/assets/<checkpoint>``, else the cache
    (``$CMIKIT_CACHE``); trains into the cache when none exists and ``train_if_missing``.
    """
    from transformers import LlamaForCausalLM

    candidates = [Path(path)] if path else [asset_dir(task, block_diffusion), cache_dir(task, block_diffusion)]
    found = next((c for c in candidates if (c / "model.safetensors").exists()), None)
    if found is None:
        if not train_if_missing:
            raise FileNotFoundError(f"No tiny DLM checkpoint in {[str(c) for c in candidates]}; run "
                                    "`python scripts/train_tiny_dlm.py` first.")
        found = train_tiny_dlm(train_config_for(task, block_diffusion), candidates[-1], progress=progress)
    model = LlamaForCausalLM.from_pretrained(found).eval()
    return model, _tokenizer(), task_from_dict(model.config.tiny_dlm_task)
