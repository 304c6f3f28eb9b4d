"""Preference pairs encoded for the model's tokenizer, and batched packed (padding-free) or padded.

Each completion is found as tokenizers find it: prompt + completion is tokenized whole and the
completion is what follows the prompt's own token count. A tokenizer may merge characters across
that boundary; then the tokens before it differ from the prompt's, which is counted and logged
(the completion is still taken by the prompt's length, as TRL takes it). A chat completion ends at
its end-of-turn EOS (what the template adds after it, such as a newline, is not scored). The
completion's tokens, EOS included, are the ones scored; prompt and padding never are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from datasets import Dataset, Features, Sequence, Value

from toolkit.data.prepare import PreparedData, cached
from toolkit.errors import ToolkitError
from toolkit.loss import IGNORE
from toolkit.modeling import ResolvedModel
from toolkit.recipe import Recipe
from toolkit.tasks.preference.examples import split_pairs
from toolkit.tokenizer import bos_ids, ensure_chat_template, load_pretrained_tokenizer, pretrained_tokenizer_name, render_chat

logger = logging.getLogger("toolkit")

FEATURES = Features({"chosen_input_ids": Sequence(Value("int32")), "rejected_input_ids": Sequence(Value("int32")),
                     "prompt_length": Value("int32"), "prompt": Value("string")})


@dataclass
class PreferenceData(PreparedData):
    """The encoded pairs, and the base policy they were encoded for: the reference's log-probs are its own."""

    base: ResolvedModel | None = None


def prepare_preference_data(recipe: Recipe, model: ResolvedModel) -> PreferenceData:
    """Training and held-out pairs encoded with the policy's tokenizer (and chat template), through the core's cache."""
    name, revision = pretrained_tokenizer_name(recipe.tokenizer, model.spec)
    tokenizer = load_pretrained_tokenizer(name, recipe.tokenizer, recipe.tokenizer.revision or revision)
    data = cached(recipe, "preference", model.spec, lambda: _build(recipe, tokenizer))
    return PreferenceData(data.train, data.eval, data.tokenizer, data.stats, base=model)


def _build(recipe: Recipe, tokenizer) -> PreparedData:
    data, section = recipe.data, recipe.preference
    train, held_out, stats = split_pairs(recipe)
    if section.chat_template:
        ensure_chat_template(tokenizer)
    encoded = {}
    for name, pairs in (("train", train), ("eval", held_out)):
        encoded[name], counts = encode_pairs(pairs, tokenizer, section.chat_template, data.max_length, data.too_long)
        stats[f"{name}_encoding"] = counts
        if counts["dropped_prompt_too_long"]:
            logger.info("data: dropped %d %s pairs whose prompt leaves no room for a completion in %d tokens",
                        counts["dropped_prompt_too_long"], name, data.max_length)
        if counts["prefix_mismatch"]:
            logger.warning("data: in %d %s sequences the tokenizer merges the prompt's end with the completion's"
                           " start; the completion is taken from the prompt's token count", counts["prefix_mismatch"], name)
        if len(encoded[name]) == 0:
            raise ToolkitError(f"no {name} pair fits in data.max_length={data.max_length} tokens; raise it")
    stats["from_cache"] = False
    return PreparedData(encoded["train"], encoded["eval"], tokenizer, stats)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_pair(pair: dict, tokenizer, chat: bool, where: str = "pair") -> tuple[list[int], list[list[int]], int]:
    """(prompt ids, [chosen sequence, rejected sequence], prefix mismatches): whole sequences, prompt first."""
    if chat:
        prompt = _ids(tokenizer, render_chat(pair["prompt"], tokenizer, where, add_generation_prompt=True))
        wholes = [_ids(tokenizer, render_chat(pair["prompt"] + pair[k], tokenizer, where)) for k in ("chosen", "rejected")]
    else:
        bos = bos_ids(tokenizer)
        prompt = bos + _ids(tokenizer, pair["prompt"])
        wholes = [bos + _ids(tokenizer, pair["prompt"] + pair[k]) + [tokenizer.eos_token_id] for k in ("chosen", "rejected")]
    sequences, mismatches = [], 0
    for whole in wholes:
        mismatches += whole[: len(prompt)] != prompt
        completion = whole[len(prompt):]
        if chat and tokenizer.eos_token_id in completion:  # the turn ends at its EOS
            completion = completion[: len(completion) - completion[::-1].index(tokenizer.eos_token_id)]
        sequences.append(whole[: len(prompt)] + completion)
    return prompt, sequences, mismatches


