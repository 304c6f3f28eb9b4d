"""A built-in SQuAD-format corpus, offline: questions on the standard library answered from its docstrings."""

from __future__ import annotations

import collections
import functools
import re

import numpy as np

from toolkit.data.sources import stdlib_objects

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
    modules = collections.defaultdict(list)
    for name, doc in stdlib_objects():
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
