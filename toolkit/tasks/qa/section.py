"""The qa task's recipe section, and every check of the recipe and its data files made before any work."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from toolkit.data.sources import file_columns, resolve_files
from toolkit.errors import ToolkitError
from toolkit.recipe import Recipe, Source

QA_CORPORA = ("python-docs-squad",)  # built-in corpora of SQuAD-format questions (corpus.py)
QA_FILE_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass
class QA:
    """recipes/qa.py: extractive question answering on SQuAD-format data."""

    context_column: str = "context"
    question_column: str = "question"
    answers_column: str = "answers"  # {"text": [...], "answer_start": [...]}; empty lists: unanswerable
    max_length: int = 384  # question + context window, in tokens
    doc_stride: int = 128  # overlap between windows of a long context
    max_answer_length: int = 30  # tokens
    n_best: int = 20  # start and end candidates considered per window
    version_2: bool = False  # SQuAD 2.0: questions may have no answer in the context
    null_score_threshold: float = 0.0  # answer "no answer" when its score beats the best span by this
    bad_answer_start: Literal["skip", "error"] = "skip"  # an answer_start that does not point at its text
    # The answers' language: zh scores EM/F1 as the CMRC 2018 evaluation does (Chinese characters as units);
    # any other, SQuAD's normalisation and word tokens.
    language: str = "en"


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
            for path in qa_files(source, where):
                _check_file_columns(path, qa)


def qa_files(source: Source, where: str) -> list[str]:
    if not source.files:
        return []
    files = resolve_files(source)
    odd = [f for f in files if Path(f).suffix.lower() not in QA_FILE_FORMATS]
    if odd:
        raise ToolkitError(f"{where}: {odd[0]}: SQuAD-format rows are read from {', '.join(QA_FILE_FORMATS)} files"
                           " (one row per question: context, question, answers)")
    return files


def columns(qa: QA) -> dict[str, str]:
    """Canonical name -> the column the recipe names for it (qa.<canonical>_column)."""
    return {"context": qa.context_column, "question": qa.question_column, "answers": qa.answers_column}


def missing_column(found, name: str, qa: QA) -> None:
    for canonical, column in columns(qa).items():
        if column not in found:
            raise ToolkitError(f"{canonical} column {column!r} not in {name}; its columns are {', '.join(found)}"
                               f" (set qa.{canonical}_column)")


def _check_file_columns(path: str, qa: QA) -> None:
    """A named column missing from a local file is found from its first record, before any loading."""
    found = file_columns(path)
    if found is not None:
        missing_column(found, path, qa)
