"""The `training:` section: TrainingArguments fields under their own names, the toolkit's defaults,
the rules that span keys, and the arguments as this machine runs them (bf16, CPU)."""

from __future__ import annotations

import codecs
import dataclasses
import os
import re
import typing
from typing import Any

from transformers import TrainingArguments

from toolkit.errors import ToolkitError, first_line
from toolkit.hardware import bf16_supported, has_accelerator
from toolkit.recipe.sections import Recipe
from toolkit.recipe.types import OriginMap, check_value, unknown_key

# Defaults for `training:` where the toolkit differs from TrainingArguments' own.
TRAINING_DEFAULTS: dict[str, Any] = {
    "output_dir": "outputs/run",
    "report_to": ["tensorboard"],
    "logging_steps": 10,
    "save_total_limit": 2,
    "seed": 42,
    "include_num_input_tokens_seen": "non_padding",  # for tokens/s in the logs and the model card
    # One fused kernel for all parameters instead of a loop over them: on 2 CPU cores,
    # 1.8 ms against 15.6 ms per step for 4M parameters; on GPUs the usual fast choice.
    "optim": "adamw_torch_fused",
    # Trainer's default replaces a NaN or infinite loss in the logs by the running mean,
    # hiding a diverged run; the toolkit stops on it instead (training.py).
    "logging_nan_inf_filter": False,
}

# Optimizer names the toolkit adds to TrainingArguments.optim: plain Adam, whose weight
# decay is an L2 term in the gradient (AdamW decouples it), is missing there.
EXTRA_OPTIMIZERS = {"adam"}

# The Trainer's own Hub keys: with them the Trainer pushes by itself, public by default and
# with its own file list, past hub.private and the toolkit's allowlist. The hub: section does it.
TRAINER_HUB_KEYS = {"push_to_hub": "hub.push", "hub_model_id": "hub.model_id", "hub_token": "hub.token (or HF_TOKEN)",
                    "hub_private_repo": "hub.private", "hub_strategy": "hub.strategy", "hub_always_push": "hub.strategy",
                    "hub_revision": "hub.model_id"}


def build_training(value, origins: OriginMap) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ToolkitError(f"{origins(('training',))}: 'training' must be a mapping of TrainingArguments fields")
    hints = typing.get_type_hints(TrainingArguments)
    names = [f.name for f in dataclasses.fields(TrainingArguments) if f.init]
    out = dict(TRAINING_DEFAULTS)
    for key, item in value.items():
        if key not in names:
            unknown_key(("training", key), names, origins)
        if key in TRAINER_HUB_KEYS:  # the value is never shown: it may be a token
            raise ToolkitError(f"{origins(('training', key))}: training.{key} is not used; the toolkit pushes through"
                               f" the hub: section: set {TRAINER_HUB_KEYS[key]} instead")
        if key == "output_dir":
            out[key] = resolve_output_dir(item, origins)
            continue
        if key == "optim" and item in EXTRA_OPTIMIZERS:
            out[key] = item
            continue
        if key == "activation_checkpointing" and isinstance(item, str):
            if item != "auto":
                raise ToolkitError(f"{origins(('training', key))}: 'training.activation_checkpointing' must be true,"
                                   f" false or auto, got {item!r}")
            out[key] = item
            continue
        out[key] = check_value(item, hints[key], ("training", key), origins)
    return out


def resolve_output_dir(value, origins: OriginMap) -> str:
    """training.output_dir as every writer uses it (the toolkit's own and the Trainer's):
    `~` and $VARIABLES expanded once, here, so that no two writers see two folders."""
    where = origins(("training", "output_dir"))
    text = str(value if value is not None else "").strip()
    if not text:
        raise ToolkitError(f"{where}: training.output_dir is empty; name a folder for the run, e.g. outputs/my-run")
    expanded = os.path.expandvars(os.path.expanduser(text))
    unset = re.findall(r"\$\{?(\w+)", expanded)
    if unset:
        raise ToolkitError(f"{where}: training.output_dir uses ${unset[0]}, which is not set; set it or write the path out")
    return expanded


