"""A causal LM's cross-entropy without its whole logits tensor: fused linear cross-entropy.

The last step of a causal LM projects hidden states [N, H] onto the vocabulary [V, H] and
takes the cross-entropy. With V = 32k-150k the logits, their softmax and their gradient
are the largest tensors of a training step: 8,192 tokens x 49,152 entries x 4 bytes is
1.6 GB each. Here the projection and the loss are done a chunk of tokens at a time, and
each chunk's gradients with respect to the hidden states and the output weight are taken
at once, in the forward pass: only those gradients (the sizes of the hidden states and
of the weight) outlive a chunk. The result equals the plain loss to float rounding.

The model itself still runs through its own forward (so DDP, FSDP and `torch.compile`
see the call they expect), asked for its hidden states and for the logits of one
position only; the loss is computed here from the last hidden state.
"""

from __future__ import annotations

import torch

from toolkit.errors import ToolkitError

CHUNK_ELEMENTS = 1 << 25  # logits entries per chunk: 128 MB in float32, whatever the vocabulary

# model.fused_cross_entropy=auto turns the fused loss on from this vocabulary size. Measured
# on 2 CPU cores, head and loss of 4,096 tokens (H=576): at a 49,152-token vocabulary it
# peaks at 466 MB against 2,237 MB for the plain loss, at the same speed (3.94 s against
# 4.02 s a step); at 8,192 tokens, 378 MB against 431 MB. Below 32k the logits are no
# longer the largest tensor of a step, and the plain loss is kept.
FUSED_LOSS_MIN_VOCAB = 32_000

IGNORE = -100  # the label of a position that carries no loss (prompt, padding, a packed row's seams)


def fused_loss_wanted(setting: bool | str, vocab_size: int) -> bool:
    """model.fused_cross_entropy as asked: true, false, or auto by vocabulary size (before the checks)."""
    return setting is True or (setting == "auto" and vocab_size >= FUSED_LOSS_MIN_VOCAB)


def fused_loss_bytes(tokens: int, hidden_size: int, vocab_size: int, per_value: int) -> int:
    """What the fused loss holds at its peak: one chunk's float32 logits and their gradient in the
    compute dtype, and the float32 gradients of the hidden states (the residual stream is not
    autocast) and of the output weight."""
    return CHUNK_ELEMENTS * (4 + per_value) + tokens * hidden_size * 4 + vocab_size * hidden_size * 4


class _LinearCrossEntropy(torch.autograd.Function):
    """Sum over labelled tokens of -log softmax(hidden @ weight.T + bias)[label]; gradients made in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_tokens: int, compute: torch.dtype):
        w = weight.to(compute)
        grad_hidden = torch.zeros_like(hidden)
        # Float32 accumulators for the parameters that train (a LoRA run's head is frozen).
        grad_weight = _zeros_if_trained(weight)
        grad_bias = _zeros_if_trained(bias)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_tokens):
            h, y = hidden[start : start + chunk_tokens].to(compute), labels[start : start + chunk_tokens]
            logits = (h @ w.T).float()
            if bias is not None:
                logits += bias.float()
            valid = y != IGNORE
            target = torch.where(valid, y, 0)
            lse = torch.logsumexp(logits, dim=-1)
            total += ((lse - logits.gather(1, target[:, None]).squeeze(1)) * valid).sum()
            # d(loss)/d(logits) = softmax - one_hot(label), zero on unlabelled tokens; made in place.
            grad = logits.sub_(lse[:, None]).exp_()
            grad[torch.arange(len(y), device=y.device), target] -= 1.0
            grad *= valid[:, None]
            grad_hidden[start : start + chunk_tokens] = (grad.to(compute) @ w).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += (grad.to(compute).T @ h).float()
            if grad_bias is not None:
                grad_bias += grad.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        return (
            grad_hidden * grad_total.to(grad_hidden.dtype),
            None if grad_weight is None else (grad_weight * grad_total).to(weight_dtype),
            None if grad_bias is None else (grad_bias * grad_total).to(bias_dtype),
            None,
            None,
            None,
        )


def _zeros_if_trained(parameter):
    if parameter is None or not parameter.requires_grad:
        return None
    return torch.zeros(parameter.shape, dtype=torch.float32, device=parameter.device)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         labels: torch.Tensor, compute: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss, labelled tokens) for hidden [N, H], weight [V, H] and labels [N] (-100: not learned).

    `compute`: the matmuls' dtype (bf16 in a bf16 run); log-sum-exp and accumulators stay float32.
    """
    chunk_tokens = max(1, CHUNK_ELEMENTS // weight.shape[0])
    total = _LinearCrossEntropy.apply(hidden, weight, bias, labels, chunk_tokens, compute or hidden.dtype)
    return total, (labels != IGNORE).sum()


def next_token_labels(labels: torch.Tensor) -> torch.Tensor:
    """Each position's label is the next token's: shifted left, -100 after each row's end (as transformers does)."""
    return torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE)


class FusedCausalLMLoss:
    """A Trainer `compute_loss_func` reading the last hidden state instead of the logits.

    The model must be called with `output_hidden_states=True` (the Trainer subclass does it).
    `compute`: the run's mixed-precision dtype. Autocast covers only the model's forward, and
    accelerate hands its outputs back in float32, so the head's matmuls would otherwise run
    in float32 where the plain loss runs them in bf16.
    """

    def __init__(self, model, compute: torch.dtype | None = None):
        self.head, self.compute = model.get_output_embeddings(), compute

    def __call__(self, outputs, labels, num_items_in_batch=None):
        hidden = outputs.hidden_states[-1]
        total, count = linear_cross_entropy(hidden.flatten(0, 1), self.head.weight, getattr(self.head, "bias", None),
                                            next_token_labels(labels).flatten(), self.compute)
        return total / (num_items_in_batch if num_items_in_batch is not None else count.clamp(min=1))


def check_fused_loss_exact(model) -> None:
    """The last hidden state times the output weight must be the model's logits; a model that
    scales or caps its logits (gemma2's soft-capping, say) would train on a different loss."""
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ToolkitError("model.fused_cross_entropy needs a model with an output projection (lm_head)")
    was_training = model.training
    model.eval()
    try:
        ids = torch.arange(8, device=head.weight.device)[None] % head.weight.shape[0]
        with torch.no_grad():
            try:  # called as training calls it: hidden states, and the last position's logits only
                out = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
            except TypeError:
                raise ToolkitError(f"model type {model.config.model_type!r} does not take logits_to_keep, so the fused"
                                   " cross-entropy cannot skip its logits") from None
            projected = out.hidden_states[-1][:, -1:].to(head.weight.dtype) @ head.weight.T
            if getattr(head, "bias", None) is not None:
                projected = projected + head.bias
    finally:
        model.train(was_training)
    if not torch.allclose(projected.float(), out.logits.float(), rtol=1e-3, atol=1e-3):
        raise ToolkitError(f"model type {model.config.model_type!r} transforms its logits after the output"
                           " projection, so the fused cross-entropy would train a different loss")
