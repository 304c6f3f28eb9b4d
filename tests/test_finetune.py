"""Fine-tuning: what carries the loss, exact packing, LoRA that leaves the base alone, merging."""

import copy

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from tests.conftest import ROOT
from toolkit.data.packing import CausalCollator, FlatteningCollator, PackedRowsCollator, pack_examples
from toolkit.errors import ToolkitError
from toolkit.evaluation import token_nll
from toolkit.loss import IGNORE
from toolkit.modeling import apply_lora, linear_module_names
from toolkit.recipe import Lora, load_recipe
from toolkit.tasks.causal_lm.encoding import encode_chat, encode_examples, encode_prompt_completion
from toolkit.tasks.causal_lm.trainer import build_trainer
from toolkit.tokenizer import ensure_chat_template

DEFAULT = ROOT / "recipes" / "finetune" / "default.yaml"


@pytest.fixture(scope="module")
def tok(tiny_base):
    t = AutoTokenizer.from_pretrained(tiny_base)
    ensure_chat_template(t)
    return t


def learned(ids, labels):
    return [i for i, label in zip(ids, labels) if label != IGNORE]


def test_prompt_tokens_are_ignored_and_completion_with_eos_is_learned(tok):
    ids, labels = encode_prompt_completion("What does len do?", "Return the number of items.", tok, True)
    prompt_len = len(tok("What does len do?", add_special_tokens=False)["input_ids"])
    assert labels[:prompt_len] == [IGNORE] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:]
    assert ids[-1] == tok.eos_token_id and labels[-1] == tok.eos_token_id  # the model learns to stop
    assert tok.decode(learned(ids, labels), skip_special_tokens=True) == "Return the number of items."
    _, all_labels = encode_prompt_completion("What does len do?", "Return the number of items.", tok, False)
    assert IGNORE not in all_labels


def test_chat_learns_assistant_turns_only_with_their_end_token(tok):
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What does len do?"},
        {"role": "assistant", "content": "Return the number of items."},
        {"role": "user", "content": "And abs?"},
        {"role": "assistant", "content": "Return the absolute value."},
    ]
    ids, labels = encode_chat(messages, tok, completion_only_loss=True)
    text = tok.decode(learned(ids, labels))
    assert "Return the number of items." in text and "Return the absolute value." in text
    assert "What does len do" not in text and "Answer briefly" not in text and "And abs" not in text
    assert text.count(tok.eos_token) == 2  # each answer's end-of-turn (EOS) is learned


@pytest.mark.slow
def test_chat_with_a_real_template_and_pad_equal_to_eos(smollm2):
    """SmolLM2's own tokenizer: ChatML, and pad == eos == <|im_end|>."""
    real = AutoTokenizer.from_pretrained(smollm2)
    assert real.pad_token_id == real.eos_token_id
    messages = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello there."}]
    ids, labels = encode_chat(messages, real, completion_only_loss=True)
    assert real.decode(learned(ids, labels)).startswith("Hello there.<|im_end|>")
    batch = CausalCollator(real.pad_token_id)([{"input_ids": ids, "labels": labels}, {"input_ids": ids[:5], "labels": labels[:5]}])
    assert (batch["labels"][0] == real.eos_token_id).sum() == 1  # EOS kept in the loss despite pad == eos
    # A conversation that opens with the assistant: the injected system prompt and headers stay context.
    opening = [{"role": "assistant", "content": "Hi! How can I help?"}, {"role": "user", "content": "Hi?"},
               {"role": "assistant", "content": "Hello there."}]
    ids, labels = encode_chat(opening, real, completion_only_loss=True)
    text = real.decode(learned(ids, labels))
    assert "SmolLM" not in text and "<|im_start|>" not in text
    assert "Hi! How can I help?" in text and "Hello there." in text


