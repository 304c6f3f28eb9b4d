"""The preference task's recipe section (`preference:`), and every check of it made before any work.

The methods and their parameters, with the literature's defaults:

| loss | method | beta | its own parameter |
|---|---|---|---|
| sigmoid | DPO (Rafailov et al. 2023) | 0.1 | |
| ipo | IPO (Azar et al. 2023); beta is tau | 0.1 | |
| hinge | hinge loss on the DPO margin (SLiC-style, Zhao et al. 2023) | 0.1 | |
| robust | robust DPO (Chowdhury et al. 2024), unbiased under a share eps of flipped labels | 0.1 | label_smoothing: eps = 0.1 |
| simpo | SimPO (Meng et al. 2024), reference-free, length-normalised | 2.0 | simpo_gamma: the margin gamma = 0.5 |
| orpo | ORPO (Hong et al. 2024), reference-free, odds ratio plus the SFT loss | 0.1 (lambda) | |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from toolkit.data.sources import file_columns, resolve_files
from toolkit.errors import ToolkitError
from toolkit.recipe import Recipe, Source

METHODS = {"sigmoid": "DPO", "ipo": "IPO", "hinge": "hinge", "robust": "robust DPO", "simpo": "SimPO", "orpo": "ORPO"}
REFERENCE_FREE = ("simpo", "orpo")
DEFAULT_BETA = {"sigmoid": 0.1, "ipo": 0.1, "hinge": 0.1, "robust": 0.1, "simpo": 2.0, "orpo": 0.1}
DEFAULT_LABEL_SMOOTHING = 0.1  # robust DPO's eps
DEFAULT_SIMPO_GAMMA = 0.5
PREFERENCE_CORPORA = ("python-docs-preference",)  # built-in pairs (corpus.py)
FILE_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class Preference:
    """recipes/preference.py: a policy tuned on (prompt, chosen, rejected) pairs."""

    loss: Literal["sigmoid", "ipo", "hinge", "robust", "simpo", "orpo"] = "sigmoid"
    beta: float | None = None  # None: the method's default (table above); ORPO's lambda
    label_smoothing: float | None = None  # robust only: eps, the share of pairs whose labels are flipped (0.1)
    simpo_gamma: float | None = None  # simpo only: the target margin gamma (0.5)
    # The reference policy of the DPO family (None: adapter with LoRA, else model):
    # adapter = the base with the LoRA adapter disabled (no second copy in memory); model = a frozen
    # copy of the initial weights; precomputed = log-probs computed once before training, cached with the data.
    reference: Literal["adapter", "model", "precomputed"] | None = None
    # Plain-text rows become a user turn and an assistant turn of the tokenizer's chat template;
    # false: prompt and completion are joined as they are. Rows of messages always use the template.
    chat_template: bool = True
    prompt_column: str = "prompt"  # a string, or a list of messages
    chosen_column: str = "chosen"  # a string, or a list of messages (that may repeat the prompt's turns)
    rejected_column: str = "rejected"


def method_settings(section: Preference) -> dict:
    """beta and the method's own parameter, defaults filled in."""
    settings = {"loss": section.loss, "beta": section.beta if section.beta is not None else DEFAULT_BETA[section.loss]}
    if section.loss == "robust":
        settings["label_smoothing"] = (section.label_smoothing if section.label_smoothing is not None
                                       else DEFAULT_LABEL_SMOOTHING)
    if section.loss == "simpo":
        settings["simpo_gamma"] = section.simpo_gamma if section.simpo_gamma is not None else DEFAULT_SIMPO_GAMMA
    return settings


def reference_mode(recipe: Recipe) -> str | None:
    """adapter, model, precomputed, or None for a reference-free method."""
    section = recipe.preference
    if section.loss in REFERENCE_FREE:
        return None
    return section.reference or ("adapter" if recipe.lora.enabled else "model")


def check_preference_recipe(recipe: Recipe) -> None:
    """Everything about the section, the model and the data files that can be checked before any work."""
    p = recipe.preference
    name = METHODS[p.loss]
    if p.beta is not None and p.beta <= 0:
        raise ToolkitError(f"preference.beta must be positive, got {p.beta}; {name}'s default is {DEFAULT_BETA[p.loss]}")
    if p.label_smoothing is not None:
        if p.loss != "robust":
            raise ToolkitError(f"preference.label_smoothing is robust DPO's eps, and preference.loss is {p.loss};"
                               " remove the key or set preference.loss=robust")
        if not 0 <= p.label_smoothing < 0.5:
            raise ToolkitError(f"preference.label_smoothing must be in [0, 0.5), got {p.label_smoothing}")
    if p.simpo_gamma is not None and p.loss != "simpo":
        raise ToolkitError(f"preference.simpo_gamma is SimPO's margin, and preference.loss is {p.loss};"
                           " remove the key or set preference.loss=simpo")
    if p.loss in REFERENCE_FREE and p.reference is not None:
        raise ToolkitError(f"preference.reference={p.reference}: {name} (preference.loss={p.loss}) is reference-free"
                           " and uses no reference model; remove preference.reference")
    if p.reference == "adapter" and not recipe.lora.enabled:
        raise ToolkitError("preference.reference=adapter disables the LoRA adapter, and lora.enabled is false;"
                           " set lora.enabled=true, or preference.reference=model (a frozen copy) or precomputed")
    if not recipe.model.name_or_path:
        raise ToolkitError("preference tuning starts from a pretrained policy: set model.name_or_path"
                           " (a folder, Hub id, .gguf file or package:NAME/path)")
    if recipe.data.streaming:
        raise ToolkitError("data.streaming is not supported for preference pairs; set data.streaming=false")
    if recipe.data.max_length < 8:
        raise ToolkitError(f"data.max_length={recipe.data.max_length} leaves no room for a prompt and a completion")
    for key, sources in (("sources", recipe.data.sources), ("eval_sources", recipe.data.eval_sources)):
        for i, source in enumerate(sources):
            where = f"data.{key}[{i}]"
            if source.builtin and source.builtin not in PREFERENCE_CORPORA:
                raise ToolkitError(f"{where}: {source.builtin!r} is not a preference corpus; built-in preference"
                                   f" corpora: {', '.join(PREFERENCE_CORPORA)} (or give files or a Hub dataset)")
            if source.weight != 1.0:
                raise ToolkitError(f"{where}.weight: weights are not supported for preference pairs; remove the key")
            for path in preference_files(source, where):
                found = file_columns(path)
                if found is not None:
                    missing_column(found, path, p)


def preference_files(source: Source, where: str) -> list[str]:
    if not source.files:
        return []
    files = resolve_files(source)
    odd = [f for f in files if Path(f).suffix.lower() not in FILE_FORMATS]
    if odd:
        raise ToolkitError(f"{where}: {odd[0]}: preference pairs are read from {', '.join(FILE_FORMATS)} files"
                           " (one row per pair: prompt, chosen, rejected)")
    return files


def missing_column(found, name: str, p: Preference) -> None:
    """chosen and rejected must be there; the prompt may live inside chat messages instead."""
    for canonical in ("chosen", "rejected"):
        column = getattr(p, f"{canonical}_column")
        if column not in found:
            raise ToolkitError(f"{canonical} column {column!r} not in {name}; its columns are {', '.join(found)}"
                               f" (set preference.{canonical}_column)")
