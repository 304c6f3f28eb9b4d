"""Perplexity is exp(total cross-entropy / predicted tokens), not the mean of batch losses."""

import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from toolkit.data.packing import CausalCollator
from toolkit.evaluation import compute_perplexity, perplexity_from_sums, token_nll
from toolkit.tasks.causal_lm.trainer import CausalLMTrainer

PAD = 0


def trained_tiny_model():
    """A tiny Llama taught the cycle 1 2 3 4, so predictable and random texts score far apart."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=PAD)
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    pattern = torch.tensor([[1, 2, 3, 4] * 16])
    for _ in range(40):
        model(input_ids=pattern, labels=pattern).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def eval_texts():
    g = torch.Generator().manual_seed(1)
    long_a = [1, 2, 3, 4] * 50  # 200 tokens, easy
    long_b = [1, 2, 3, 4] * 40  # 160 tokens, easy
    short_a = torch.randint(5, 50, (6,), generator=g).tolist()  # hard
    short_b = torch.randint(5, 50, (4,), generator=g).tolist()
    return [long_a, long_b, short_a, short_b]  # batches of 2: (long, long), (short, short)


def independent_perplexity(model, texts):
    """Each text alone, no padding, summed token by token."""
    nll, n = 0.0, 0
    with torch.no_grad():
        for ids in texts:
            x = torch.tensor([ids])
            logits = model(input_ids=x).logits[0, :-1]
            nll += F.cross_entropy(logits, x[0, 1:], reduction="sum").item()
            n += len(ids) - 1
    return math.exp(nll / n), nll / n


@pytest.mark.slow
def test_eval_perplexity_is_token_weighted_and_differs_from_mean_of_batch_losses(tmp_path):
    model, texts = trained_tiny_model(), eval_texts()
    collate = CausalCollator(PAD)
    trainer = CausalLMTrainer(
        model=model,
        args=TrainingArguments(str(tmp_path), per_device_eval_batch_size=2, report_to=[], use_cpu=True),
        data_collator=collate,
        eval_dataset=Dataset.from_dict({"input_ids": texts}),
        compute_metrics=compute_perplexity,
        preprocess_logits_for_metrics=token_nll,
    )
    metrics = trainer.evaluate()
    expected_ppl, expected_loss = independent_perplexity(model, texts)
    assert metrics["eval_perplexity"] == pytest.approx(expected_ppl, rel=1e-4)
    assert metrics["eval_loss"] == pytest.approx(expected_loss, rel=1e-4)
    assert metrics["eval_tokens"] == sum(len(t) - 1 for t in texts)

    with torch.no_grad():
        batch_losses = [model(**collate([{"input_ids": t} for t in texts[i:i + 2]])).loss.item() for i in (0, 2)]
    mean_of_batches = math.exp(sum(batch_losses) / len(batch_losses))
    assert abs(mean_of_batches - expected_ppl) / expected_ppl > 0.5  # far apart: the weighting matters here


def test_token_nll_ignores_padding_and_the_first_position():
    logits = torch.zeros(1, 4, 10)  # uniform: every predicted token costs log(10)
    labels = torch.tensor([[3, 4, 5, -100]])
    sums = token_nll(logits, labels)
    assert sums.tolist() == [[pytest.approx(2 * math.log(10)), 2.0]]
    assert perplexity_from_sums(sums.numpy())["perplexity"] == pytest.approx(10.0)
