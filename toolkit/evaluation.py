"""Perplexity over tokens, and samples from the model.

Perplexity is exp(total cross-entropy / number of predicted tokens) over the whole
evaluation set. The mean of per-batch mean losses (what Trainer reports as eval_loss)
weights a short batch like a long one, and so drifts from it when lengths differ.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def token_nll(logits, labels: torch.Tensor) -> torch.Tensor:
    """Per row: [sum of next-token cross-entropy, number of predicted tokens], shape (batch, 2)."""
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    logits = logits[:, :-1, :].float()
    targets = labels[:, 1:].to(logits.device)
    nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
    counted = (targets != -100)
    return torch.stack([nll.sum(dim=1).double(), counted.sum(dim=1).double()], dim=1)


def perplexity_from_sums(sums) -> dict[str, float]:
    """Reduce rows of [nll sum, token count] to a token-weighted loss and its perplexity."""
    sums = np.asarray(sums, dtype=np.float64).reshape(-1, 2)
    tokens = sums[:, 1].sum()
    loss = float(sums[:, 0].sum() / tokens) if tokens else float("nan")
    # A diverged model's loss can exceed log(float max): its perplexity is then infinite, not an error.
    perplexity = float(np.exp(np.float64(loss))) if loss == loss else float("nan")
    return {"token_loss": loss, "perplexity": perplexity, "tokens": int(tokens)}


def compute_perplexity(eval_pred) -> dict[str, float]:
    """`compute_metrics` for causal LM evaluation; predictions are `token_nll` rows."""
    return perplexity_from_sums(eval_pred.predictions)


@torch.no_grad()
def generate_samples(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float, top_k: int, seed: int,
                     chat: bool = False):
    """Sample a continuation of each prompt (seeded, so a rerun gives the same text).

    With `chat`, each prompt is a user message rendered with the chat template.
    """
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        # Sampling must not move the random state that training (data order, dropout) uses next.
        return _generate(model, tokenizer, prompts, max_new_tokens, temperature, top_k, seed, chat)


def _generate(model, tokenizer, prompts, max_new_tokens, temperature, top_k, seed, chat):
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i, prompt in enumerate(prompts):
        torch.manual_seed(seed + i)
        text = prompt
        if chat:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
        ids = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=temperature > 0, temperature=temperature or None,
            top_k=top_k, pad_token_id=tokenizer.pad_token_id,
        )
        completion = tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        out.append({"prompt": prompt, "completion": completion})
    model.train(was_training)
    return out
