"""The arithmetic of a training step: parameters, FLOPs per token, memory and the GPUs' peaks.

Shared by `toolkit plan` (a recipe sized before it runs) and the training core (MFU in the
logs, activation_checkpointing=auto). Models are counted as built on the meta device:
shapes, no weights. FLOPs follow the anchors' convention (6N + 12·L·d·T per token).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, TrainingArguments

from toolkit.errors import ToolkitError
from toolkit.hardware import bf16_supported
from toolkit.loss import fused_loss_bytes, fused_loss_wanted
from toolkit.modeling import apply_lora, count_parameters, is_decoder_only, max_positions
from toolkit.recipe import Recipe
from toolkit.tokenizer import load_pretrained_tokenizer

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

# A well-tuned GPU run reaches 30-50% of peak (PaLM reports 46%, Chowdhery et al. 2022, Table 3);
# 0.4 is the planning figure. On a CPU, the default recipe's model trained at 35-43% of the float32
# matmul rate measured beside it (benchmarks/README.md).
ASSUMED_MFU = 0.4
# activation_checkpointing=auto turns it on when a step's estimate passes this share of the
# GPU's memory: the estimate leaves out the CUDA context (about 1 GiB), the allocator's
# fragmentation and temporary buffers.
AUTO_CHECKPOINTING_SHARE = 0.85
CHINCHILLA_TOKENS_PER_PARAMETER = 20  # Hoffmann et al. 2022, compute-optimal training


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
    """Model FLOPs per trained token, 6N + 12·L·d·T: 6N for the weights' forward and backward (Kaplan et al.
    2020, "Scaling Laws for Neural Language Models", sec. 2.1) and 12·L·d·T for attention over T positions
    (Chowdhery et al. 2022, "PaLM", appendix B); N without position embeddings, tied embeddings once."""
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


def training_value(recipe: Recipe, key: str):
    """A `training:` value, or TrainingArguments' default for it."""
    if key in recipe.training:
        return recipe.training[key]
    return next(f.default for f in dataclasses.fields(TrainingArguments) if f.name == key)


def half_precision(recipe: Recipe, on_gpu: bool) -> bool:
    """Whether training autocasts to 16 bits; unset, the toolkit turns bf16 on wherever it is supported."""
    if "bf16" in recipe.training or "fp16" in recipe.training:
        return bool(recipe.training.get("bf16") or recipe.training.get("fp16"))
    return on_gpu or bf16_supported()  # every GPU in KNOWN_GPUS runs bf16


# --------------------------------------------------------------------------- counting


@dataclasses.dataclass
class PlanModel:
    """A task's model as the plan sizes it (Task.plan_model): built on the meta device, with the
    shape figures the FLOPs and memory formulas read."""

    model: torch.nn.Module  # on the meta device
    source: str  # "from config", a folder, a GGUF file, "warm-started from ..."
    model_type: str
    layers: int  # transformer layers every token passes (an encoder-decoder's both stacks)
    hidden_size: int
    heads: int
    vocab_size: int
    positions: tuple[int | None, str | None] = (None, None)  # the model's longest sequence, and its config key

    @classmethod
    def from_config(cls, model, config, source: str) -> PlanModel:
        return cls(model, source, config.model_type, config.num_hidden_layers, config.hidden_size,
                   config.num_attention_heads, config.vocab_size, max_positions(config))


def new_vocabulary(recipe: Recipe) -> int:
    """The vocabulary of a model built from a config: its tokenizer's (build_model sizes the embeddings to it)."""
    tok = recipe.tokenizer
    if not tok.name_or_path:
        return tok.vocab_size  # the BPE that the recipe trains
    if not Path(os.path.expanduser(tok.name_or_path)).is_dir():
        raise ToolkitError(
            f"plan needs a local tokenizer folder: tokenizer.name_or_path={tok.name_or_path!r} is not one"
            " (or leave it unset to plan with a new tokenizer of tokenizer.vocab_size)"
        )
    return len(load_pretrained_tokenizer(os.path.expanduser(tok.name_or_path), tok, tok.revision))


def meta_causal_lm(config) -> PlanModel:
    """A causal LM of this config on the meta device."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return PlanModel.from_config(model, config, "from config")



def count_model(model, recipe: Recipe) -> dict[str, int]:
    """Parameter counts of a model built on the meta device: exact, no memory used."""
    parameters = count_parameters(model)  # tied embeddings once
    position = sum(m.weight.numel() for m in _position_embeddings(model))
    embeddings = {id(p): p.numel() for m in (model.get_input_embeddings(), model.get_output_embeddings())
                  if m is not None for p in m.parameters()}
    counts = {
        "parameters": parameters,
        "N": parameters - position,  # as flops_per_token counts it: positions excluded, tied embeddings once
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


def memory_estimate(shape: PlanModel, counts: dict[str, int], recipe: Recipe, T: int, batch: int, half: bool,
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
        "activations": activation_bytes(shape, recipe, T, batch, half, checkpointing),
    }
    parts["total"] = sum(parts.values())
    return parts


def activation_bytes(shape: PlanModel, recipe: Recipe, T: int, B: int, half: bool, checkpointing: bool) -> int:
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
    d, L, a, V = shape.hidden_size, shape.layers, shape.heads, shape.vocab_size
    per_value = 2 if half else 4
    factor = 34 + (5 * a * T / d if recipe.model.attn_implementation == "eager" else 0)
    per_layer = T * B * d * factor * per_value / 2
    if checkpointing:
        layers = L * T * B * d * 4 + per_layer
    else:
        layers = L * per_layer
    if _fused_loss(recipe, shape):
        logits = fused_loss_bytes(B * T, d, V, per_value)
    else:
        logits = B * T * V * (per_value + 4)
    return int(layers + logits)


def _fused_loss(recipe: Recipe, shape: PlanModel) -> bool:
    """Whether training will take the fused loss (training.fused_loss decides; it also leaves
    it out under FSDP and DeepSpeed, which the plan does not know of)."""
    targets = recipe.lora.target_modules if recipe.lora.enabled else []
    return (fused_loss_wanted(recipe.model.fused_cross_entropy, shape.vocab_size) and is_decoder_only(shape.model_type)
            and not recipe.training.get("label_smoothing_factor") and "lm_head" not in targets)


def checkpointing_setting(recipe: Recipe) -> bool | str:
    """training.activation_checkpointing (or its old name gradient_checkpointing): true, false, or
    auto, which is also what neither key set means."""
    value = recipe.training.get("activation_checkpointing")
    if value is None:
        value = recipe.training.get("gradient_checkpointing")
    return "auto" if value is None else value


def checkpointing_needed(shape: PlanModel, recipe: Recipe, T: int, half: bool, device_memory: float,
                         counts: dict[str, int] | None = None) -> tuple[bool, int]:
    """What `auto` decides: recompute activations only when a step without it would not fit.

    Returns the decision and the step's estimated bytes without checkpointing. Recomputing
    costs about a third more compute per step, so it is worth it only where memory forces it.
    """
    counts = counts or count_model(shape.model, recipe)
    batch = training_value(recipe, "per_device_train_batch_size")
    needed = memory_estimate(shape, counts, recipe, T, batch, half, checkpointing=False)["total"]
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
