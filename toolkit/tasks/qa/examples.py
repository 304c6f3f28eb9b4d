"""QA examples: loaded (Hub, SQuAD-format files, the built-in corpus), their answers checked, split by context.

The data are not cleaned (toolkit/data/clean.py): any change to a context would move every
answer_start after it.
"""

from __future__ import annotations

import collections
import json
import logging
import math
from pathlib import Path

import numpy as np
from datasets import Dataset, concatenate_datasets

from toolkit.data.sources import load_rows
from toolkit.errors import ToolkitError
from toolkit.recipe import Recipe, Source
from toolkit.tasks.qa.corpus import python_docs_squad
from toolkit.tasks.qa.section import QA, QA_FILE_FORMATS, columns, missing_column, qa_files

logger = logging.getLogger("toolkit")


def load_qa_source(source: Source, index: int, qa: QA) -> Dataset:
    """One source as columns id, context, question, answers (a Hub dataset, SQuAD-format files or a built-in)."""
    if source.builtin:
        ds, name = Dataset.from_dict(python_docs_squad()), source.builtin
    elif source.files:
        files = qa_files(source, f"data.sources[{index}]")
        name = ", ".join(files[:3])
        nested = [_official_squad(f) for f in files]
        if all(n is not None for n in nested):
            ds = Dataset.from_dict(_flatten_squad(nested, files, qa))
        elif any(n is not None for n in nested):
            raise ToolkitError(f"data.sources[{index}] mixes official SQuAD JSON files ({{\"data\": [...]}}) with"
                               " one-row-per-question files; give each kind its own source")
        else:
            ds = load_rows(source, files, QA_FILE_FORMATS[Path(files[0]).suffix.lower()], f"data.sources[{index}]")
    else:
        name = source.hub
        ds = load_rows(source, [], None, f"data.sources[{index}]")
    missing_column(ds.column_names, name, qa)
    if source.limit is not None:
        ds = ds.select(range(min(source.limit, len(ds))))
    ids = ds["id"] if "id" in ds.column_names else [f"{index}-{i}" for i in range(len(ds))]
    named = columns(qa)
    ds = ds.select_columns(list(named.values()))
    ds = ds.rename_columns({c: canonical for canonical, c in named.items() if c != canonical})
    return ds.add_column("id", [str(i) for i in ids])


def _official_squad(path: str) -> dict | None:
    """The official SQuAD layout (train-v1.1.json, train-v2.0.json): one JSON object,
    {"data": [{"paragraphs": [{"context", "qas": [...]}]}]}. None for any other file."""
    if Path(path).suffix.lower() != ".json":
        return None
    try:
        with open(path, encoding="utf-8") as f:
            if not f.read(64).lstrip().startswith("{"):
                return None  # an array of rows
            f.seek(0)
            obj = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # JSON lines, say: the usual loader reads it or names the problem
    return obj if isinstance(obj, dict) and isinstance(obj.get("data"), list) else None


def _flatten_squad(documents: list[dict], files: list[str], qa: QA) -> dict[str, list]:
    """One row per question, under the recipe's column names; is_impossible (SQuAD 2.0) means no answer."""
    rows = {"id": [], qa.context_column: [], qa.question_column: [], qa.answers_column: []}
    for doc, path in zip(documents, files):
        try:
            for article in doc["data"]:
                for paragraph in article["paragraphs"]:
                    for q in paragraph["qas"]:
                        given = [] if q.get("is_impossible") else q.get("answers", [])
                        rows["id"].append(str(q["id"]))
                        rows[qa.context_column].append(paragraph["context"])
                        rows[qa.question_column].append(q["question"])
                        rows[qa.answers_column].append({"text": [a["text"] for a in given],
                                                        "answer_start": [int(a["answer_start"]) for a in given]})
        except (KeyError, TypeError, ValueError) as err:
            raise ToolkitError(f"{path}: not the official SQuAD layout (data > paragraphs > context, qas > id,"
                               f" question, answers > text, answer_start): {type(err).__name__} {err}") from None
    return rows