def check_consistency(recipe: Recipe, origins: OriginMap, task=None) -> None:
    """Rules that span keys, and TrainingArguments' own checks, all before any work. The arguments built
    for that check are the run's: `recipe.arguments`, of the class and with the keywords of `task`."""
    for section, sources in (("sources", recipe.data.sources), ("eval_sources", recipe.data.eval_sources)):
        for i, src in enumerate(sources):
            given = [k for k in ("builtin", "hub", "files") if getattr(src, k)]
            if len(given) != 1:
                raise ToolkitError(
                    f"{origins(('data', section, i))}: data.{section}[{i}] needs exactly one of builtin, hub, files"
                    f" (got {', '.join(given) or 'none'})"
                )
            if src.weight < 0:
                raise ToolkitError(f"{origins(('data', section, i, 'weight'))}: data.{section}[{i}].weight must be >= 0")
            if src.limit is not None and src.limit < 1:
                raise ToolkitError(f"{origins(('data', section, i, 'limit'))}: data.{section}[{i}].limit must be at least 1,"
                                   f" got {src.limit} (remove the key to keep every document)")
            try:
                codecs.lookup(src.encoding)
            except LookupError:
                raise ToolkitError(f"{origins(('data', section, i, 'encoding'))}: data.{section}[{i}].encoding"
                                   f" {src.encoding!r} is not an encoding Python knows; e.g. utf-8, latin-1, cp1252") from None
    if not recipe.data.sources:
        raise ToolkitError(f"{origins(('data', 'sources'))}: data.sources is empty; name at least one corpus")
    if not recipe.data.eval_sources and not 0 < recipe.data.eval_fraction < 1:
        raise ToolkitError(
            f"{origins(('data', 'eval_fraction'))}: data.eval_fraction must be between 0 and 1"
            " (or list data.eval_sources)"
        )
    _check_counts(recipe, origins)
    if recipe.data.streaming:
        _check_streaming(recipe, origins)
    if recipe.hub.push and not recipe.hub.model_id:
        raise ToolkitError(f"{origins(('hub', 'push'))}: hub.push is true but hub.model_id is not set (namespace/name)")
    if recipe.hub.model_id and recipe.hub.model_id.count("/") != 1:
        raise ToolkitError(f"{origins(('hub', 'model_id'))}: hub.model_id must be 'namespace/name', got {recipe.hub.model_id!r}")
    for key, broken in _EVAL_BREAKERS.items():
        if key in recipe.training and recipe.training[key] == broken:
            raise ToolkitError(
                f"{origins(('training', key))}: training.{key}={str(broken).lower()} is not supported:"
                " perplexity needs every evaluation token gathered; remove the key"
            )
    if recipe.evaluation.early_stopping_patience and recipe.training.get("eval_strategy", "no") == "no":
        raise ToolkitError(
            f"{origins(('evaluation', 'early_stopping_patience'))}: early stopping needs evaluations during training;"
            " set training.eval_strategy to steps or epoch"
        )
    arguments_class = getattr(task, "arguments_class", TrainingArguments)
    own = task.trainer_arguments(recipe) if task is not None else {}
    try:
        recipe.arguments = arguments_class(**training_arguments(recipe), **own)
    except (ValueError, TypeError, ImportError) as err:
        raise ToolkitError(f"{origins(('training',))}: training: {first_line(err)}") from None


_POSITIVE = (lambda v: v > 0, "greater than 0")
_STEPS = (lambda v: v > 0, "greater than 0 (a number of steps, or below 1 a fraction of the training)")
_AT_LEAST_1 = (lambda v: v >= 1, "at least 1")
_AT_LEAST_2 = (lambda v: v >= 2, "at least 2")  # a row of one token predicts nothing
_NOT_NEGATIVE = (lambda v: v >= 0, "0 or more")

# Counts that TrainingArguments takes without a word where they mean nothing (max_steps=0 trains
# one step and reports the run finished): the rule each value must meet, and the rule in words.
TRAINING_COUNTS = {
    "max_steps": (lambda v: v >= 1 or v == -1, "at least 1, or -1 to train for training.num_train_epochs"),
    "num_train_epochs": _POSITIVE, "save_steps": _STEPS, "eval_steps": _STEPS, "logging_steps": _STEPS,
    "per_device_train_batch_size": _AT_LEAST_1, "per_device_eval_batch_size": _AT_LEAST_1,
    "gradient_accumulation_steps": _AT_LEAST_1, "eval_accumulation_steps": _AT_LEAST_1,
    "save_total_limit": _AT_LEAST_1, "warmup_steps": _NOT_NEGATIVE, "dataloader_num_workers": _NOT_NEGATIVE,
    "seed": _NOT_NEGATIVE, "learning_rate": _NOT_NEGATIVE, "weight_decay": _NOT_NEGATIVE, "max_grad_norm": _NOT_NEGATIVE,
}
# The same for the toolkit's own keys.
RECIPE_COUNTS = {
    ("data", "block_size"): _AT_LEAST_2, ("data", "max_length"): _AT_LEAST_2, ("data", "shuffle_buffer"): _AT_LEAST_1,
    ("data", "num_proc"): _AT_LEAST_1, ("data", "cleaning", "min_chars"): _NOT_NEGATIVE,
    ("data", "cleaning", "max_chars"): _AT_LEAST_1, ("tokenizer", "training_documents"): _AT_LEAST_1,
    ("tokenizer", "min_frequency"): _NOT_NEGATIVE, ("lora", "r"): _AT_LEAST_1,
    ("evaluation", "early_stopping_patience"): _AT_LEAST_1, ("evaluation", "max_new_tokens"): _AT_LEAST_1,
}


