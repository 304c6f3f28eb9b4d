"""A built-in preference corpus, offline: questions on the standard library, answered right and wrong.

PEP 257 makes a docstring's first line a one-sentence summary: the chosen answer to "What does
json.dumps do in Python?" is json.dumps's own summary, the rejected one a plausible wrong answer,
the summary of another function of the same module (json.loads's, say). A model can only tell
them apart by what it knows of the name asked about, which is what the pairs teach.
"""

from __future__ import annotations

import collections
import functools
import re

import numpy as np

from toolkit.data.sources import stdlib_objects

_SUMMARY = re.compile(r"^[A-Z][^\n]{15,200}\.$")  # the summary line, as sources.python_docs_qa reads it


@functools.lru_cache(maxsize=1)
def _pairs() -> tuple[tuple[str, str, str], ...]:
    modules = collections.defaultdict(list)
    for name, doc in stdlib_objects():
        first = doc.strip().split("\n\n")[0].replace("\n", " ").strip()
        if "." in name and _SUMMARY.match(first) and "(" not in first.split(" ")[0]:
            modules[name.split(".")[0]].append((name, first))
    pairs = []
    for module in sorted(modules):
        functions = modules[module]
        for i, (name, summary) in enumerate(functions):
            # The next function of the module whose summary differs (a module of one has no wrong answer).
            wrong = next((other for k in range(1, len(functions))
                          if (other := functions[(i + k) % len(functions)][1]) != summary), None)
            if wrong is not None:
                pairs.append((f"What does {name} do in Python?", summary, wrong))
    # A fixed shuffle, so that `limit` takes questions from every module, not the first few alphabetically.
    order = np.random.default_rng(0).permutation(len(pairs))
    return tuple(pairs[i] for i in order)


def python_docs_preference() -> dict[str, list[str]]:
    """Rows of prompt, chosen, rejected (plain text; the chat template makes them turns)."""
    pairs = _pairs()
    return {"prompt": [p for p, _, _ in pairs], "chosen": [c for _, c, _ in pairs], "rejected": [r for _, _, r in pairs]}
