"""chrF (and chrF++) from sacrebleu (0-100) with its signature, as an offline `evaluate` module.

Equal to the `sacrebleu` command line on the same lines: `sacrebleu REF... -i HYP -m chrf`.
"""

import datasets
import evaluate
from sacrebleu.metrics import CHRF

from toolkit.metrics import CheckedPairs, as_streams

_FEATURES = [
    # Several references per prediction (a list), or exactly one (a string).
    datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}),
    datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
]

_INPUTS = """
Args:
    predictions: list of hypothesis strings.
    references: list of references per prediction: a string, or a list of strings (the count may vary).
    char_order (6), word_order (0; 2 gives chrF++), beta (2), lowercase, whitespace, eps_smoothing:
        as sacrebleu's `CHRF`.
Returns:
    chrf (0-100), chrf_signature (sacrebleu's, e.g. 'nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0').
"""


class Chrf(CheckedPairs, evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="chrF, the character n-gram F-score (Popovic, 2015), as computed by sacrebleu.",
            citation="Maja Popovic. chrF: character n-gram F-score for automatic MT evaluation. WMT 2015.",
            inputs_description=_INPUTS,
            features=_FEATURES,
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
        )

    def _compute(self, predictions, references, char_order=6, word_order=0, beta=2, lowercase=False,
                 whitespace=False, eps_smoothing=False):
        self.check(predictions, references)
        chrf = CHRF(char_order=char_order, word_order=word_order, beta=beta, lowercase=lowercase,
                    whitespace=whitespace, eps_smoothing=eps_smoothing)
        score = chrf.corpus_score(list(predictions), as_streams(references))
        return {"chrf": score.score, "chrf_signature": str(chrf.get_signature())}
