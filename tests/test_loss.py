"""The fused linear cross-entropy: the plain loss and its gradients, without the whole logits tensor."""

import pytest
import torch

from toolkit.errors import ToolkitError
from toolkit.loss import IGNORE, linear_cross_entropy, next_token_labels


def with_arguments(recipe):
    """A recipe made in code, its TrainingArguments built as checking a loaded recipe builds them."""
    from transformers import TrainingArguments

    from toolkit.recipe import training_arguments

    recipe.arguments = TrainingArguments(**training_arguments(recipe))
    return recipe


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_and_gradients_equal_the_plain_cross_entropy_over_many_chunks(monkeypatch, dtype):
    import toolkit.loss

    monkeypatch.setattr(toolkit.loss, "CHUNK_ELEMENTS", 7 * 50)  # 7 tokens a chunk: 6 chunks and a remainder
    torch.manual_seed(0)
    hidden = torch.randn(45, 16, dtype=dtype, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    bias = torch.randn(50, requires_grad=True)
    labels = torch.randint(0, 50, (45,))
    labels[::4] = IGNORE  # prompt tokens, padding: not learned
    total, count = linear_cross_entropy(hidden, weight, bias, labels)
    (2.5 * total).backward()  # an outer factor (1 / tokens in the batch) reaches every gradient
    fused = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    logits = (hidden @ weight.to(dtype).T).float() + bias
    plain = torch.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")
    (2.5 * plain).backward()
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    assert count == (labels != IGNORE).sum() and torch.allclose(total, plain, **tol)
    for got, want in zip(fused, (hidden.grad, weight.grad, bias.grad)):
        assert got.dtype == want.dtype and torch.allclose(got.float(), want.float(), **tol)


def test_a_frozen_output_weight_gets_no_gradient():
    hidden = torch.randn(6, 8, requires_grad=True)
    weight = torch.randn(20, 8)  # LoRA: the base's head is frozen
    total, _ = linear_cross_entropy(hidden, weight, None, torch.tensor([1, 2, 3, IGNORE, 5, 6]))
    total.backward()
    assert weight.grad is None and hidden.grad is not None


def test_labels_are_the_next_tokens():
    assert next_token_labels(torch.tensor([[5, 6, 7], [8, 9, IGNORE]])).tolist() == [[6, 7, IGNORE], [9, IGNORE, IGNORE]]


def _tiny_llama(seed=0, vocab_size=300):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=vocab_size)
    return LlamaForCausalLM(config)


