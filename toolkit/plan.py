"""Plan a run before starting it: parameters, FLOPs, tokens, memory and time for a recipe.

    toolkit plan RECIPE [--gpu NAME] [--num-processes N]

Answers "which model fits my task, compute and data" from the recipe alone: the model is
built on the meta device (shapes, no weights), nothing is downloaded and no data is read.
FLOPs follow the anchors' convention (6N + 12·L·d·T per token), so a plan's FLOPs per token are
the figure that MFU is measured against.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from toolkit.errors import ToolkitError
from toolkit.hardware import bf16_supported
from toolkit.loss import fused_loss_bytes, fused_loss_wanted
from toolkit.modeling import apply_lora, count_parameters, load_model_config, max_positions
from toolkit.recipe import Recipe

# Dense bf16 tensor-core peaks (FP32 accumulate, no 2:4 sparsity) and memory, from the
# datasheets. Memory is the marketed figure in decimal GB, a little under what nvidia-smi shows.
KNOWN_GPUS: dict[str, dict[str, float]] = {
    "H200": {"peak_flops": 989e12, "memory": 141e9},
    "H100": {"peak_flops": 989e12, "memory": 80e9},  # SXM; the PCIe card peaks at 756e12
    "A100": {"peak_flops": 312e12, "memory": 80e9},
    "A100-40GB": {"peak_flops": 312e12, "memory": 40e9},
    "A10G": {"peak_flops": 125e12, "memory": 24e9},  # the A10's datasheet figure; some tables quote less for AWS's A10G
    "L4": {"peak_flops": 121e12, "memory": 24e9},
    "RTX 4090": {"peak_flops": 165e12, "memory": 24e9},  # GeForce: FP32 accumulate runs at half the FP16 rate
}

# A well-tuned GPU run reaches 30-50% of peak (ANCHORS.md's published figures); 0.4 is the
# planning figure. The HF Trainer baselines measured there reached 12-27%. On a CPU, the
# default recipe's model trained at 35-43% of the float32 matmul rate measured beside it.
ASSUMED_MFU = 0.4
# activation_checkpointing=auto turns it on when a step's estimate passes this share of the
# GPU's memory: the estimate leaves out the CUDA context (about 1 GiB), the allocator's
# fragmentation and temporary buffers.
AUTO_CHECKPOINTING_SHARE = 0.85
CHINCHILLA_TOKENS_PER_PARAMETER = 20  # Hoffmann et al. 2022, compute-optimal training


def plan(recipe: Recipe, gpu: str | None = None, num_processes: int = 1) -> dict[str, Any]:
    """Size the recipe's run: parameters, FLOPs, tokens, memory per device and time.

    `gpu` names one of KNOWN_GPUS (any case); None plans for this machine's CPU, whose
    float32 matmul rate is measured (under a second). `num_processes` is the number of
    data-parallel processes, each with a full copy of the model.
    """
    if num_processes < 1:
        raise ToolkitError(f"--num-processes must be at least 1, got {num_processes}")
    device = find_gpu(gpu) if gpu is not None else None
    config, source = _model_config(recipe)
    counts = count_model(config, recipe)
    T, T_key = sequence_length(recipe)
    L, d = config.num_hidden_layers, config.hidden_size
    flops_per_token = 6 * counts["N"] + 12 * L * d * T

    batch = _training_value(recipe, "per_device_train_batch_size")
    accumulation = _training_value(recipe, "gradient_accumulation_steps")
    tokens_per_step = batch * accumulation * num_processes * T
    max_steps = _training_value(recipe, "max_steps")
    tokens = tokens_per_step * max_steps if max_steps > 0 else None
    total_flops = flops_per_token * tokens if tokens is not None else None

    half = _half_precision(recipe, device is not None)
    setting = checkpointing_setting(recipe)
    checkpointing = bool(setting) if setting != "auto" else (
        device is not None and checkpointing_needed(config, recipe, half, device[1]["memory"], counts)[0])
    memory = memory_estimate(config, counts, recipe, T, batch, half, checkpointing)
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
        "model": {"model_type": config.model_type, "source": source, "layers": L, "hidden_size": d,
                  "heads": config.num_attention_heads, "vocab_size": config.vocab_size},
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
    result["notes"] = _notes(result, recipe, config)
    return result


# --------------------------------------------------------------------------- inputs


def find_gpu(name: str) -> tuple[str, dict[str, float]]:
    """The KNOWN_GPUS entry for `name`, matched ignoring case, spaces and dashes."""
    key = _squash(name)
    for known, spec in KNOWN_GPUS.items():
        if _squash(known) == key:
            return known, spec
    raise ToolkitError(f"unknown GPU {name!r}; known: {', '.join(KNOWN_GPUS)}")


def gpu_in_device_name(device_name: str) -> tuple[str, dict[str, float]] | None:
    """The KNOWN_GPUS entry whose name appears in a CUDA device name ("NVIDIA H200" -> H200)."""
    squashed = _squash(device_name)
    matches = [(known, spec) for known, spec in KNOWN_GPUS.items() if _squash(known) in squashed]
    return max(matches, key=lambda m: len(m[0]), default=None)  # the most specific name


def flops_per_token(model, sequence_length: int) -> int | None:
    """ANCHORS.md: 6N + 12·L·d·T, N without position embeddings, tied embeddings once."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    unique = {id(p): p.numel() for p in base.parameters()}
    n = sum(unique.values()) - sum(m.weight.numel() for m in _position_embeddings(base))
    config = base.config
    layers, width = getattr(config, "num_hidden_layers", None), getattr(config, "hidden_size", None)
    if layers is None or width is None:
        return None  # a composite model (EncoderDecoderModel) has no single L and d to count with
    return 6 * n + 12 * layers * width * sequence_length


