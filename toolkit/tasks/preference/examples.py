"""Preference pairs: loaded (files, the Hub, the built-in corpus), checked, put in one form, split by prompt.

Two row forms are read as they come:
- plain text: `prompt`, `chosen`, `rejected` strings;
- chat messages, as Hub preference sets hold them (HuggingFaceH4/ultrafeedback_binarized): `chosen` and
  `rejected` are lists of {role, content} that repeat the prompt's turns, and `prompt` is a string. The
  turns both lists share are the prompt; the rest is the completion. Lists that hold only the answer
  (TRL's conversational form) take their prompt from the `prompt` column (a string or messages).

The pairs are not cleaned (toolkit/data/clean.py): a pair is two answers to compare, and
normalising one of them could make them equal. Held-out pairs are split off by prompt, so that
no held-out prompt is ever trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from datasets import Dataset

from toolkit.data.sources import load_rows
from toolkit.errors import ToolkitError
from toolkit.recipe import Recipe, Source
from toolkit.tasks.preference.corpus import python_docs_preference
from toolkit.tasks.preference.section import FILE_FORMATS, Preference, missing_column, preference_files
from toolkit.tokenizer import check_conversation


def load_source(source: Source, index: int, section: Preference) -> tuple[Dataset, str]:
    """One source as a Dataset with the section's columns, and a name for messages."""
    if source.builtin:
        ds, name = Dataset.from_dict(python_docs_preference()), source.builtin
    else:
        key = f"data.sources[{index}]"
        files = preference_files(source, key) if source.files else []
        name = ", ".join(files[:3]) or source.hub
        ds = load_rows(source, files, FILE_FORMATS[Path(files[0]).suffix.lower()] if files else None, key)
    missing_column(ds.column_names, name, section)
    if source.limit is not None:
        ds = ds.select(range(min(source.limit, len(ds))))
    return ds, name


def _empty(value) -> bool:
    return value is None or (isinstance(value, (str, list)) and not value)


def _as_messages(prompt, where: str) -> list[dict]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list):
        return prompt
    raise ToolkitError(f"{where}: the prompt must be text or a list of messages, got {type(prompt).__name__}")


def normalise(prompt, chosen, rejected, where: str, chat: bool) -> dict:
    """One pair in one form: prompt (messages, or text), the two completions (messages, or text), and the
    prompt as a key (the held-out split) and as shown (samples)."""
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        if _empty(value):
            raise ToolkitError(f"{where}: no {key!r} completion; every pair needs a prompt, a chosen and a rejected one")
    if isinstance(chosen, list) != isinstance(rejected, list):
        raise ToolkitError(f"{where}: chosen and rejected must both be text or both be lists of messages")
    if isinstance(chosen, list):
        if not chat:
            raise ToolkitError(f"{where}: a pair of chat messages needs preference.chat_template=true")
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        context = chosen[:shared]
        if not context or context[0].get("role") == "assistant":  # the prompt is only in its own column
            if _empty(prompt):
                raise ToolkitError(f"{where}: no prompt: the messages hold only answers and the prompt column is empty")
            context = _as_messages(prompt, where) + context
        pair = {"prompt": context, "chosen": chosen[shared:], "rejected": rejected[shared:]}
        for key in ("chosen", "rejected"):
            check_conversation(context + pair[key], f"{where} ({key})")
            if pair[key] and pair[key][0]["role"] != "assistant":
                raise ToolkitError(f"{where}: the {key} completion starts with a {pair[key][0]['role']} turn;"
                                   " it must be the assistant's answer to the prompt")
        shown = next((m["content"] for m in reversed(context) if m["role"] == "user"), context[-1]["content"])
    else:
        if _empty(prompt) or not isinstance(prompt, (str, list)):
            raise ToolkitError(f"{where}: no prompt; every pair needs a prompt, a chosen and a rejected completion")
        if isinstance(prompt, list) and not chat:
            raise ToolkitError(f"{where}: a prompt of chat messages needs preference.chat_template=true")
        if not isinstance(chosen, str) or not isinstance(rejected, str):
            raise ToolkitError(f"{where}: chosen and rejected must be text or lists of messages")
        if chat:
            context = _as_messages(prompt, where)
            pair = {"prompt": context, "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}]}
            for key in ("chosen", "rejected"):
                check_conversation(context + pair[key], f"{where} ({key})")
        else:
            pair = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        shown = prompt if isinstance(prompt, str) else context[-1]["content"]
    if pair["chosen"] == pair["rejected"]:
        raise ToolkitError(f"{where}: chosen equals rejected ({_preview(pair['chosen'])}); a pair must differ")
    pair["key"] = json.dumps(pair["prompt"], sort_keys=True, ensure_ascii=False)
    pair["shown"] = shown
    return pair


def _preview(completion) -> str:
    text = completion if isinstance(completion, str) else " / ".join(m.get("content", "") for m in completion)
    return repr(text if len(text) <= 60 else text[:57] + "...")


def load_pairs(sources: list[Source], section: Preference) -> list[dict]:
    pairs = []
    for i, source in enumerate(sources):
        ds, name = load_source(source, i, section)
        prompts = ds[section.prompt_column] if section.prompt_column in ds.column_names else [None] * len(ds)
        for row, (prompt, chosen, rejected) in enumerate(zip(prompts, ds[section.chosen_column],
                                                             ds[section.rejected_column])):
            pairs.append(normalise(prompt, chosen, rejected, f"{name}, row {row}", section.chat_template))
    return pairs


def split_pairs(recipe: Recipe) -> tuple[list[dict], list[dict], dict]:
    """(training pairs, held-out pairs, stats): held out by prompt, before any encoding."""
    data, section = recipe.data, recipe.preference
    pairs = load_pairs(data.sources, section)
    if data.eval_sources:
        held_out = load_pairs(data.eval_sources, section)
    else:
        keys = list(dict.fromkeys(p["key"] for p in pairs))
        if len(keys) < 2:
            raise ToolkitError(f"{len(pairs)} pair(s) with {len(keys)} prompt(s): need at least 2 prompts to hold one out;"
                               " add data.sources")
        rng = np.random.default_rng(recipe.seed)
        n_eval = max(1, round(len(keys) * data.eval_fraction))
        chosen = {keys[i] for i in rng.permutation(len(keys))[:n_eval]}
        held_out = [p for p in pairs if p["key"] in chosen]
    evaluated = {p["key"] for p in held_out}
    train = [p for p in pairs if p["key"] not in evaluated]
    if not train or not held_out:
        raise ToolkitError(f"no {'training' if not train else 'held-out'} pairs left after holding out by prompt;"
                           " add data.sources or change data.eval_fraction")
    stats = {"documents": {"train": len(train), "eval": len(held_out)},
             "pairs_loaded": len(pairs), "removed_as_eval_prompts": len(pairs) - len(train) - (
                 0 if data.eval_sources else len(held_out)),
             "prompts": {"train": len({p["key"] for p in train}), "eval": len(evaluated)}}
    return train, held_out, stats
