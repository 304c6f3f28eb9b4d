"""The `training:` section: TrainingArguments fields under their own names, the toolkit's defaults,
the rules that span keys, and the arguments as this machine runs them (bf16, CPU)."""

from __future__ import annotations

import dataclasses
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


def build_training(value, origins: OriginMap) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ToolkitError(f"{origins(('training',))}: 'training' must be a mapping of TrainingArguments fields")
    hints = typing.get_type_hints(TrainingArguments)
    names = [f.name for f in dataclasses.fields(TrainingArguments) if f.init]
    out = dict(TRAINING_DEFAULTS)
    for key, item in value.items():
        if key not in names:
            unknown_key(("training", key), names, origins)
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


def check_consistency(recipe: Recipe, origins: OriginMap) -> None:
    """Rules that span keys, and TrainingArguments' own checks, all before any work."""
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
    if not recipe.data.sources:
        raise ToolkitError(f"{origins(('data', 'sources'))}: data.sources is empty; name at least one corpus")
    if not recipe.data.eval_sources and not 0 < recipe.data.eval_fraction < 1:
        raise ToolkitError(
            f"{origins(('data', 'eval_fraction'))}: data.eval_fraction must be between 0 and 1"
            " (or list data.eval_sources)"
        )
    if recipe.data.block_size < 2:
        raise ToolkitError(f"{origins(('data', 'block_size'))}: data.block_size must be at least 2")
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
    try:
        TrainingArguments(**training_arguments(recipe))
    except (ValueError, TypeError, ImportError) as err:
        raise ToolkitError(f"{origins(('training',))}: training: {first_line(err)}") from None


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
    # The toolkit pushes with huggingface_hub itself; a token kept here would be pickled
    # into training_args.bin in every checkpoint.
    args.pop("hub_token", None)
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