def _squash(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


def _model_config(recipe: Recipe):
    """The model config sized as training would size it, and where it came from; never downloads."""
    name = recipe.model.name_or_path
    if name:
        if not Path(os.path.expanduser(name)).is_dir():
            raise ToolkitError(
                f"plan needs a local model folder or a from-config recipe: model.name_or_path={name!r} is not a"
                " local folder (plan downloads and converts nothing; point it at a saved model folder)"
            )
        spec = dataclasses.replace(recipe.model, name_or_path=os.path.expanduser(name))
        return load_model_config(spec), name  # a pretrained model keeps its own vocabulary
    config = load_model_config(recipe.model)
    config.vocab_size = _new_model_vocabulary(recipe)  # build_model sizes the embeddings to the tokenizer
    return config, "from config"


def _new_model_vocabulary(recipe: Recipe) -> int:
    tok = recipe.tokenizer
    if not tok.name_or_path:
        return tok.vocab_size  # the BPE that the recipe trains
    if not Path(os.path.expanduser(tok.name_or_path)).is_dir():
        raise ToolkitError(
            f"plan needs a local tokenizer folder: tokenizer.name_or_path={tok.name_or_path!r} is not one"
            " (or leave it unset to plan with a new tokenizer of tokenizer.vocab_size)"
        )
    from toolkit.tokenizer import load_pretrained_tokenizer

    return len(load_pretrained_tokenizer(os.path.expanduser(tok.name_or_path), tok, tok.revision))


def sequence_length(recipe: Recipe) -> tuple[int, str]:
    """T, and the recipe key it comes from: blocks of plain text, or whole examples."""
    return recipe.data.row_length, f"data.{recipe.data.row_key}"


def _training_value(recipe: Recipe, key: str):
    """A `training:` value, or TrainingArguments' default for it."""
    if key in recipe.training:
        return recipe.training[key]
    from transformers import TrainingArguments

    return next(f.default for f in dataclasses.fields(TrainingArguments) if f.name == key)


def _half_precision(recipe: Recipe, on_gpu: bool) -> bool:
    """Whether training autocasts to 16 bits; unset, the toolkit turns bf16 on wherever it is supported."""
    if "bf16" in recipe.training or "fp16" in recipe.training:
        return bool(recipe.training.get("bf16") or recipe.training.get("fp16"))
    return on_gpu or bf16_supported()  # every GPU in KNOWN_GPUS runs bf16


# --------------------------------------------------------------------------- counting


def count_model(config, recipe: Recipe) -> dict[str, int]:
    """Parameter counts of the model built on the meta device: exact, no memory used."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    parameters = count_parameters(model)  # tied embeddings once
    position = sum(m.weight.numel() for m in _position_embeddings(model))
    embeddings = {id(p): p.numel() for m in (model.get_input_embeddings(), model.get_output_embeddings())
                  if m is not None for p in m.parameters()}
    counts = {
        "parameters": parameters,
        "N": parameters - position,  # ANCHORS.md: positions excluded, tied embeddings once
        "position_embeddings": position,
        # Kaplan et al. 2020's non-embedding count: token, position and output embeddings out.
        "non_embedding": parameters - position - sum(embeddings.values()),
        "quantizable": _quantizable_parameters(model),
        "trainable": parameters,
    }
    if recipe.lora.enabled:
        # peft itself decides what "all-linear" covers; building its wrapper on meta costs nothing.
        with torch.device("meta"):
            lora_model = apply_lora(model, dataclasses.replace(recipe.lora, quantize_4bit=False))
        counts["trainable"] = sum(p.numel() for p in lora_model.parameters() if p.requires_grad)
    return counts


def _position_embeddings(model) -> list[torch.nn.Embedding]:
    """Learned position tables, found by name (GPT-2's wpe, OPT's embed_positions)."""
    tokens = model.get_input_embeddings()
    return [m for name, m in model.named_modules()
            if isinstance(m, torch.nn.Embedding) and m is not tokens
            and ("pos" in name.rsplit(".", 1)[-1] or name.endswith("wpe"))]


def _quantizable_parameters(model) -> int:
    """Weights that QLoRA stores in 4 bits: every nn.Linear but the output head (bitsandbytes skips it)."""
    head = model.get_output_embeddings()
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)


# --------------------------------------------------------------------------- memory


def memory_estimate(config, counts: dict[str, int], recipe: Recipe, T: int, batch: int, half: bool,
                    checkpointing: bool) -> dict[str, int]:
    """Bytes per device at the peak of a training step, split by what holds them.

    The toolkit builds models in float32 and autocasts: the fp32 weights are the master
    copy, and in 16-bit training autocast makes a 16-bit copy of each weight that matmuls
    keep for the backward pass. Gradients take the parameters' dtype (fp32); AdamW keeps
    two fp32 states per trainable parameter. Full training thus costs 4+2+4+8 = 18 bytes
    per parameter in bf16, the usual mixed-precision 16 plus autocast's copies.
    """
    trainable = counts["trainable"]
    # QLoRA keeps its linear weights in 4 bits and dequantizes them per matmul, keeping no copy.
    quantized = counts["quantizable"] if recipe.lora.enabled and recipe.lora.quantize_4bit else 0
    plain = counts["parameters"] - quantized + (trainable if recipe.lora.enabled else 0)  # adapters beside the base
    parts = {
        "weights": 4 * plain + quantized // 2 + (2 * plain if half else 0),
        "gradients": 4 * trainable,
        "optimizer": 8 * trainable,
        "activations": activation_bytes(config, recipe, T, batch, half, checkpointing),
    }
    parts["total"] = sum(parts.values())
    return parts


def activation_bytes(config, recipe: Recipe, T: int, B: int, half: bool, checkpointing: bool) -> int:
    """Activations kept for the backward pass of one micro-batch of B rows of T tokens.

    Per transformer layer, Korthikanti et al. 2022 (no tensor parallelism, no recomputation):
        T*B*d*(34 + 5*a*T/d) bytes with 16-bit activations,
    where the 5*a*T/d term is the T x T attention scores, softmax and dropout mask; fused
    attention (sdpa, flash) never stores them, so only eager attention pays it. Activations
    in fp32 take about twice as much. The head adds its logits, B*T*V in the compute dtype,
    plus the fp32 log-probabilities the cross-entropy keeps; the fused loss (toolkit/loss.py)
    holds one chunk of them instead, and gradients of the hidden states and the output
    weight. With gradient checkpointing only
    each layer's input stays (fp32: the residual stream is not autocast) and one layer's
    activations are rebuilt at a time.
    """
    d, L, a, V = config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.vocab_size
    per_value = 2 if half else 4
    factor = 34 + (5 * a * T / d if recipe.model.attn_implementation == "eager" else 0)
    per_layer = T * B * d * factor * per_value / 2
    if checkpointing:
        layers = L * T * B * d * 4 + per_layer
    else:
        layers = L * per_layer
    if _fused_loss(recipe, config):
        logits = fused_loss_bytes(B * T, d, V, per_value)
    else:
        logits = B * T * V * (per_value + 4)
    return int(layers + logits)


def _fused_loss(recipe: Recipe, config) -> bool:
    """Whether training will take the fused loss (training.fused_loss decides; it also leaves
    it out under FSDP and DeepSpeed, which the plan does not know of)."""
    from toolkit.modeling import is_decoder_only

    targets = recipe.lora.target_modules if recipe.lora.enabled else []
    return (fused_loss_wanted(recipe.model.fused_cross_entropy, config.vocab_size) and is_decoder_only(config.model_type)
            and not recipe.training.get("label_smoothing_factor") and "lm_head" not in targets)


def checkpointing_setting(recipe: Recipe) -> bool | str:
    """training.activation_checkpointing (or its old name gradient_checkpointing): true, false, or
    auto, which is also what neither key set means."""
    value = recipe.training.get("activation_checkpointing")
    if value is None:
        value = recipe.training.get("gradient_checkpointing")
    return "auto" if value is None else value


def checkpointing_needed(config, recipe: Recipe, half: bool, device_memory: float,
                         counts: dict[str, int] | None = None) -> tuple[bool, int]:
    """What `auto` decides: recompute activations only when a step without it would not fit.

    Returns the decision and the step's estimated bytes without checkpointing. Recomputing
    costs about a third more compute per step, so it is worth it only where memory forces it.
    """
    counts = counts or count_model(config, recipe)
    T, batch = sequence_length(recipe)[0], _training_value(recipe, "per_device_train_batch_size")
    needed = memory_estimate(config, counts, recipe, T, batch, half, checkpointing=False)["total"]
    return needed > AUTO_CHECKPOINTING_SHARE * device_memory, needed


# --------------------------------------------------------------------------- compute


@functools.lru_cache(maxsize=1)
def measure_cpu_flops(seconds: float = 0.4, n: int = 1024) -> float:
    """This CPU's float32 matmul rate in FLOP/s: its practical peak, measured in about `seconds`.

    The best of many single matmuls, not their mean: other jobs on a shared machine
    come and go, and the peak is what the cores can do.
    """
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up: thread pool start, first-touch of memory
    best, end = math.inf, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


# --------------------------------------------------------------------------- notes


def _notes(result: dict, recipe: Recipe, config) -> list[str]:
    notes = []
    if result["tokens"] is None:
        epochs = _training_value(recipe, "num_train_epochs")
        notes.append(
            f"training.max_steps is not set: the tokens seen depend on the data size ({epochs:g} epochs);"
            " set training.max_steps, or multiply the train_tokens in the run's data_stats.json"
        )
    else:
        notes.append(_chinchilla(result, recipe))
    limit, key = max_positions(config)
    if limit is not None and result["sequence_length"] > limit:
        notes.append(f"{result['sequence_length_key']}={result['sequence_length']} is more than the model's"
                     f" {limit} positions: the run would stop; lower it or raise model.config.{key}")
    if recipe.model.name_or_path and recipe.data.format != "text" and not recipe.data.packing:
        notes.append("data.packing is off: rows are padded only to their batch's longest example, so T is an upper bound")
    if result["lora"]:
        notes.append("LoRA: the frozen base needs no weight gradients, so the real work is about 2/3 of the 6N"
                     " convention used here (the figure MFU is measured against)")
    optim = _training_value(recipe, "optim")
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
    if recipe.model.name_or_path:
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
