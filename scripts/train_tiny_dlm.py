"""Train a tiny LLaDA-style diffusion LM used by `dlm-decode bench` (deterministic: same arguments, same weights).

    python scripts/train_tiny_dlm.py                                  # copy-one-of-two -> $CMIKIT_CACHE/decoding/tiny-copy-dlm
    python scripts/train_tiny_dlm.py --task-name one-class-upper      # -> $CMIKIT_CACHE/decoding/tiny-case-dlm
    python scripts/train_tiny_dlm.py --bd-size 8                      # block diffusion -> .../tiny-copy-bd-dlm
    python scripts/train_tiny_dlm.py --output DIR --steps 500

Each task has its shipped settings (cmikit.decoding.tiny_dlm.TASK_TRAIN_SETTINGS); flags override them. Budget on
1 CPU thread: one-class-upper about 12 CPU-minutes (train_log.json records wall and CPU seconds and
the thread count). See decoding/tiny_dlm.py for the objective and decoding/tiny_task.py for the tasks.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field

import torch

from cmikit.decoding.tiny_dlm import (
    TASK_TRAIN_SETTINGS,
    TinyDLMTrainConfig,
    cache_dir,
    check_output_dir,
    train_config_for,
    train_tiny_dlm,
)


@dataclass
class TrainTinyOptions:
    """Options besides the :class:`TinyDLMTrainConfig` fields (whose defaults are the task's shipped settings)."""

    output: str | None = field(default=None, metadata={"help": "checkpoint folder (default: $CMIKIT_CACHE/decoding/"
                                                               "<checkpoint>; never inside the package: copy a "
                                                               "checkpoint into decoding/assets yourself to ship it)"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})


def main(argv: list[str] | None = None) -> int:
    from cmikit.harness.config import check_at_least, check_choice, explicit_keys, parse_config

    argv = list(sys.argv[1:] if argv is None else argv)
    types = (TrainTinyOptions, TinyDLMTrainConfig)
    opts, parsed = parse_config(types, argv, prog="dlm-decode train-tiny", description=__doc__, dashes=True)
    check_choice("--task-name", parsed.task_name, sorted(TASK_TRAIN_SETTINGS))
    check_at_least("--threads", opts.threads, 1)
    # the task's shipped settings, then what the command line (or --config file) gave
    given = explicit_keys(types, argv) & {f.name for f in dataclasses.fields(TinyDLMTrainConfig)}
    block_diffusion = parsed.bd_size > 0  # the task's block-diffusion settings (BD_TRAIN_SETTINGS)
    cfg = train_config_for(parsed.task_name, block_diffusion,
                           **{k: getattr(parsed, k) for k in given - {"task_name"}})
    output = opts.output or str(cache_dir(cfg.task_name, block_diffusion))
    check_output_dir(output)  # never into the package, nor into a folder this command did not make
    torch.set_num_threads(opts.threads)
    out = train_tiny_dlm(cfg, output)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    from cmikit.harness.cli import run_cli

    sys.exit(run_cli(main))
