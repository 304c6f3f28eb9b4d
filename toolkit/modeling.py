"""Models: a causal LM from a config (any model_type AutoConfig knows) or from pretrained weights."""

from __future__ import annotations

import difflib
import logging

import torch

from toolkit.errors import ToolkitError, first_line
from toolkit.recipe import Model

logger = logging.getLogger("toolkit")

# Names that configs use for the longest sequence the position embeddings cover.
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def load_model_config(spec: Model):
    """The model config with the recipe's overrides applied; cheap, done before any data work."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if spec.name_or_path:
        try:
            config = AutoConfig.from_pretrained(spec.name_or_path, revision=spec.revision)
        except (OSError, ValueError) as err:
            raise ToolkitError(f"could not load model {spec.name_or_path!r}: {first_line(err)} (check model.name_or_path)") from None
    else:
        if spec.model_type not in CONFIG_MAPPING:
            close = difflib.get_close_matches(spec.model_type, list(CONFIG_MAPPING.keys()), n=3)
            raise ToolkitError(
                f"unknown model.model_type {spec.model_type!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
            )
        config = AutoConfig.for_model(spec.model_type)
    known = set(config.to_dict()) | {k for k in dir(config) if not k.startswith("_")}
    for key in spec.config:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean 'model.config.{close[0]}'?" if close else ""
            raise ToolkitError(f"unknown key 'model.config.{key}' for a {config.model_type} config{hint}")
    if spec.name_or_path:
        for key, value in spec.config.items():  # a pretrained config already holds its derived values
            setattr(config, key, value)
    else:
        # Built anew so that derived values follow (Llama's head_dim = hidden_size / heads).
        config = AutoConfig.for_model(spec.model_type, **spec.config)
    return config


def max_positions(config) -> tuple[int, str] | tuple[None, None]:
    """The longest sequence the model's positions cover, and the config key that sets it."""
    stored = config.to_dict()  # the key as the config file spells it (gpt2: n_positions)
    for key in _POSITION_KEYS:
        value = stored.get(key)
        if isinstance(value, int) and value > 0:
            return value, key
    return None, None


def check_block_size(config, block_size: int) -> None:
    limit, key = max_positions(config)
    if limit is not None and block_size > limit:
        raise ToolkitError(
            f"data.block_size={block_size} is larger than the model's maximum positions ({limit});"
            f" lower data.block_size or raise model.config.{key}"
        )


def build_model(spec: Model, config, tokenizer, seed: int = 42):
    """Instantiate the model in float32 (mixed precision autocasts on top), embeddings fitted to the tokenizer."""
    from transformers import AutoModelForCausalLM, set_seed

    set_seed(seed)  # the initial weights depend on it

    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    try:
        if spec.name_or_path:
            model = AutoModelForCausalLM.from_pretrained(
                spec.name_or_path, config=config, revision=spec.revision,
                attn_implementation=spec.attn_implementation, dtype=torch.float32,
            )
        else:
            config.vocab_size = len(tokenizer)
            for key, value in ids.items():
                setattr(config, key, value)
            model = AutoModelForCausalLM.from_config(config, attn_implementation=spec.attn_implementation, dtype=torch.float32)
    except (ValueError, ImportError) as err:
        raise ToolkitError(f"could not build the model: {first_line(err)}") from None
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        logger.info("model: resizing embeddings to the tokenizer's %d tokens", len(tokenizer))
        model.resize_token_embeddings(len(tokenizer))
    if model.generation_config is not None:
        for key, value in ids.items():
            if getattr(model.generation_config, key, None) is None:
                setattr(model.generation_config, key, value)
    return model


def count_parameters(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