def check_answers(ds: Dataset, qa: QA, name: str) -> tuple[Dataset, dict]:
    """Keep the answers whose answer_start points at their text; per `qa.bad_answer_start`, skip or stop.

    An example keeps its good answers; one whose every answer is bad is dropped (kept, it would
    read as unanswerable). Without `qa.version_2`, unanswerable examples are dropped too.
    """
    kept, answers = [], []
    counts = collections.Counter()
    for i, (id_, context, question, ans) in enumerate(zip(ds["id"], ds["context"], ds["question"], ds["answers"])):
        texts, starts = _answer_lists(ans, id_, name)
        if not isinstance(context, str) or not isinstance(question, str) or not question.strip():
            raise ToolkitError(f"example {id_!r} in {name}: context and question must be text (question {question!r})")
        good = [(t, s) for t, s in zip(texts, starts) if isinstance(s, int) and s >= 0 and context[s:s + len(t)] == t and t]
        bad = len(texts) - len(good)
        if bad:
            t, s = next((t, s) for t, s in zip(texts, starts) if (t, s) not in good)
            if qa.bad_answer_start == "error":
                raise ToolkitError(
                    f"example {id_!r} in {name}: answer {t!r} is not at answer_start {s}"
                    f" (the context there reads {context[s:s + len(t)]!r}); fix the data,"
                    " or set qa.bad_answer_start=skip to drop such answers")
            counts["bad_answer_start"] += bad
            if not good:
                counts["dropped_bad_answer_start"] += 1
                continue
        if not texts and not qa.version_2:
            counts["dropped_unanswerable"] += 1
            continue
        counts["unanswerable" if not good else "answerable"] += 1
        kept.append(i)
        answers.append({"text": [t for t, _ in good], "answer_start": [s for _, s in good]})
    if counts["bad_answer_start"]:
        logger.warning("data: %s: %d answers whose answer_start does not point at their text were skipped"
                       " (%d examples dropped: no good answer left)", name, counts["bad_answer_start"],
                       counts["dropped_bad_answer_start"])
    if counts["dropped_unanswerable"]:
        logger.info("data: %s: %d unanswerable questions dropped (set qa.version_2=true to learn them)", name,
                    counts["dropped_unanswerable"])
    out = ds.select(kept).remove_columns("answers")
    return out.add_column("answers", answers), dict(counts)


def _answer_lists(ans, id_, name) -> tuple[list, list]:
    """`{"text": [...], "answer_start": [...]}` (or a list of such single answers) as two lists."""
    if isinstance(ans, list) and all(isinstance(a, dict) for a in ans):  # [{"text": .., "answer_start": ..}, ...]
        ans = {"text": [a.get("text") for a in ans], "answer_start": [a.get("answer_start") for a in ans]}
    if not isinstance(ans, dict) or "text" not in ans or "answer_start" not in ans:
        raise ToolkitError(f"example {id_!r} in {name}: answers must be {{\"text\": [...], \"answer_start\": [...]}},"
                           f" got {str(ans)[:80]}")
    texts, starts = ans["text"], ans["answer_start"]
    texts = [texts] if isinstance(texts, str) else list(texts or [])
    starts = [starts] if isinstance(starts, int) else list(starts or [])
    if len(texts) != len(starts):
        raise ToolkitError(f"example {id_!r} in {name}: {len(texts)} answer texts but {len(starts)} answer_start values")
    return texts, starts


def _check_unique_ids(ds: Dataset) -> None:
    """Answers are gathered from windows by example id: two examples with one id would be merged."""
    seen = set()
    for example_id in ds["id"]:
        if example_id in seen:
            raise ToolkitError(f"two examples have the id {example_id!r}; give every question its own id"
                               " (or drop the id column: the toolkit then numbers them)")
        seen.add(example_id)


def split_by_context(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Hold out whole contexts: questions on a context seen in training would score its memory, not reading."""
    contexts = list(dict.fromkeys(ds["context"]))
    order = np.random.default_rng(seed).permutation(len(contexts))
    held = {contexts[i] for i in order[:max(1, math.ceil(fraction * len(contexts)))]}
    flags = [c in held for c in ds["context"]]
    train = ds.select([i for i, f in enumerate(flags) if not f])
    return train, ds.select([i for i, f in enumerate(flags) if f])


def load_qa_examples(recipe: Recipe) -> tuple[Dataset, Dataset, dict]:
    """Training and held-out examples, checked, with the counts of every step."""
    stats = {"sources": []}

    def load(sources):
        parts = []
        for i, source in enumerate(sources):
            ds = load_qa_source(source, i, recipe.qa)
            name = source.builtin or source.hub or str(source.files)
            checked, counts = check_answers(ds, recipe.qa, name)
            stats["sources"].append({"source": name, "examples": len(ds), **counts})
            parts.append(checked)
        return concatenate_datasets(parts)

    train = load(recipe.data.sources)
    if recipe.data.eval_sources:
        held_out = load(recipe.data.eval_sources)
        _check_unique_ids(held_out)
    else:
        _check_unique_ids(train)
        train, held_out = split_by_context(train, recipe.data.eval_fraction, recipe.seed)
    if len(train) == 0 or len(held_out) == 0:
        raise ToolkitError(f"no examples left for {'training' if len(train) == 0 else 'evaluation'} after the checks"
                           f" (counts: {stats['sources']}); check data.sources and qa.version_2")
    stats.update(train_examples=len(train), eval_examples=len(held_out),
                 eval_unanswerable=sum(not a["text"] for a in held_out["answers"]))
    logger.info("data: %d training and %d held-out questions (%d of them unanswerable)", len(train), len(held_out),
                stats["eval_unanswerable"])
    return train, held_out, stats
