"""A completion's log-probability under a policy: the sum over its tokens, the one number every
preference loss and the reference are made of."""

from __future__ import annotations

import torch

from toolkit.loss import IGNORE

MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "use_cache")


def sequence_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence of the batch: the sum of its completion tokens' log-probs, and their number.

    Only the positions that predict a completion token are projected to the vocabulary (logits_to_keep as a
    mask: a third of the head's work and memory on these pairs); log_softmax runs in float32, and the sums
    are taken in float64, as evaluation.token_nll takes them."""
    targets, sequences = batch["labels"][:, 1:], batch["sequence_ids"][:, 1:]
    scored = targets != IGNORE
    keep = torch.nn.functional.pad(scored, (0, 1), value=False)  # position t predicts token t + 1
    logits = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}, logits_to_keep=keep).logits
    if logits.dim() == 3:  # a model that projects every position
        logits = logits[keep]
    token_logps = logits.float().log_softmax(-1).gather(1, targets[scored].unsqueeze(1)).squeeze(1)
    n = 2 * batch["pair_tokens"].shape[0]
    owner = sequences[scored]
    sums = token_logps.new_zeros(n, dtype=torch.float64).index_add(0, owner, token_logps.double())
    counts = torch.bincount(owner, minlength=n)
    return sums, counts
