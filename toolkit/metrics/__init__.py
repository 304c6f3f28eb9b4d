"""The toolkit's metrics as `evaluate` modules, loaded from their files so that they work offline.

`evaluate.load("sacrebleu")` fetches the metric's code from the Hub at run time; these
modules ship with the toolkit and are loaded by path. Each file defines one
`evaluate.Metric`, so `evaluate.load(<file>)`, `evaluate.combine` and a Trainer's
`compute_metrics` all work with them as with the Hub's.

    from toolkit import metrics
    metrics.load("bleu").compute(predictions=["a cat"], references=[["a cat", "the cat"]])
    metrics.combine(["bleu", "chrf"]).compute(predictions=..., references=...)
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from pathlib import Path

from toolkit.errors import ToolkitError

FOLDER = Path(__file__).resolve().parent
NAMES = ("bleu", "chrf", "rouge", "squad", "perplexity")
TEXT_METRICS = ("bleu", "chrf", "rouge", "squad")  # predictions and references are strings


def path(name: str) -> Path:
    """The module file of a metric; an unknown name is a user error with a did-you-mean."""
    if name not in NAMES:
        close = difflib.get_close_matches(str(name).lower(), NAMES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ToolkitError(f"unknown metric {name!r}{hint} (available: {', '.join(NAMES)})")
    return FOLDER / f"{name}.py"


def load(name: str, **kwargs):
    """`evaluate.load` of the toolkit's module for `name` (bleu, chrf, rouge, squad, perplexity)."""
    evaluate = _library()
    # A single process has no reason to write Arrow cache files for a few thousand strings;
    # distributed evaluation (num_process > 1) needs them, and evaluate refuses memory there.
    kwargs.setdefault("keep_in_memory", kwargs.get("num_process", 1) == 1)
    return evaluate.load(str(path(name)), **kwargs)


def check_text_metrics(names) -> list[str]:
    """Metric names that score texts together: each known, none twice, none that takes NLL sums."""
    names = list(names)
    if not names:
        raise ToolkitError(f"no metrics named; choose from {', '.join(TEXT_METRICS)}")
    for name in names:
        path(name)
        if name not in TEXT_METRICS:
            raise ToolkitError(f"{name} takes NLL sums and token counts, not texts; it cannot be combined "
                               f"with {', '.join(TEXT_METRICS)}; load it on its own")
    if len(set(names)) != len(names):
        raise ToolkitError(f"metric named twice: {', '.join(names)}")
    return names


def combine(names, **kwargs):
    """`evaluate.combine` of text metrics: one `compute(predictions=..., references=...)` for all."""
    names = check_text_metrics(names)
    evaluate = _library()  # after the checks: its import takes seconds
    return evaluate.combine({name: load(name) for name in names}, **kwargs)


# Languages written without spaces between words: scored by character (Latin runs stay words).
CJK_LANGUAGES = ("zh", "ja", "ko")
_CJK_CHARACTER = re.compile(r"[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff"
                            r"\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f]")


_LANGUAGE_NAMES = {"chinese": "zh", "japanese": "ja", "korean": "ko"}  # as prompts name them


def language_code(language: str | None) -> str:
    """A locale, language tag or (English) language name as the bare language: zh_CN, zh-Hans, ZH, Chinese -> zh;
    None -> ''."""
    code = re.split(r"[_\-.@ ]", (language or "").strip())[0].lower()
    return _LANGUAGE_NAMES.get(code, code)


def language_options(language: str | None) -> dict[str, dict]:
    """Each text metric's settings for texts in `language`: BLEU's tokenizer as `sacrebleu -l xx-LANG`
    chooses it, ROUGE's and SQuAD's tokenization."""
    code = language_code(language)
    return {"bleu": {"trg_lang": code}, "rouge": {"language": code}, "squad": {"language": code}}


def is_cjk_character(char: str) -> bool:
    """A Chinese character, Japanese kana or Korean Hangul: a unit of its own when scoring."""
    return bool(_CJK_CHARACTER.fullmatch(char))


def check_pairs(predictions, references, metric: str, no_answer: bool = False) -> None:
    """What every text metric requires: one non-empty reference (or list of them) per prediction.
    `no_answer`: an empty list is allowed, meaning the question has no answer (SQuAD 2.0)."""
    if references is None or len(references) == 0:
        raise ToolkitError(f"{metric}: no references to score against")
    if predictions is None or len(predictions) != len(references):
        count = 0 if predictions is None else len(predictions)
        raise ToolkitError(f"{metric}: {count} predictions but {len(references)} references;"
                           " give exactly one reference (or one list of references) per prediction")
    for i, ref in enumerate(references, 1):
        refs = [ref] if isinstance(ref, str) else list(ref)
        if no_answer and not refs:
            continue
        if not any(isinstance(r, str) and r.strip() for r in refs):
            raise ToolkitError(f"{metric}: reference {i} is empty; every example needs a non-empty reference")


class CheckedPairs:
    """Mixed in before `evaluate.Metric`: a batch of bad predictions or references is a one-line
    ToolkitError when it is added, not an Arrow error later. (Not a Metric itself, so that
    evaluate still finds each module's own class as its main one.)"""

    no_answer = False  # squad: an empty reference list is a question without an answer

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of predictions and their references; bad input is a one-line ToolkitError."""
        # (evaluate appends the metric's inputs description to this docstring: it must have one)
        self.check(predictions, references)
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def check(self, predictions, references) -> None:
        """Also called by each `_compute`: `add()` of single examples skips `add_batch`."""
        check_pairs(predictions, references, self.name, self.no_answer)


def as_streams(references):
    """Per-example reference lists -> sacrebleu's reference streams; None where an example has fewer."""
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    width = max(len(r) for r in refs)
    return [[r[j] if j < len(r) else None for r in refs] for j in range(width)]


def _library():
    """The `evaluate` library, even where a script's folder on sys.path holds a file evaluate.py.

    Python puts the folder of the script it runs first on sys.path: for every recipe that is
    recipes/, where recipes/evaluate.py would be imported in the library's place. The library
    is a package, never a lone evaluate.py, so such folders are passed over for this import.
    """
    loaded = sys.modules.get("evaluate")
    if loaded is not None and hasattr(loaded, "combine"):
        return loaded
    sys.modules.pop("evaluate", None)
    saved = sys.path[:]
    sys.path[:] = [p for p in saved if not os.path.isfile(os.path.join(p or os.curdir, "evaluate.py"))]
    try:
        import evaluate
    finally:
        sys.path[:] = saved
    return evaluate
