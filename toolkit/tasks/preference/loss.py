"""The preference losses, from per-pair log-probs: DPO and its relatives, with and without a reference.

Every figure starts from four sums per pair: the policy's log-probs of the chosen and the
rejected completion (summed over completion tokens, EOS included), their token counts, and
the reference's two sums (absent for SimPO and ORPO). Training and evaluation both call
`pair_loss` on them, so the logged eval_loss is the training objective on held-out pairs.

With h = (pi_c - ref_c) - (pi_r - ref_r), the implicit reward margin over beta:
- sigmoid (DPO):   -log sigmoid(beta h)
- ipo:             (h_avg - 1/(2 beta))^2, h_avg of per-token averages as TRL computes it (its authors'
                   normalisation, so that beta does not depend on completion lengths)
- hinge:           relu(1 - beta h)
- robust:          ((1-eps)(-log sigmoid(beta h)) - eps(-log sigmoid(-beta h))) / (1 - 2 eps), the unbiased
                   estimate of Chowdhury et al. 2024 under a share eps of flipped labels (TRL's `robust`, not
                   the conservative cDPO that TRL's `sigmoid` with label_smoothing computes)
- simpo:           -log sigmoid(beta (pi_c/n_c - pi_r/n_r) - gamma), no reference
- orpo:            NLL of the chosen tokens (token mean) - lambda log sigmoid(log odds_c - log odds_r), with
                   log odds = a - log(1 - e^a) on per-token average log-probs a, in float32 (log1mexp)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Columns of the per-pair statistics tensor that evaluation gathers across processes.
STATS = ("chosen_logps", "rejected_logps", "chosen_tokens", "rejected_tokens", "ref_chosen_logps", "ref_rejected_logps")


@dataclass
class PairLogps:
    """Per pair (tensors of shape [pairs]): policy sums, token counts, reference sums (None: reference-free)."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None

    def stacked(self) -> torch.Tensor:
        """[pairs, 6] in STATS order (zeros for a missing reference), for gathering."""
        zero = torch.zeros_like(self.chosen)
        ref_c = self.ref_chosen if self.ref_chosen is not None else zero
        ref_r = self.ref_rejected if self.ref_rejected is not None else zero
        return torch.stack([self.chosen, self.rejected, self.chosen_tokens.to(self.chosen.dtype),
                            self.rejected_tokens.to(self.chosen.dtype), ref_c, ref_r], dim=1)

    @classmethod
    def from_stacked(cls, stats: torch.Tensor, with_reference: bool) -> PairLogps:
        columns = stats.unbind(dim=1)
        return cls(*columns[:4], *(columns[4:] if with_reference else (None, None)))


def log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 - e^a) for a < 0, accurate over the whole range (Maechler 2012): log(-expm1(a)) near 0,
    log1p(-exp(a)) far below it. a = 0 (a probability of one in float32) is kept just below 0: finite."""
    a = a.clamp(max=-torch.finfo(a.dtype).tiny)
    return torch.where(a > -math.log(2), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def pair_loss(logps: PairLogps, loss: str, beta: float, label_smoothing: float = 0.0, simpo_gamma: float = 0.5):
    """(the batch's loss, chosen rewards, rejected rewards), for `loss` in section.METHODS."""
    if loss in ("simpo", "orpo"):
        avg_c = logps.chosen / logps.chosen_tokens.clamp(min=1)
        avg_r = logps.rejected / logps.rejected_tokens.clamp(min=1)
        chosen_rewards, rejected_rewards = beta * avg_c.detach(), beta * avg_r.detach()
        if loss == "simpo":
            return -F.logsigmoid(beta * (avg_c - avg_r) - simpo_gamma).mean(), chosen_rewards, rejected_rewards
        avg_c, avg_r = avg_c.float(), avg_r.float()
        log_odds = (avg_c - avg_r) - (log1mexp(avg_c) - log1mexp(avg_r))
        nll = -logps.chosen.sum() / logps.chosen_tokens.sum().clamp(min=1)
        return nll - beta * F.logsigmoid(log_odds).mean(), chosen_rewards, rejected_rewards
    if logps.ref_chosen is None:
        raise ValueError(f"the {loss} loss needs the reference's log-probs")
    chosen_ratio, rejected_ratio = logps.chosen - logps.ref_chosen, logps.rejected - logps.ref_rejected
    h = chosen_ratio - rejected_ratio
    if loss == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    elif loss == "hinge":
        losses = torch.relu(1 - beta * h)
    elif loss == "ipo":
        h_avg = chosen_ratio / logps.chosen_tokens.clamp(min=1) - rejected_ratio / logps.rejected_tokens.clamp(min=1)
        losses = (h_avg - 1 / (2 * beta)) ** 2
    elif loss == "robust":
        eps = label_smoothing
        losses = ((1 - eps) * -F.logsigmoid(beta * h) - eps * -F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    else:
        raise ValueError(f"unknown preference loss {loss!r}")
    return losses.mean(), beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def preference_metrics(logps: PairLogps, settings: dict) -> dict[str, float]:
    """The held-out scores of a set of pairs: loss, reward accuracy, rewards, margin, the policy's log-probs."""
    logps = PairLogps(*(t.double() if t is not None else None for t in vars(logps).values()))
    loss, chosen, rejected = pair_loss(logps, **settings)
    margins = chosen - rejected
    return {
        "preference_loss": float(loss),  # becomes eval_loss (see trainer.py)
        "reward_accuracy": float((chosen > rejected).double().mean()),
        "reward_margin": float(margins.mean()),
        "reward_chosen": float(chosen.mean()),
        "reward_rejected": float(rejected.mean()),
        "logps_chosen": float(logps.chosen.mean()),
        "logps_rejected": float(logps.rejected.mean()),
        "logps_accuracy": float((logps.chosen > logps.rejected).double().mean()),
        "pairs": len(margins),
    }
