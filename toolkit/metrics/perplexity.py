"""Token-weighted perplexity, exp(total NLL / total tokens), as an offline `evaluate` module.

Inputs are per-example sums, not texts: `nll_sum` (the summed next-token cross-entropy
of an example, in nats) and `num_tokens` (how many tokens it predicted), such as the rows
of `toolkit.evaluation.token_nll`. Summing before dividing weights every token alike; a
mean of per-example perplexities or losses would weight a short example like a long one.
"""

import datasets
import evaluate

from toolkit.errors import ToolkitError
from toolkit.evaluation import perplexity_from_sums

_INPUTS = """
Args:
    nll_sum: per example, the summed negative log-likelihood of its predicted tokens (nats).
    num_tokens: per example, the number of tokens predicted.
Returns:
    perplexity, token_loss (total NLL / total tokens), tokens (the total).
"""


class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Perplexity over tokens: exp(sum of NLL / number of predicted tokens).",
            citation="",
            inputs_description=_INPUTS,
            # float64 counts: token_nll's rows hold both columns as doubles.
            features=datasets.Features({"nll_sum": datasets.Value("float64"), "num_tokens": datasets.Value("float64")}),
        )

    def add_batch(self, *, nll_sum=None, num_tokens=None, **kwargs):
        """Add a batch of per-example NLL sums and token counts; bad input is a one-line ToolkitError."""
        if nll_sum is None or num_tokens is None or len(nll_sum) != len(num_tokens):
            counts = [0 if x is None else len(x) for x in (nll_sum, num_tokens)]
            raise ToolkitError(f"{self.name}: {counts[0]} NLL sums but {counts[1]} token counts; give one of each per example")
        super().add_batch(nll_sum=nll_sum, num_tokens=num_tokens, **kwargs)

    def _compute(self, nll_sum, num_tokens):
        if sum(num_tokens) <= 0:
            raise ToolkitError(f"{self.name}: no tokens to score (all token counts are 0)")
        return perplexity_from_sums(list(zip(nll_sum, num_tokens)))
