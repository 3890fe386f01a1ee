"""Train the tiny LLaDA-style diffusion LM used by `dlm-decode bench` (about 10 minutes on 2 CPU cores).

    python scripts/train_tiny_dlm.py                      # writes decoding/assets/tiny-addition-dlm
    python scripts/train_tiny_dlm.py --output DIR --steps 500

Deterministic: the same arguments give the same weights. See decoding/tiny_dlm.py for the objective.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from decoding.tiny_dlm import ASSET_DIR, TinyDLMTrainConfig, train_tiny_dlm  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(ASSET_DIR), help="checkpoint folder (default: %(default)s)")
    for f in dataclasses.fields(TinyDLMTrainConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                            help=f"default: {f.default}")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = TinyDLMTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TinyDLMTrainConfig)})
    out = train_tiny_dlm(cfg, args.output)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
