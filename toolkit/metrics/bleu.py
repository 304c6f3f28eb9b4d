"""Corpus BLEU from sacrebleu (0-100) with its signature, as an offline `evaluate` module.

Equal to the `sacrebleu` command line on the same lines: `sacrebleu REF... -i HYP -m bleu`.
"""

import datasets
import evaluate
from sacrebleu.metrics import BLEU

from toolkit.metrics import CheckedPairs, as_streams

_FEATURES = [
    # Several references per prediction (a list), or exactly one (a string).
    datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}),
    datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
]

_INPUTS = """
Args:
    predictions: list of detokenized hypothesis strings.
    references: list of references per prediction: a string, or a list of strings (the count may vary).
    tokenize: sacrebleu tokenizer ('13a' by default, 'zh', 'intl', 'char', 'none', ...).
    lowercase, smooth_method ('exp', 'floor', 'add-k', 'none'), smooth_value, use_effective_order, trg_lang:
        as sacrebleu's `BLEU`.
Returns:
    bleu (0-100), bleu_precisions (1- to 4-gram, 0-100), bleu_brevity_penalty, bleu_sys_len, bleu_ref_len,
    bleu_signature (sacrebleu's, e.g. 'nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0').
"""


class Bleu(CheckedPairs, evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Corpus BLEU (Papineni et al., 2002) as computed by sacrebleu (Post, 2018).",
            citation="Matt Post. A Call for Clarity in Reporting BLEU Scores. WMT 2018.",
            inputs_description=_INPUTS,
            features=_FEATURES,
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
        )

    def _compute(self, predictions, references, tokenize=None, lowercase=False, smooth_method="exp",
                 smooth_value=None, use_effective_order=False, trg_lang=""):
        self.check(predictions, references)
        bleu = BLEU(lowercase=lowercase, tokenize=tokenize, smooth_method=smooth_method, smooth_value=smooth_value,
                    effective_order=use_effective_order, trg_lang=trg_lang)
        score = bleu.corpus_score(list(predictions), as_streams(references))
        return {
            "bleu": score.score,
            "bleu_precisions": list(score.precisions),
            "bleu_brevity_penalty": score.bp,
            "bleu_sys_len": score.sys_len,
            "bleu_ref_len": score.ref_len,
            "bleu_signature": str(bleu.get_signature()),
        }
