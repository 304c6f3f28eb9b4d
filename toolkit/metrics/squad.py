"""Exact match and token F1 (0-100) with the SQuAD v1.1 answer normalisation, as an offline `evaluate` module.

Predictions are answer strings and references the gold answers of each question (a
string or a list); a prediction scores the best of its gold answers, as in the official
v1.1 script. An empty list marks a question without an answer (SQuAD 2.0): only an
empty prediction scores on it, 1 for both measures, as in the official v2.0 script.
Unlike the Hub's `squad` and `squad_v2` metrics, no ids or nested dicts are needed.

With `language="zh"`, answers are scored as the CMRC 2018 evaluation scores Chinese: text
cut into single Chinese characters (and punctuation), runs of other characters kept as
words; F1 from the longest common contiguous run of those units; exact match after the
punctuation is removed. (CMRC splits the Latin runs with NLTK's word tokenizer; here a
run splits into words, numbers and single punctuation marks: the same on plain words and numbers.)
"""

import collections
import re
import string

import datasets
import evaluate

from toolkit.metrics import CheckedPairs, is_cjk_character, language_code

_FEATURES = [
    # The gold answers of a question (a list: the best match counts), or exactly one (a string).
    datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}),
    datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
]

_INPUTS = """
Args:
    predictions: list of predicted answer strings.
    references: list of gold answers per prediction: a string, or a list of strings (the best one counts);
        an empty list: the question has no answer, and the right prediction is "".
    language: the answers' language: zh (or zh_CN, ...) for CMRC 2018 scoring; any other, SQuAD's.
Returns:
    exact_match, f1: 0-100, averaged over questions.
"""

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace (SQuAD v1.1)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Harmonic mean of precision and recall over the normalised answers' word tokens (a multiset)."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((collections.Counter(predicted) & collections.Counter(expected)).values())
    # v1.1 gives 0 whenever no token is shared, even when both sides normalise to nothing;
    # kept so that scores compare with published SQuAD v1.1 numbers.
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


# CMRC 2018's punctuation: ASCII signs it splits on, and the full-width marks of Chinese text.
_CMRC_PUNCTUATION = set("-:_*^/\\~`+=，。：？！“”；’《》·、「」（）－～『』") | {"……"}
_WORDS = re.compile(r"\d+(?:[.,]\d+)*|\w+|[^\w\s]")  # numbers such as 3.11 whole, as NLTK keeps them


def mixed_segmentation(text: str, drop_punctuation: bool = True) -> list[str]:
    """CMRC 2018: each Chinese character (and punctuation mark) a unit, other runs split into words."""
    units, run = [], []
    for char in text.lower().strip():
        if drop_punctuation and char in _CMRC_PUNCTUATION:
            continue
        if is_cjk_character(char) or char in _CMRC_PUNCTUATION:
            units += _WORDS.findall("".join(run))
            units.append(char)
            run = []
        else:
            run.append(char)
    return units + _WORDS.findall("".join(run))


def _longest_common_run(a: list[str], b: list[str]) -> int:
    """Length of the longest contiguous run of units that a and b share."""
    best, previous = 0, [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def cmrc_f1(prediction: str, gold: str) -> float:
    predicted, expected = mixed_segmentation(prediction), mixed_segmentation(gold)
    common = _longest_common_run(expected, predicted)
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def cmrc_exact_match(prediction: str, gold: str) -> float:
    strip = lambda text: "".join(c for c in text.lower().strip() if c not in _CMRC_PUNCTUATION)  # noqa: E731
    return float(strip(prediction) == strip(gold))


class Squad(CheckedPairs, evaluate.Metric):
    no_answer = True

    def _info(self):
        return evaluate.MetricInfo(
            description="SQuAD v1.1 exact match and F1 (Rajpurkar et al., 2016) over answer strings.",
            citation="Rajpurkar et al. SQuAD: 100,000+ Questions for Machine Comprehension of Text. EMNLP 2016.",
            inputs_description=_INPUTS,
            features=_FEATURES,
            reference_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
        )

    def _compute(self, predictions, references, language=None):
        self.check(predictions, references)
        chinese = language_code(language) == "zh"
        exact, overlap = (cmrc_exact_match, cmrc_f1) if chinese else (exact_match, token_f1)
        em = f1 = 0.0
        for prediction, ref in zip(predictions, references):
            # Only an empty list means "no answer". A gold that normalises to nothing ("the") is kept
            # and scored the v1.1 way (EM counts, F1 is 0), where the v2.0 script would drop it.
            golds = [ref] if isinstance(ref, str) else [g for g in ref if g]
            if not golds:  # no answer: right only when nothing is predicted
                right = float(not normalize_answer(prediction))
                em, f1 = em + right, f1 + right
                continue
            em += max(exact(prediction, g) for g in golds)
            f1 += max(overlap(prediction, g) for g in golds)
        return {"exact_match": 100 * em / len(predictions), "f1": 100 * f1 / len(predictions)}