def test_an_answer_token_that_starts_in_the_header_is_learned(tok):
    spaced = copy.copy(tok)
    spaced.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ 'User: ' + m['content'] + '\n' }}"
                            "{% else %}{{ 'Assistant: ' + m['content'] + eos_token + '\n' }}{% endif %}{% endfor %}"
                            "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}")
    messages = [{"role": "user", "content": "Two plus two?"}, {"role": "assistant", "content": "four"}]
    ids, labels = encode_chat(messages, spaced, completion_only_loss=True)
    # Byte-level BPE glues the header's space to "four": that token must still be learned.
    assert spaced.decode(learned(ids, labels)).strip().startswith("four")


@pytest.mark.parametrize("messages, message", [
    ([{"role": "user", "content": "Hi"}], "no assistant message"),
    ([{"role": "robot", "content": "Hi"}, {"role": "assistant", "content": "x"}], "needs a role"),
    ([{"content": "Hi"}], "needs a role"),
])
def test_conversations_without_the_needed_roles_are_refused(tok, messages, message):
    with pytest.raises(ToolkitError, match=message):
        encode_chat(messages, tok, True, where="example 3")


def test_too_long_examples_are_skipped_and_counted_or_refused(tok):
    ds = Dataset.from_dict({"prompt": ["short", "long " * 200], "completion": ["ok", "ok"]})
    kept, stats = encode_examples(ds, tok, "prompt_completion", 64, "skip", True)
    assert len(kept) == 1 and stats["skipped_too_long"] == 1
    with pytest.raises(ToolkitError, match="example 1 has .* tokens, more than data.max_length=64"):
        encode_examples(ds, tok, "prompt_completion", 64, "error", True)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)).eval()