def encode_pairs(pairs: list[dict], tokenizer, chat: bool, max_length: int, too_long: str = "skip") -> tuple[Dataset, dict]:
    """Every pair as chosen and rejected token ids and the prompt's length; pairs whose prompt leaves no room
    for a completion are dropped (counted), completions past max_length are cut (counted)."""
    rows = {name: [] for name in FEATURES}
    counts = {"pairs": 0, "dropped_prompt_too_long": 0, "truncated": 0, "prefix_mismatch": 0, "tokens": 0,
              "completion_tokens": 0}
    for i, pair in enumerate(pairs):
        prompt, sequences, mismatches = encode_pair(pair, tokenizer, chat, f"pair {i}")
        if len(prompt) >= max_length:
            if too_long == "error":
                raise ToolkitError(f"pair {i} ({pair['shown'][:40]!r}...): its prompt has {len(prompt)} tokens and leaves"
                                   f" no room for a completion in data.max_length={max_length}; raise data.max_length"
                                   " or set data.too_long=skip")
            counts["dropped_prompt_too_long"] += 1
            continue
        counts["truncated"] += sum(len(s) > max_length for s in sequences)
        sequences = [s[:max_length] for s in sequences]
        counts["prefix_mismatch"] += mismatches
        counts["pairs"] += 1
        counts["tokens"] += sum(map(len, sequences))
        counts["completion_tokens"] += sum(len(s) - len(prompt) for s in sequences)
        rows["chosen_input_ids"].append(sequences[0])
        rows["rejected_input_ids"].append(sequences[1])
        rows["prompt_length"].append(len(prompt))
        rows["prompt"].append(pair["shown"])
    return Dataset.from_dict(rows, features=FEATURES), counts


@dataclass
class PairCollator:
    """A batch of pairs as 2B sequences (chosen, rejected, chosen, ...), with their completion labels.

    packed: one row, no padding, `position_ids` restarting at each sequence (as packing.FlatteningCollator:
    transformers builds the block-diagonal mask from them; no attention mask, no KV cache). Otherwise
    2B rows padded at the end, with an attention mask. `sequence_ids` says which sequence each token is
    in; `pair_tokens` (first: Trainer reads the batch size from it) the completion lengths; `ref_logps`
    the precomputed reference's sums, when the data carry them.
    """

    pad_token_id: int
    packed: bool = True

    def __call__(self, rows: list[dict]) -> dict:
        sequences, labels = [], []
        for r in rows:
            start = r["prompt_length"]
            for key in ("chosen_input_ids", "rejected_input_ids"):
                ids = list(r[key])
                sequences.append(ids)
                labels.append([IGNORE] * start + ids[start:])
        batch = {"pair_tokens": torch.tensor([[len(s) - r["prompt_length"] for s in sequences[2 * i: 2 * i + 2]]
                                              for i, r in enumerate(rows)], dtype=torch.long)}
        if self.packed:
            batch["input_ids"] = torch.tensor([t for s in sequences for t in s], dtype=torch.long)[None]
            batch["labels"] = torch.tensor([t for s in labels for t in s], dtype=torch.long)[None]
            batch["position_ids"] = torch.tensor([p for s in sequences for p in range(len(s))], dtype=torch.long)[None]
            batch["sequence_ids"] = torch.tensor([k for k, s in enumerate(sequences) for _ in s], dtype=torch.long)[None]
        else:
            width = max(map(len, sequences))
            pad = [width - len(s) for s in sequences]
            batch["input_ids"] = torch.tensor([s + [self.pad_token_id] * p for s, p in zip(sequences, pad)])
            batch["attention_mask"] = torch.tensor([[1] * len(s) + [0] * p for s, p in zip(sequences, pad)])
            batch["labels"] = torch.tensor([s + [IGNORE] * p for s, p in zip(labels, pad)])
            batch["sequence_ids"] = torch.arange(len(sequences))[:, None].expand(-1, width).contiguous()
        if "ref_chosen_logps" in rows[0]:
            batch["ref_logps"] = torch.tensor([[r["ref_chosen_logps"], r["ref_rejected_logps"]] for r in rows],
                                              dtype=torch.float64)
        batch["use_cache"] = False
        return batch
