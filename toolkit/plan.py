"""Plan a run before starting it: parameters, FLOPs, tokens, memory and time for a recipe.

    toolkit plan RECIPE [--gpu NAME] [--num-processes N]

Answers "which model fits my task, compute and data" from the recipe alone: the model is
built on the meta device (shapes, no weights), nothing is downloaded and no data is read.
FLOPs follow the anchors' convention (6N + 12·L·d·T per token), so a plan's FLOPs per token are
the figure that MFU is measured against.
"""

from __future__ import annotations

import math
from typing import Any

from toolkit.budget import (
    ASSUMED_MFU,
    AUTO_CHECKPOINTING_SHARE,
    CHINCHILLA_TOKENS_PER_PARAMETER,
    KNOWN_GPUS,
    checkpointing_needed,
    checkpointing_setting,
    count_model,
    find_gpu,
    flops_per_token,
    gpu_in_device_name,
    half_precision,
    measure_cpu_flops,
    memory_estimate,
    training_value,
)
from toolkit.errors import ToolkitError
from toolkit.recipe import Recipe

# Also the figures other modules and tests read from the plan's side.
__all__ = ["ASSUMED_MFU", "KNOWN_GPUS", "find_gpu", "flops_per_token", "format_plan", "gpu_in_device_name",
           "measure_cpu_flops", "plan"]


def plan(recipe: Recipe, task, gpu: str | None = None, num_processes: int = 1) -> dict[str, Any]:
    """Size the recipe's run: parameters, FLOPs, tokens, memory per device and time.

    `task`: the recipe's Task, which builds its model on the meta device and says how long a
    training row is (blocks, examples, source and target, question and context windows).
    `gpu` names one of KNOWN_GPUS (any case); None plans for this machine's CPU, whose
    float32 matmul rate is measured (under a second). `num_processes` is the number of
    data-parallel processes, each with a full copy of the model.
    """
    if num_processes < 1:
        raise ToolkitError(f"--num-processes must be at least 1, got {num_processes}")
    device = find_gpu(gpu) if gpu is not None else None
    shape = task.plan_model(recipe)
    counts = count_model(shape.model, recipe)
    T, T_key = task.sequence_length(recipe)
    L, d = shape.layers, shape.hidden_size
    flops_per_token = 6 * counts["N"] + 12 * L * d * T

    batch = training_value(recipe, "per_device_train_batch_size")
    accumulation = training_value(recipe, "gradient_accumulation_steps")
    tokens_per_step = batch * accumulation * num_processes * T
    max_steps = training_value(recipe, "max_steps")
    tokens = tokens_per_step * max_steps if max_steps > 0 else None
    total_flops = flops_per_token * tokens if tokens is not None else None

    half = half_precision(recipe, device is not None)
    setting = checkpointing_setting(recipe)
    checkpointing = bool(setting) if setting != "auto" else (
        device is not None and checkpointing_needed(shape, recipe, T, half, device[1]["memory"], counts)[0])
    memory = memory_estimate(shape, counts, recipe, T, batch, half, checkpointing)
    if device is not None:
        name, spec = device
        peak = spec["peak_flops"] * num_processes
    else:
        name, spec = "CPU", None
        peak = measure_cpu_flops()  # processes on one CPU share its cores: the rate does not grow with them
    flops_per_second = peak * ASSUMED_MFU
    time_per_step = tokens_per_step * flops_per_token / flops_per_second

    result = {
        "recipe": recipe.path,
        "task": recipe.task,
        "model": {"model_type": shape.model_type, "source": shape.source, "layers": L, "hidden_size": d,
                  "heads": shape.heads, "vocab_size": shape.vocab_size},
        "parameters": counts["parameters"],
        "non_embedding_parameters": counts["non_embedding"],
        "position_embedding_parameters": counts["position_embeddings"],
        "flops_parameters": counts["N"],
        "trainable_parameters": counts["trainable"],
        "lora": recipe.lora.enabled,
        "sequence_length": T,
        "sequence_length_key": T_key,
        "flops_per_token": flops_per_token,
        "per_device_batch": batch,
        "gradient_accumulation": accumulation,
        "num_processes": num_processes,
        "tokens_per_step": tokens_per_step,
        "max_steps": max_steps,
        "tokens": tokens,
        "total_flops": total_flops,
        "tokens_per_parameter": tokens / counts["parameters"] if tokens is not None else None,
        # For this compute, the Chinchilla-optimal model: C = 6*N*D with D = 20*N.
        "compute_optimal_parameters": (
            round(math.sqrt(total_flops / (6 * CHINCHILLA_TOKENS_PER_PARAMETER))) if total_flops else None
        ),
        "precision": "bf16" if half else "fp32",
        "activation_checkpointing": checkpointing,
        "activation_checkpointing_setting": setting,
        "memory": memory,
        "device": name,
        "gpu_memory": spec["memory"] if spec else None,
        "fits": memory["total"] <= spec["memory"] if spec else None,
        "peak_flops": peak,
        "mfu": ASSUMED_MFU,
        "flops_per_second": flops_per_second,
        "time_per_step_s": time_per_step,
        "time_s": time_per_step * max_steps if max_steps > 0 else None,
    }
    result["notes"] = _notes(result, recipe, shape)
    return result