def _check_counts(recipe: Recipe, origins: OriginMap) -> None:
    """Counts and sizes that make no sense (0 steps, a negative batch), and a BPE too small for its bytes."""
    given = [(("training", k), recipe.training[k]) for k in TRAINING_COUNTS if k in recipe.training]
    for keys in RECIPE_COUNTS:
        value = recipe
        for key in keys:
            value = getattr(value, key)
        given.append((keys, value))
    for keys, value in given:
        test, rule = TRAINING_COUNTS[keys[1]] if keys[0] == "training" else RECIPE_COUNTS[keys]
        if value is not None and not isinstance(value, bool) and isinstance(value, (int, float)) and not test(value):
            name = ".".join(keys)
            raise ToolkitError(f"{origins(keys)}: {name}={value:g} means nothing; {name} must be {rule}")
    tok = recipe.tokenizer
    if not tok.name_or_path and not recipe.model.name_or_path and tok.vocab_size < tok.min_vocab_size:
        raise ToolkitError(f"{origins(('tokenizer', 'vocab_size'))}: tokenizer.vocab_size={tok.vocab_size} is too small for"
                           f" a byte-level BPE, which holds 256 bytes and {len(tok.special_tokens)} special tokens before"
                           f" its first merge; set tokenizer.vocab_size to at least {tok.min_vocab_size} (a few thousand"
                           " is usual)")


def _check_streaming(recipe: Recipe, origins: OriginMap) -> None:
    data = recipe.data
    if data.format != "text":
        raise ToolkitError(f"{origins(('data', 'streaming'))}: data.streaming reads plain text for pretraining;"
                           f" data.format {data.format!r} needs data.streaming=false")
    if data.cleaning.deduplicate:
        raise ToolkitError(f"{origins(('data', 'streaming'))}: data.cleaning.deduplicate keeps every document's hash,"
                           " memory that grows with the corpus; with data.streaming set data.cleaning.deduplicate=false"
                           " (deduplicate the files beforehand)")
    if (recipe.training.get("max_steps") or -1) <= 0:
        raise ToolkitError(f"{origins(('data', 'streaming'))}: a streamed corpus has no length, so epochs cannot be"
                           " counted; set training.max_steps")
    if not data.eval_sources and data.eval_documents < 1:
        raise ToolkitError(f"{origins(('data', 'eval_documents'))}: data.eval_documents must be at least 1"
                           " (or list data.eval_sources)")


# TrainingArguments values under which evaluation would drop or never gather the
# per-token sums that perplexity is computed from.
_EVAL_BREAKERS = {"prediction_loss_only": True, "batch_eval_metrics": True, "eval_do_concat_batches": False,
                  "dataloader_drop_last": True}


def training_arguments(recipe: Recipe) -> dict[str, Any]:
    """The `training:` section as TrainingArguments keywords, with machine-dependent choices made."""
    args = dict(recipe.training)
    if args.get("optim") in EXTRA_OPTIMIZERS:
        args["optim"] = "adamw_torch"  # a placeholder: the Trainer gets the optimizer class itself
    if args.get("activation_checkpointing") == "auto":
        del args["activation_checkpointing"]  # decided once the model and the GPU are known (training.py)
    if "bf16" not in args and "fp16" not in args:
        args["bf16"] = bf16_supported()
    if not has_accelerator():
        args.setdefault("use_cpu", True)
        args.setdefault("dataloader_pin_memory", False)  # pinning needs an accelerator
    if recipe.evaluation.early_stopping_patience:
        # Early stopping compares evaluations; keep the best model, judged by the token-weighted loss.
        args.setdefault("metric_for_best_model", "loss")
        args.setdefault("load_best_model_at_end", True)
    return args