def _train(tmp_path, fused, compile_backend=None):
    """Four real Trainer steps of a tiny llama on padded rows; the losses logged and the final weights."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from toolkit.recipe import Model, Recipe
    from toolkit.tasks.causal_lm.trainer import build_trainer

    raw = Tokenizer(models.WordLevel({f"t{i}": i for i in range(300)}, unk_token="t0"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="t0", eos_token="t1")
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(2, 300, (int(n),), generator=g).tolist() for n in torch.randint(5, 24, (32,), generator=g)]
    data = Dataset.from_dict({"input_ids": rows})
    training = {"output_dir": str(tmp_path / ("fused" if fused else "plain")), "max_steps": 4, "learning_rate": 1e-2,
                "per_device_train_batch_size": 8, "logging_steps": 1, "report_to": [], "save_strategy": "no",
                "eval_strategy": "no", "seed": 0}
    if compile_backend:
        training.update(torch_compile=True, torch_compile_backend=compile_backend)
    recipe = with_arguments(Recipe(model=Model(fused_cross_entropy=fused), training=training))
    trainer = build_trainer(recipe, _tiny_llama(), tokenizer, data, data.select(range(4)))
    assert (trainer.fused_loss is not None) == fused
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return losses, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.slow
def test_training_with_the_fused_loss_follows_the_plain_loss_step_for_step(tmp_path):
    plain_losses, plain_weights = _train(tmp_path, fused=False)
    fused_losses, fused_weights = _train(tmp_path, fused=True)
    assert fused_losses == pytest.approx(plain_losses, rel=1e-4) and len(plain_losses) == 4
    # Adam turns rounding-sized gradient differences of near-zero gradients (q and k at
    # initialisation) into small steps: the weights agree to a hundredth of one step (lr 1e-2).
    for name, weight in plain_weights.items():
        assert torch.allclose(fused_weights[name], weight, rtol=0, atol=1e-4), name


@pytest.mark.slow
def test_the_fused_loss_works_under_torch_compile(tmp_path):
    """The model compiled (dynamo and AOT autograd; inductor itself needs minutes on 2 cores), the loss fused."""
    from torch._dynamo.utils import counters

    plain_losses, _ = _train(tmp_path, fused=False)
    counters.clear()
    compiled_losses, _ = _train(tmp_path, fused=True, compile_backend="aot_eager")
    assert counters["stats"]["unique_graphs"] > 0  # the forward did run compiled
    assert compiled_losses == pytest.approx(plain_losses, rel=1e-4)


def test_a_model_that_changes_its_logits_after_the_projection_is_refused():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from toolkit.loss import check_fused_loss_exact

    config = Gemma2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                          num_key_value_heads=4, head_dim=8, vocab_size=300, final_logit_softcapping=1.0)
    with pytest.raises(ToolkitError, match="'gemma2' transforms its logits"):
        check_fused_loss_exact(Gemma2ForCausalLM(config))
    check_fused_loss_exact(_tiny_llama())  # a plain projection passes


def test_a_model_without_logits_to_keep_is_refused():
    """Models with their own forward (remote code, older families) may not take the keyword."""
    from transformers import LlamaForCausalLM

    from toolkit.loss import check_fused_loss_exact

    class OlderForward(LlamaForCausalLM):
        def forward(self, input_ids=None, output_hidden_states=None):  # no logits_to_keep, no **kwargs
            return super().forward(input_ids=input_ids, output_hidden_states=output_hidden_states)

    model = _tiny_llama()
    older = OlderForward(model.config)
    with pytest.raises(ToolkitError, match="does not take logits_to_keep"):
        check_fused_loss_exact(older)


def test_the_head_runs_in_the_runs_mixed_precision_dtype():
    """In a bf16 run the model hands back float32 hidden states; the head's matmuls still run in bf16."""
    torch.manual_seed(0)
    hidden = torch.randn(12, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=True)
    labels = torch.randint(0, 40, (12,))
    total, _ = linear_cross_entropy(hidden, weight, None, labels, compute=torch.bfloat16)
    total.backward()
    logits = (hidden.detach().bfloat16() @ weight.detach().bfloat16().T).float()
    plain = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    assert torch.allclose(total, plain, rtol=1e-3)  # bf16 products, float32 log-sum-exp
    assert not torch.allclose(total, torch.nn.functional.cross_entropy(hidden @ weight.T, labels, reduction="sum"),
                              rtol=1e-5)
    assert hidden.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32


def _trainer(setting, vocab=300, lora_targets=None, **training):
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from toolkit.modeling import apply_lora
    from toolkit.recipe import Lora, Model, Recipe
    from toolkit.tasks.causal_lm.trainer import build_trainer

    raw = Tokenizer(models.WordLevel({"t0": 0, "t1": 1}, unk_token="t0"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="t0", eos_token="t1")
    model = _tiny_llama(vocab_size=vocab)
    if lora_targets:
        model = apply_lora(model, Lora(enabled=True, target_modules=lora_targets))
    data = Dataset.from_dict({"input_ids": [[2, 3, 4]] * 4})
    recipe = with_arguments(Recipe(model=Model(fused_cross_entropy=setting),
                                   training={"output_dir": "unused", "report_to": [], "max_steps": 1, **training}))
    return build_trainer(recipe, model, tokenizer, data, data)


def test_auto_takes_the_fused_loss_only_where_it_is_exact(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _trainer("auto", vocab=32_000).fused_loss is not None  # large vocabulary: on
    assert _trainer("auto").fused_loss is None  # 300 tokens: the logits are small, plain loss
    assert _trainer("auto", vocab=32_000, lora_targets=["q_proj", "lm_head"]).fused_loss is None
    assert _trainer("auto", vocab=32_000, label_smoothing_factor=0.1).fused_loss is None
    assert _trainer("auto", vocab=32_000, lora_targets=["q_proj", "v_proj"]).fused_loss is not None
    # Asked for outright, the same cases stop the run in one line.
    with pytest.raises(ToolkitError, match="cannot train a LoRA adapter on the output layer"):
        _trainer(True, lora_targets=["q_proj", "lm_head"])
    with pytest.raises(ToolkitError, match="does not smooth labels; set training.label_smoothing_factor=0"):
        _trainer(True, label_smoothing_factor=0.1)