# --------------------------------------------------------------------------- notes


def _notes(result: dict, recipe: Recipe, shape) -> list[str]:
    notes = []
    if result["tokens"] is None:
        epochs = training_value(recipe, "num_train_epochs")
        notes.append(
            f"training.max_steps is not set: the tokens seen depend on the data size ({epochs:g} epochs);"
            " set training.max_steps, or multiply the train_tokens in the run's data_stats.json"
        )
    else:
        notes.append(_chinchilla(result, recipe))
    limit, key = shape.positions
    if limit is not None and result["sequence_length"] > limit:
        notes.append(f"{result['sequence_length_key']}={result['sequence_length']} is more than the model's"
                     f" {limit} positions: the run would stop; lower it or raise model.config.{key}")
    if recipe.model.name_or_path and recipe.data.format != "text" and not recipe.data.packing:
        notes.append("data.packing is off: rows are padded only to their batch's longest example, so T is an upper bound")
    if result["lora"]:
        notes.append("LoRA: the frozen base needs no weight gradients, so the real work is about 2/3 of the 6N"
                     " convention used here (the figure MFU is measured against)")
    optim = training_value(recipe, "optim")
    optim = getattr(optim, "value", optim)  # TrainingArguments' default is an enum member
    if "adam" not in optim or "8bit" in optim:
        notes.append(f"optimizer memory assumes AdamW's two fp32 states; training.optim={optim} may differ")
    if result["activation_checkpointing"] and result["activation_checkpointing_setting"] == "auto":
        notes.append(f"activation checkpointing: on, because training.activation_checkpointing=auto found that"
                     f" a step without it would pass {AUTO_CHECKPOINTING_SHARE:.0%} of the {result['device']}'s memory")
    if result["fits"] is False:
        fixes = "" if result["activation_checkpointing"] else ", set training.activation_checkpointing=true"
        notes.append("does not fit: lower per_device_train_batch_size (raise gradient_accumulation_steps to keep"
                     f" the tokens per step){fixes}, or use LoRA")
    if result["gpu_memory"] is not None:
        notes.append(f"time assumes {result['mfu']:.0%} MFU; a plain HF Trainer has measured 12-27% on an H200,"
                     " so allow up to 3x; memory leaves out the CUDA context (about 1 GiB)")
    else:
        notes.append(f"time assumes {result['mfu']:.0%} of this CPU's float32 matmul rate, measured just now:"
                     " a machine busy with other work measures, and trains, slower")
    return notes


def _chinchilla(result: dict, recipe: Recipe) -> str:
    ratio = result["tokens_per_parameter"]
    if result["model"]["source"] != "from config":
        return f"{ratio:,.2f} tokens per parameter: a pretrained base, so the compute-optimal ~20 does not apply"
    best = result["compute_optimal_parameters"]
    if ratio < CHINCHILLA_TOKENS_PER_PARAMETER / 2:
        verdict = f"too few tokens for this size; this compute is best spent on about {_short(best)} parameters"
    elif ratio > CHINCHILLA_TOKENS_PER_PARAMETER * 2:
        verdict = (f"more tokens than compute-optimal (about {_short(best)} parameters for this compute),"
                   " worth it when a small model is cheaper to serve")
    else:
        verdict = "close to compute-optimal"
    return f"{ratio:,.2f} tokens per parameter against the compute-optimal ~{CHINCHILLA_TOKENS_PER_PARAMETER}: {verdict}"


