"""ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum F-measures from Google's rouge_score, as an offline `evaluate` module.

Scores are 0-1, as rouge_score gives them, averaged over examples. ROUGE-Lsum treats each
line of a text as a sentence (rouge_score's convention): put a newline between the
sentences of summaries before scoring, or ROUGE-Lsum equals ROUGE-L.
"""

import re

import datasets
import evaluate
import numpy as np
from rouge_score import rouge_scorer, tokenizers

from toolkit.errors import ToolkitError
from toolkit.metrics import CJK_LANGUAGES, CheckedPairs, is_cjk_character, language_code

_FEATURES = [
    # Several references per prediction (a list: the best-scoring one counts), or exactly one (a string).
    datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}),
    datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
]

_INPUTS = """
Args:
    predictions: list of summaries (sentences separated by newlines, for rougeLsum).
    references: list of references per prediction: a string, or a list of strings (the best one counts).
    rouge_types: which of rouge1, rouge2, rougeL, rougeLsum (all four by default; rouge3... also work).
    use_stemmer: Porter-stem words before matching (rouge_score's option; off by default).
    use_aggregator: True (default) gives the mean F-measure of each type; False the per-example lists.
    language: the texts' language (zh, ja, ko, zh_CN, ...). Chinese, Japanese and Korean are scored by
        character, with runs of Latin letters and digits as words; any other language (or none) exactly as
        rouge_score scores it, whose tokenizer keeps only a-z and 0-9 and so drops every CJK character.
Returns:
    rouge1, rouge2, rougeL, rougeLsum: F-measures, 0-1.
"""

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_LATIN_RUN = re.compile(r"[a-z0-9]+")


class CharactersAndWords(tokenizers.Tokenizer):
    """rouge_score's tokenization for scripts without spaces: each CJK character a token, and the rest
    as rouge_score's default tokenizer reads it (lower case, runs of a-z and 0-9, stemmed if asked)."""

    def __init__(self, use_stemmer: bool = False):
        self.latin = tokenizers.DefaultTokenizer(use_stemmer)

    def tokenize(self, text: str) -> list[str]:
        tokens, latin = [], []
        for char in text.lower():
            if is_cjk_character(char):
                tokens += self.latin.tokenize("".join(latin)) if latin else []
                tokens.append(char)
                latin = []
            else:
                latin.append(char)
        return tokens + (self.latin.tokenize("".join(latin)) if latin else [])


class Rouge(CheckedPairs, evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="ROUGE F-measures (Lin, 2004) as computed by Google's rouge_score package.",
            citation="Chin-Yew Lin. ROUGE: A Package for Automatic Evaluation of Summaries. 2004.",
            inputs_description=_INPUTS,
            features=_FEATURES,
            codebase_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
        )

    def _compute(self, predictions, references, rouge_types=ROUGE_TYPES, use_stemmer=False, use_aggregator=True,
                 language=None):
        self.check(predictions, references)
        wrong = [t for t in rouge_types if not re.fullmatch(r"rouge([1-9]|L|Lsum)", t)]
        if wrong:
            raise ToolkitError(f"{self.name}: unknown rouge_types {wrong}; use rouge1 ... rouge9, rougeL or rougeLsum")
        cjk = language_code(language) in CJK_LANGUAGES
        scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer,
                                          tokenizer=CharactersAndWords(use_stemmer) if cjk else None)
        per_type = {t: [] for t in rouge_types}
        for prediction, ref in zip(predictions, references):
            if isinstance(ref, str):
                scores = scorer.score(ref, prediction)
            else:
                scores = scorer.score_multi([r for r in ref if r], prediction)
            for t in rouge_types:
                per_type[t].append(scores[t].fmeasure)
        if not use_aggregator:
            return per_type
        # The plain mean: rouge_score's BootstrapAggregator reports a resampled estimate of it instead.
        return {t: float(np.mean(v)) for t, v in per_type.items()}
