"""Train a tiny LLaDA-style diffusion LM used by `dlm-decode bench` (deterministic: same arguments, same weights).

    python scripts/train_tiny_dlm.py                                  # copy-one-of-two -> decoding/assets/tiny-copy-dlm
    python scripts/train_tiny_dlm.py --task-name one-class-upper      # -> decoding/assets/tiny-case-dlm
    python scripts/train_tiny_dlm.py --bd-size 8                      # block diffusion -> decoding/assets/tiny-copy-bd-dlm
    python scripts/train_tiny_dlm.py --output DIR --steps 500

Each task has its shipped settings (cmikit.decoding.tiny_dlm.TASK_TRAIN_SETTINGS); flags override them. Budget on
1 CPU thread: one-class-upper about 12 CPU-minutes (train_log.json records wall and CPU seconds and
the thread count). See decoding/tiny_dlm.py for the objective and decoding/tiny_task.py for the tasks.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch  # noqa: E402

from cmikit.decoding.tiny_dlm import (  # noqa: E402
    DEFAULT_TASK,
    TASK_TRAIN_SETTINGS,
    TinyDLMTrainConfig,
    asset_dir,
    train_config_for,
    train_tiny_dlm,
)


def main(argv: list[str] | None = None) -> None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task-name", default=DEFAULT_TASK, choices=sorted(TASK_TRAIN_SETTINGS))
    pre.add_argument("--bd-size", type=int, default=0)
    known = pre.parse_known_args(argv)[0]
    task, block_diffusion = known.task_name, known.bd_size > 0
    defaults = dataclasses.asdict(train_config_for(task, block_diffusion))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(asset_dir(task, block_diffusion)),
                        help="checkpoint folder (default: %(default)s)")
    for f in dataclasses.fields(TinyDLMTrainConfig):
        kwargs = {"choices": sorted(TASK_TRAIN_SETTINGS)} if f.name == "task_name" else {}
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=defaults[f.name],
                            help=f"default: {defaults[f.name]}", **kwargs)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = TinyDLMTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TinyDLMTrainConfig)})
    out = train_tiny_dlm(cfg, args.output)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
