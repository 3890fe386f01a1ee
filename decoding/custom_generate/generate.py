"""Hub-publishable ``custom_generate/generate.py``: masked-diffusion decoding (CCD and the reference samplers).

Publish the folder that contains ``custom_generate/`` (or use it locally) and call::

    model.generate(input_ids, custom_generate="<repo or folder>", trust_remote_code=True,
                   diffusion_config={"strategy": "ccd"}, max_new_tokens=64)

It requires the ``cmikit`` package (see ``requirements.txt``) and runs the same loop as
:func:`cmikit.decoding.generate`, with options resolved exactly as for the callable route
(:func:`cmikit.decoding.plugin.resolve_generate_options`: ``max_new_tokens``, ``return_dict_in_generate`` and
``do_sample``/``temperature``/``top_p``/``top_k`` from the call or its ``generation_config``).
"""

import torch

from cmikit.decoding.plugin import merged_generation_config, run_custom_generate

# Arguments of transformers' `generate` that the diffusion loop does not use (no effect on a canvas).
_UNUSED = ("logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "synced_gpus", "assistant_model",
           "streamer", "negative_prompt_ids", "negative_prompt_attention_mask", "use_model_defaults", "custom_generate",
           "tokenizer", "assistant_tokenizer")


def generate(model, inputs: torch.Tensor | None = None, generation_config=None, diffusion_config=None,
             diffusion_tokenizer=None, **kwargs):
    """Entry point transformers calls with every ``generate`` argument (``model`` instead of ``self``)."""
    input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
    if input_ids is None:
        raise ValueError("custom_generate: pass the prompt ids as `inputs` or `input_ids`.")
    call_kwargs = {k: v for k, v in kwargs.items() if k not in _UNUSED and v is not None}
    merged, model_kwargs = merged_generation_config(model, generation_config, **call_kwargs)
    return run_custom_generate(model, input_ids, diffusion_config, merged,
                               attention_mask=model_kwargs.get("attention_mask"),
                               diffusion_tokenizer=diffusion_tokenizer)
