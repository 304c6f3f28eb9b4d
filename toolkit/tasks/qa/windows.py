"""Windows over long contexts and their span labels: what the model reads and learns.

The model reads `[CLS] question [SEP] context window [SEP]`. A context longer than one
window is cut into windows that overlap by `qa.doc_stride` tokens, so an answer that a cut
would split is whole in the next window. The gap this fills: datasets and tokenizers give
windows and offsets, but transformers ships no library code for span labels (only its
example scripts do).
"""

from __future__ import annotations

import bisect
import logging
import time
from dataclasses import dataclass

import numpy as np
from datasets import Dataset

from toolkit.data.prepare import PreparedData
from toolkit.errors import ToolkitError
from toolkit.recipe import Recipe
from toolkit.tasks.qa.examples import load_qa_examples
from toolkit.tasks.qa.section import QA

logger = logging.getLogger("toolkit")


def _check_question_room(tokenizer, questions: list[str], ids: list[str], qa: QA) -> None:
    """A window must leave more room for the context than the stride (the tokenizer panics otherwise)."""
    lengths = [len(q) for q in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    longest = int(np.argmax(lengths))
    room = qa.max_length - lengths[longest] - tokenizer.num_special_tokens_to_add(pair=True)
    if room <= qa.doc_stride:
        raise ToolkitError(
            f"the question of example {ids[longest]!r} is {lengths[longest]} tokens: with qa.max_length={qa.max_length}"
            f" a window leaves {room} tokens for the context, not more than qa.doc_stride={qa.doc_stride};"
            " raise qa.max_length or lower qa.doc_stride")


def _windows(batch: dict, tokenizer, qa: QA):
    _check_question_room(tokenizer, batch["question"], batch["id"], qa)
    return tokenizer(
        batch["question"], batch["context"], truncation="only_second", max_length=qa.max_length,
        stride=qa.doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True, padding=False,
    )


def _labels(enc, batch: dict, tokenizer) -> tuple[list[int], list[int], list[int]]:
    """Start and end token of each window's answer: the first answer if it lies whole in the window, else [CLS]."""
    starts, ends, cls_indices = [], [], []
    for w, example in enumerate(enc["overflow_to_sample_mapping"]):
        cls_index = enc["input_ids"][w].index(tokenizer.cls_token_id) if tokenizer.cls_token_id in enc["input_ids"][w] else 0
        cls_indices.append(cls_index)
        start = end = cls_index
        answers = batch["answers"][example]
        if answers["text"]:
            first_char = answers["answer_start"][0]
            last_char = first_char + len(answers["text"][0])  # one past the answer
            context = [t for t, s in enumerate(enc.sequence_ids(w)) if s == 1]
            offsets = enc["offset_mapping"][w]
            lo, hi = (context[0], context[-1]) if context else (0, -1)
            if context and offsets[lo][0] <= first_char and offsets[hi][1] >= last_char:
                # The answer's first token is the last one starting at or before its first character;
                # its last token the first one ending at or after its last character.
                token_starts = [offsets[t][0] for t in context]
                token_ends = [offsets[t][1] for t in context]
                start = lo + bisect.bisect_right(token_starts, first_char) - 1
                end = lo + bisect.bisect_left(token_ends, last_char)
        starts.append(start)
        ends.append(end)
    return starts, ends, cls_indices


def prepare_train_features(batch: dict, tokenizer, qa: QA) -> dict:
    """Windows of (question, context) with the answer's start and end token, [CLS] where it is not in the window."""
    enc = _windows(batch, tokenizer, qa)
    starts, ends, _ = _labels(enc, batch, tokenizer)
    out = {k: enc[k] for k in tokenizer.model_input_names if k in enc}
    return {**out, "start_positions": starts, "end_positions": ends}


def prepare_eval_features(batch: dict, tokenizer, qa: QA) -> dict:
    """Windows with what post-processing needs: the example's id, and character offsets of context tokens only."""
    enc = _windows(batch, tokenizer, qa)
    starts, ends, cls_indices = _labels(enc, batch, tokenizer)
    offsets = [
        [o if s == 1 else None for o, s in zip(enc["offset_mapping"][w], enc.sequence_ids(w))]
        for w in range(len(enc["input_ids"]))
    ]
    out = {k: enc[k] for k in tokenizer.model_input_names if k in enc}
    return {**out, "start_positions": starts, "end_positions": ends, "cls_index": cls_indices, "offset_mapping": offsets,
            "example_id": [batch["id"][e] for e in enc["overflow_to_sample_mapping"]]}


def model_inputs(features: Dataset, tokenizer) -> Dataset:
    """Only what the model's forward takes (the labels give eval_loss)."""
    keep = [c for c in (*tokenizer.model_input_names, "start_positions", "end_positions") if c in features.column_names]
    return features.select_columns(keep)


@dataclass
class QAData(PreparedData):
    """The windows as the model reads them, and what turns the held-out windows' logits back into answers:
    the held-out examples and their windows (with example ids and offsets)."""

    examples: Dataset | None = None
    features: Dataset | None = None


def prepare_qa_data(recipe: Recipe, tokenizer) -> QAData:
    """Examples loaded and checked, split, and cut into windows for training and for evaluation."""
    started = time.time()
    train, held_out, stats = load_qa_examples(recipe)
    qa, num_proc = recipe.qa, recipe.data.num_proc
    train_features = train.map(prepare_train_features, batched=True, remove_columns=train.column_names,
                               fn_kwargs={"tokenizer": tokenizer, "qa": qa}, num_proc=num_proc, desc="windows (train)")
    eval_features = held_out.map(prepare_eval_features, batched=True, remove_columns=held_out.column_names,
                                 fn_kwargs={"tokenizer": tokenizer, "qa": qa}, num_proc=num_proc, desc="windows (eval)")
    in_window = sum(s != c for s, c in zip(eval_features["start_positions"], eval_features["cls_index"]))
    stats.update(
        train_windows=len(train_features), eval_windows=len(eval_features),
        train_tokens=int(sum(map(len, train_features["input_ids"]))),
        max_length=qa.max_length, doc_stride=qa.doc_stride, seconds=round(time.time() - started, 2),
        samples=[{k: held_out[i][k] for k in ("id", "question", "answers")} for i in range(min(3, len(held_out)))],
    )
    logger.info("data: %d training windows from %d questions, %d held-out windows (%d holding an answer); max_length"
                " %d, stride %d", len(train_features), len(train), len(eval_features), in_window, qa.max_length,
                qa.doc_stride)
    return QAData(model_inputs(train_features, tokenizer), model_inputs(eval_features, tokenizer), tokenizer, stats,
                  examples=held_out, features=eval_features)