def examples(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(3, 20, (1,), generator=g))
        ids = torch.randint(1, 64, (length,), generator=g).tolist()
        labels = [IGNORE] * (length // 3) + ids[length // 3:]
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def per_example_losses_unpacked(model, rows):
    out = []
    with torch.no_grad():
        for r in rows:
            logits = model(input_ids=torch.tensor([r["input_ids"]])).logits[0, :-1]
            target = torch.tensor(r["labels"][1:])
            out.append(F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum").item())
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rows_give_the_same_per_example_losses_as_unpacked(attn):
    model = tiny_model()
    model.config._attn_implementation = attn
    rows = examples()
    packed, stats = pack_examples(Dataset.from_dict({k: [r[k] for r in rows] for k in ("input_ids", "labels")}), 40)
    assert stats["rows"] < len(rows) and 0 < stats["efficiency"] <= 1
    batch = FlatteningCollator()([packed[i] for i in range(len(packed))])
    assert "attention_mask" not in batch  # boundaries come from position_ids alone
    assert model.config.use_cache  # the collator itself must turn the cache off
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
    ids, labels, pos = batch["input_ids"][0], batch["labels"][0], batch["position_ids"][0]
    starts = (pos == 0).nonzero().flatten().tolist() + [len(pos)]
    packed_losses = {}
    for s, e in zip(starts, starts[1:]):
        key = tuple(ids[s:e].tolist())
        packed_losses[key] = F.cross_entropy(logits[s:e - 1], labels[s + 1:e], ignore_index=IGNORE, reduction="sum").item()
    unpacked = per_example_losses_unpacked(model, rows)
    for r, expected in zip(rows, unpacked):
        assert packed_losses[tuple(r["input_ids"])] == pytest.approx(expected, abs=1e-5)
    # The model's own loss over the packed row scores exactly the unpacked tokens: nothing
    # is predicted across a boundary (each example's first label is -100).
    with torch.no_grad():
        packed_loss = model(**batch).loss.item()
    predicted = sum(sum(1 for t in r["labels"][1:] if t != IGNORE) for r in rows)
    assert packed_loss == pytest.approx(sum(unpacked) / predicted, abs=1e-5)


def test_evaluation_batches_keep_one_row_per_packed_row_and_score_the_same():
    model = tiny_model()
    rows = examples(8)
    packed, _ = pack_examples(Dataset.from_dict({k: [r[k] for r in rows] for k in ("input_ids", "labels")}), 24)
    batch = PackedRowsCollator(pad_token_id=0)([packed[i] for i in range(len(packed))])
    assert batch["input_ids"].shape[0] == len(packed)  # gathering across processes trims by these rows
    flat = FlatteningCollator()([packed[i] for i in range(len(packed))])
    with torch.no_grad():
        rows_nll = token_nll(model(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"])
        flat_nll = token_nll(model(**{k: v for k, v in flat.items() if k != "labels"}).logits, flat["labels"])
    assert rows_nll.sum(0).tolist() == pytest.approx(flat_nll.sum(0).tolist(), abs=1e-4)


def test_no_attention_crosses_an_example_boundary():
    model = tiny_model()
    rows = examples(3)
    first_len = len(rows[0]["input_ids"])
    changed_rows = [{**rows[0], "input_ids": [(t % 63) + 1 for t in reversed(rows[0]["input_ids"])]}] + rows[1:]
    collate = FlatteningCollator()

    def logits_after_first(rs):
        batch = collate([{"input_ids": [t for r in rs for t in r["input_ids"]],
                          "labels": [t for r in rs for t in r["labels"]],
                          "position_ids": [p for r in rs for p in range(len(r["input_ids"]))]}])
        with torch.no_grad():
            return model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0, first_len:]

    a, b = logits_after_first(rows), logits_after_first(changed_rows)
    assert torch.equal(a, b)  # rewriting example 0 changes nothing after it


def lora_trainer(tiny_base, tmp_path, *overrides):
    recipe = load_recipe(None, [f"model.name_or_path={tiny_base}", f"training.output_dir={tmp_path}", "training.report_to=[]",
                                "lora.r=4", "training.max_steps=3", "training.learning_rate=0.01", *overrides], default=DEFAULT)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32), recipe.lora)
    rows = [{"input_ids": list(range(5 + i, 30 + i)), "labels": [IGNORE] * 5 + list(range(10 + i, 30 + i))} for i in range(8)]
    data, _ = pack_examples(Dataset.from_list(rows), 64)
    return build_trainer(recipe, model, tokenizer, data, data)


def test_lora_trains_only_adapters_and_leaves_base_weights_bit_identical(tiny_base, tmp_path):
    trainer = lora_trainer(tiny_base, tmp_path)
    model = trainer.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    trainer.train()
    for n, p in model.named_parameters():
        if n in base_before:
            assert torch.equal(p, base_before[n]), n
    assert any(not torch.equal(p, lora_before[n]) for n, p in model.named_parameters() if "lora_B" in n)


def test_merged_model_gives_the_logits_of_base_plus_adapter(tiny_base, tmp_path):
    trainer = lora_trainer(tiny_base, tmp_path)
    trainer.train()
    model = trainer.model.eval()
    x = torch.tensor([list(range(3, 40))])
    with torch.no_grad():
        with_adapter = model(input_ids=x).logits
        with model.disable_adapter():
            without = model(input_ids=x).logits
        merged = copy.deepcopy(model).merge_and_unload()
        merged_logits = merged(input_ids=x).logits
    assert not torch.allclose(with_adapter, without)  # the adapter does something
    assert (merged_logits - with_adapter).abs().max().item() < 1e-4


def test_missing_lora_target_lists_the_modules_that_exist(tiny_base):
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    with pytest.raises(ToolkitError) as err:
        apply_lora(model, Lora(enabled=True, target_modules=["q_proj", "query_key_value"]))
    assert "'query_key_value' is not in the model" in str(err.value)
    assert ", ".join(linear_module_names(model)) in str(err.value) and "q_proj" in str(err.value)


def test_learning_rate_schedule_counts_packed_rows(tiny_base, tmp_path):
    trainer = lora_trainer(tiny_base, tmp_path, "training.max_steps=-1", "training.num_train_epochs=2",
                           "training.per_device_train_batch_size=2", "training.lr_scheduler_type=linear",
                           "training.warmup_steps=0", "training.save_strategy=no")
    rows = len(trainer.train_dataset)
    assert rows < 8  # 8 examples went into fewer packed rows
    trainer.train()
    assert trainer.state.global_step == 2 * -(-rows // 2)  # epochs x ceil(rows / batch): the real steps
    assert trainer.lr_scheduler.get_last_lr()[0] == 0.0  # the linear schedule ended exactly at the last step