# --------------------------------------------------------------------------- report


def format_plan(result: dict) -> str:
    """The plan as an aligned two-column table, then its notes."""
    model = result["model"]
    memory = result["memory"]
    rows = [
        ("model", f"{model['model_type']} ({model['source']}): {model['layers']} layers, d={model['hidden_size']},"
                  f" {model['heads']} heads, vocabulary {model['vocab_size']:,}"),
        ("parameters", f"{result['parameters']:,}"),
        ("  non-embedding", f"{result['non_embedding_parameters']:,}"),
        ("  position embeddings", f"{result['position_embedding_parameters']:,}"),
        ("trainable", f"{result['trainable_parameters']:,}" + (" (LoRA)" if result["lora"] else "")),
        ("sequence length T", f"{result['sequence_length']:,} ({result['sequence_length_key']})"),
        ("FLOPs per token", f"{_flops(result['flops_per_token'])} (6N + 12LdT, N = {result['flops_parameters']:,})"),
        ("tokens per step", f"{result['tokens_per_step']:,} ({_plural(result['per_device_batch'], 'row')} x"
                            f" {_plural(result['gradient_accumulation'], 'accumulation step')} x"
                            f" {_plural(result['num_processes'], 'process', 'es')} x {result['sequence_length']:,} tokens)"),
        ("training tokens", f"{result['tokens']:,} ({result['max_steps']:,} steps)"
                            if result["tokens"] else "depends on the data"),
        ("total FLOPs", _flops(result["total_flops"]) if result["total_flops"] else "-"),
        ("tokens per parameter", f"{result['tokens_per_parameter']:,.2f} (compute-optimal ~20)"
                                 if result["tokens_per_parameter"] is not None else "-"),
        (f"memory per device ({result['precision']})", _gib(memory["total"]) + _fits(result)),
        ("  weights", _gib(memory["weights"])),
        ("  gradients", _gib(memory["gradients"])),
        ("  optimizer (AdamW)", _gib(memory["optimizer"])),
        ("  activations", _gib(memory["activations"])),
        ("activation checkpointing", ("on" if result["activation_checkpointing"] else "off")
                                     + (" (auto)" if result["activation_checkpointing_setting"] == "auto" else "")),
        ("device", _device(result)),
        ("time per step", _duration(result["time_per_step_s"])),
        ("time", _duration(result["time_s"]) if result["time_s"] is not None else "-"),
    ]
    width = max(len(label) for label, _ in rows) + 2
    lines = [f"plan for {result['recipe']}"] + [f"  {label:<{width}}{value}" for label, value in rows]
    lines += ["notes:"] + [f"  - {note}" for note in result["notes"]]
    return "\n".join(lines)


def _flops(x: float) -> str:
    """1.23e18, the way FLOPs are usually written."""
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _gib(n: float) -> str:
    gib = n / 2**30
    return f"{gib:,.2f} GiB" if gib >= 0.1 else f"{gib:.3g} GiB"


def _fits(result: dict) -> str:
    if result["fits"] is None:
        return ""
    verdict = "fits" if result["fits"] else "does NOT fit"
    return f" - {verdict} in the {result['device']}'s {_gib(result['gpu_memory'])}"


def _device(result: dict) -> str:
    rate, peak = _rate(result["flops_per_second"]), _rate(result["peak_flops"])
    if result["gpu_memory"] is None:
        return f"this CPU, {rate} ({result['mfu']:.0%} of {peak}, its float32 matmul rate measured now)"
    count = f"{result['num_processes']} x " if result["num_processes"] > 1 else ""
    return f"{count}{result['device']}, {rate} ({result['mfu']:.0%} MFU of {peak} bf16 peak)"


def _rate(flops_per_second: float) -> str:
    if flops_per_second >= 1e12:
        return f"{flops_per_second / 1e12:,.0f} TFLOP/s"
    return f"{flops_per_second / 1e9:,.1f} GFLOP/s"


def _plural(n: int, word: str, suffix: str = "s") -> str:
    return f"{n:,} {word}" + ("" if n == 1 else suffix)


def _short(n: float) -> str:
    """311k, 283M, 1.2B: a model size as people say it."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.3g} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    text = f"{hours:,} h {minutes:02d} min"
    return text + f" ({hours / 24:.1f} days)" if hours >= 48 else text
