"""Spans back to text, and exact match and F1: the best valid span over all windows of an example.

With `qa.version_2` the empty answer wins when the null score (start and end both on
[CLS]) beats the best span by `qa.null_score_threshold`.
"""

from __future__ import annotations

import collections
import functools
import math

import numpy as np
from datasets import Dataset

from toolkit import metrics
from toolkit.tasks.qa.section import QA


def postprocess(examples, features, start_logits, end_logits, n_best: int = 20, max_answer_length: int = 30,
                version_2: bool = False, null_score_threshold: float = 0.0) -> dict[str, str]:
    """{example id: answer text}: the best span over all windows of each example.

    A span scores start_logit + end_logit; it must start and end on context tokens, end at or
    after its start, and be at most `max_answer_length` tokens. Only the `n_best` best starts
    and ends of each window are paired. With `version_2`, the empty answer is given when the
    null score (both on [CLS]) beats the best span by more than `null_score_threshold`.
    Logits may be padded past a window's length (the Trainer pads batches with -100).
    """
    windows = collections.defaultdict(list)
    for w, example_id in enumerate(features["example_id"]):
        windows[example_id].append(w)
    offsets_of = features["offset_mapping"]
    columns = getattr(features, "column_names", None) or list(features)
    cls_of = features["cls_index"] if "cls_index" in columns else [0] * len(offsets_of)
    answers = {}
    for example_id, context in zip(examples["id"], examples["context"]):
        best_score, best_text = -math.inf, ""
        # The null score is the lowest over windows: a window without the answer rightly says
        # "nothing here", and only the most confident window that it is elsewhere should decide.
        null_score = math.inf
        for w in windows.get(example_id, []):
            offsets = offsets_of[w]
            starts, ends = np.asarray(start_logits[w][:len(offsets)]), np.asarray(end_logits[w][:len(offsets)])
            null_score = min(null_score, float(starts[cls_of[w]] + ends[cls_of[w]]))
            for s in np.argsort(starts)[::-1][:n_best]:
                if offsets[s] is None:
                    continue
                for e in np.argsort(ends)[::-1][:n_best]:
                    if offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                        continue
                    score = float(starts[s] + ends[e])
                    if score > best_score:
                        best_score, best_text = score, context[offsets[s][0]:offsets[e][1]]
        if version_2 and null_score - best_score > null_score_threshold:
            best_text = ""
        answers[example_id] = best_text
    return answers


@functools.lru_cache(maxsize=1)
def _squad_metric():
    return metrics.load("squad")  # loaded once: each evaluation scores up to three subsets


def squad_scores(predictions: dict[str, str], references: dict[str, list[str]], language: str = "en") -> dict[str, float]:
    """Exact match and F1 (0-100) by question id, from the toolkit's squad metric; [] means no answer.
    `language`: zh scores as CMRC 2018 does (toolkit/metrics/squad.py)."""
    ids = list(references)
    scores = _squad_metric().compute(predictions=[predictions.get(i) or "" for i in ids],
                                     references=[references[i] for i in ids], language=language)
    return {k: round(v, 2) for k, v in scores.items()}


class SpanScores:
    """compute_metrics for the Trainer: windows' logits -> answers per question -> EM and F1.

    The Trainer hands over the logits of every evaluation window in dataset order; the
    answers of the last call are kept for predictions.json.
    """

    def __init__(self, examples: Dataset, features: Dataset, qa: QA):
        self.examples, self.features, self.qa = examples, features, qa
        self.references = {i: a["text"] for i, a in zip(examples["id"], examples["answers"])}
        self.last = {}

    def __call__(self, eval_pred) -> dict[str, float]:
        start_logits, end_logits = eval_pred.predictions[:2]
        qa = self.qa
        self.last = postprocess(self.examples, self.features, start_logits, end_logits, n_best=qa.n_best,
                                max_answer_length=qa.max_answer_length, version_2=qa.version_2,
                                null_score_threshold=qa.null_score_threshold)
        scores = squad_scores(self.last, self.references, qa.language)
        if qa.version_2:
            answered = {i: g for i, g in self.references.items() if g}
            scores["has_answer_f1"] = squad_scores(self.last, answered, qa.language)["f1"] if answered else None
            unanswerable = {i: g for i, g in self.references.items() if not g}
            scores["no_answer_accuracy"] = (squad_scores(self.last, unanswerable, qa.language)["exact_match"]
                                            if unanswerable else None)
        return {k: v for k, v in scores.items() if v is not None}

    def predictions(self) -> list[dict]:
        return [{"id": i, "question": q, "prediction": self.last.get(i), "answers": a["text"]}
                for i, q, a in zip(self.examples["id"], self.examples["question"], self.examples["answers"])]
