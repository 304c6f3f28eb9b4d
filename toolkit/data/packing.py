"""Tokenize and pack: documents joined with EOS and cut into `block_size` rows, no padding.

`run_clm` groups texts inside each `map` batch and drops every batch's remainder; here the
whole token stream is cut once, in Arrow, so at most one partial block is left over.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import Dataset, Features, Sequence, Value
from datasets.table import InMemoryTable


def tokenize(ds: Dataset, tokenizer, num_proc: int | None = None) -> Dataset:
    """Each document becomes [bos] + tokens + [eos]; bos only where the tokenizer has its own."""
    eos = [tokenizer.eos_token_id]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id not in (None, tokenizer.eos_token_id) else []

    encode_ids = ids_encoder(tokenizer)

    def encode(batch):
        return {"input_ids": [bos + x + eos for x in encode_ids(batch["text"])]}

    return ds.map(
        encode,
        batched=True,
        num_proc=num_proc,
        remove_columns=ds.column_names,
        features=Features({"input_ids": Sequence(Value("int32"))}),
        desc="tokenizing",
    )


def ids_encoder(tokenizer):
    """texts -> token ids, no special tokens. Only the ids are kept, so the Rust tokenizer is
    asked for nothing else: no offsets or masks (measured 16% off tokenize + pack)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return lambda texts: [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]


def pack(ds: Dataset, block_size: int, keep_tail: bool = False) -> tuple[Dataset, int]:
    """Cut the concatenated `input_ids` into rows of `block_size`; return (rows, tokens dropped).

    With `keep_tail`, the last partial row is kept (evaluation: every token counts).
    """
    flat = pc.list_flatten(ds.data.table.column("input_ids")).combine_chunks()
    total = len(flat)
    ends = list(range(block_size, total + 1, block_size))
    if keep_tail and total - (ends[-1] if ends else 0) >= 2:  # a row of one token predicts nothing
        ends.append(total)
    offsets = pa.array([0] + ends, type=pa.int64())  # 64-bit: a corpus may pass 2**31 tokens
    used = ends[-1] if ends else 0
    rows = pa.LargeListArray.from_arrays(offsets, flat.slice(0, used).cast(pa.int32()))
    table = pa.Table.from_arrays([rows], names=["input_ids"])
    return Dataset(InMemoryTable(table)), total - used


def count_tokens(ds: Dataset) -> int:
    return int(pc.sum(pc.list_value_length(ds.data.table.column("input_ids"))).as_py() or 0)


@dataclass
class CausalCollator:
    """Batch rows for causal LM: pad to the longest row, labels -100 on padding only.

    Padding is found from the row lengths, not by comparing with `pad_token_id`, so an
    EOS that shares the pad id is never masked out of the loss.
    """

    pad_token_id: int

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        lengths = [len(r["input_ids"]) for r in rows]
        width = max(lengths)
        ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        given = "labels" in rows[0]  # fine-tuning examples bring their own (prompt tokens at -100)
        labels = np.full((len(rows), width), -100, dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : lengths[i]] = r["input_ids"]
            mask[i, : lengths[i]] = 1
            labels[i, : lengths[i]] = r["labels"] if given else r["input_ids"]
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                "labels": torch.from_numpy(labels)}


def pack_examples(ds: Dataset, max_length: int) -> tuple[Dataset, dict]:
    """Padding-free packing: examples placed whole into rows of at most `max_length` tokens.

    Best-fit decreasing fills rows tightly. Each row carries `position_ids` that restart
    at every example, from which transformers builds a block-diagonal attention mask (sdpa,
    flex) or varlen kernels (flash attention): no token attends across examples. The first
    label of each example is -100, since across the boundary it would be predicted from the
    previous example's last token.
    """
    lengths = [len(x) for x in ds["input_ids"]]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    free: list[tuple[int, int]] = []  # (room left, row), kept sorted
    rows: list[list[int]] = []
    for i in order:
        at = bisect.bisect_left(free, (lengths[i], -1))
        if at < len(free):
            room, row = free.pop(at)
        else:
            room, row = max_length, len(rows)
            rows.append([])
        rows[row].append(i)
        bisect.insort(free, (room - lengths[i], row))
    ids, labels = ds["input_ids"], ds["labels"]
    packed = {"input_ids": [], "labels": [], "position_ids": []}
    for members in rows:
        members.sort()  # dataset order inside a row
        packed["input_ids"].append([t for i in members for t in ids[i]])
        packed["labels"].append([t for i in members for t in [-100] + list(labels[i][1:])])
        packed["position_ids"].append([p for i in members for p in range(lengths[i])])
    tokens = sum(lengths)
    stats = {"rows": len(rows), "examples": len(lengths), "tokens": tokens,
             "efficiency": tokens / (len(rows) * max_length) if rows else 0.0}
    features = Features({k: Sequence(Value("int32")) for k in packed})
    return Dataset.from_dict(packed, features=features), stats


@dataclass
class FlatteningCollator:
    """Concatenate a batch of packed rows into one row: no padding anywhere.

    No attention_mask is passed, so the model derives example boundaries from `position_ids`;
    and no KV cache, since transformers skips that detection when a cache exists (the mask
    would silently become plain causal, across examples).
    """

    def __call__(self, rows: list[dict]) -> dict:
        batch = {k: torch.tensor([t for r in rows for t in r[k]], dtype=torch.long)[None] for k in
                 ("input_ids", "labels", "position_ids")}
        batch["use_cache"] = False
        return batch


@dataclass
class PackedRowsCollator:
    """For evaluation: one batch row per packed row, so that multi-process gathering (which
    trims by dataset rows) counts every token once. Rows are padded at the end with a
    segment of their own (positions restart, labels -100): no real token attends to it.
    """

    pad_token_id: int

    def __call__(self, rows: list[dict]) -> dict:
        width = max(len(r["input_ids"]) for r in rows)
        batch = {"input_ids": [], "labels": [], "position_ids": []}
        for r in rows:
            pad = width - len(r["input_ids"])
            batch["input_ids"].append(list(r["input_ids"]) + [self.pad_token_id] * pad)
            batch["labels"].append(list(r["labels"]) + [-100] * pad)
            batch["position_ids"].append(list(r["position_ids"]) + list(range(pad)))
        batch = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
        batch["use_cache"] = False
        return batch
