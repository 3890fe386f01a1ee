"""Hub-publishable ``custom_generate/generate.py``: masked-diffusion decoding (CCD and the reference samplers).

Publish the folder that contains ``custom_generate/`` (or use it locally) and call::

    model.generate(input_ids, custom_generate="<repo or folder>", trust_remote_code=True,
                   diffusion_config={"gen_length": 64, "strategy": "ccd"})

It requires the ``cmikit`` package (see ``requirements.txt``) and runs the same loop as
:func:`decoding.generate`.
"""

import torch

from decoding.loop import generate as _diffusion_loop
from decoding.plugin import resolve_config


def generate(model, inputs: torch.Tensor | None = None, generation_config=None, diffusion_config=None,
             diffusion_tokenizer=None, **kwargs):
    """Entry point transformers calls with every ``generate`` argument (``model`` instead of ``self``)."""
    input_ids = inputs if inputs is not None else kwargs.get("input_ids")
    if input_ids is None:
        raise ValueError("custom_generate: pass the prompt ids as `inputs` or `input_ids`.")
    config = resolve_config(diffusion_config, generation_config or kwargs.get("generation_config"))
    out = _diffusion_loop(model, input_ids, config, attention_mask=kwargs.get("attention_mask"),
                          tokenizer=diffusion_tokenizer)
    if kwargs.get("return_dict_in_generate"):
        return out
    return out.sequences
