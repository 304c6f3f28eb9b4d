"""Model building and the training options a recipe can turn on."""

import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers.optimization import Adafactor

from tests.conftest import ROOT
from toolkit.errors import ToolkitError
from toolkit.modeling import build_model, check_block_size, load_model_config
from toolkit.recipe import Model, load_recipe
from toolkit.tasks.causal_lm.trainer import build_trainer

DEFAULT = ROOT / "recipes" / "pretrain" / "default.yaml"
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 2, "max_position_embeddings": 64}


class FakeVocab:
    """Just the tokenizer attributes build_model reads: a 100-token vocabulary."""

    bos_token_id, eos_token_id, pad_token_id = 1, 1, 0

    def __len__(self):
        return 100


def tiny_trainer(tmp_path, *overrides):
    recipe = load_recipe(None, [f"training.output_dir={tmp_path}", "training.report_to=[]", *overrides], default=DEFAULT)
    model = build_model(Model(config=TINY), load_model_config(Model(config=TINY)), FakeVocab())
    rows = Dataset.from_dict({"input_ids": [[(i * 7 + j) % 100 for j in range(16)] for i in range(8)]})
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1}, unk_token="<pad>")),
                                  pad_token="<pad>", eos_token="<eos>")
    return build_trainer(recipe, model, tok, rows, rows)


@pytest.mark.parametrize(
    "name, cls",
    [("adamw_torch", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD),
     ("adagrad", torch.optim.Adagrad), ("adafactor", Adafactor)],
)
def test_optimizers_by_name(tmp_path, name, cls):
    trainer = tiny_trainer(tmp_path, f"training.optim={name}", "training.weight_decay=0.1")
    optimizer = trainer.create_optimizer()
    assert type(optimizer) is cls
    decays = sorted(g["weight_decay"] for g in optimizer.param_groups)
    assert decays == [0.0, 0.1]  # norms and biases are not decayed


def test_label_smoothing_is_applied_to_shifted_labels(tmp_path):
    eps = 0.2
    trainer = tiny_trainer(tmp_path, f"training.label_smoothing_factor={eps}")
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    model = trainer.model.eval()
    with torch.no_grad():
        smoothed = trainer.compute_loss(model, dict(batch)).item()
        logits = model(input_ids=batch["input_ids"]).logits[:, :-1]
        logp = F.log_softmax(logits.float(), dim=-1)
        target = batch["labels"][:, 1:]
        nll = -logp.gather(-1, target.unsqueeze(-1)).mean()
        uniform = -logp.mean()
    assert smoothed == pytest.approx(((1 - eps) * nll + eps * uniform).item(), rel=1e-4)


def test_model_config_overrides_reach_the_model_including_dropout():
    config = load_model_config(Model(config={**TINY, "attention_dropout": 0.25}))
    model = build_model(Model(), config, FakeVocab())
    assert model.config.attention_dropout == 0.25 and model.config.hidden_size == 32
    assert model.config.vocab_size == 100 and model.config.pad_token_id == 0
    assert model.config._attn_implementation == "sdpa"


def test_unknown_model_config_key_and_model_type_get_suggestions():
    with pytest.raises(ToolkitError, match="unknown key 'model.config.hiden_size'.*did you mean 'model.config.hidden_size'"):
        load_model_config(Model(config={"hiden_size": 8}))
    with pytest.raises(ToolkitError, match="unknown model.model_type 'lama'; did you mean .*llama"):
        load_model_config(Model(model_type="lama"))


def test_block_size_is_checked_against_each_architectures_position_limit():
    gpt2 = load_model_config(Model(model_type="gpt2", config={"n_positions": 128, "n_layer": 1}))
    check_block_size(gpt2, 128)
    with pytest.raises(ToolkitError, match="raise model.config.n_positions"):
        check_block_size(gpt2, 129)


def test_same_seed_same_initial_weights():
    config = load_model_config(Model(config=TINY))
    a = build_model(Model(), config, FakeVocab(), seed=7).state_dict()
    b = build_model(Model(), config, FakeVocab(), seed=7).state_dict()
    c = build_model(Model(), config, FakeVocab(), seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_fp32_on_cpu(tmp_path):
    trainer = tiny_trainer(tmp_path)
    assert trainer.args.bf16 is False and trainer.args.fp16 is False
    assert next(trainer.model.parameters()).dtype == torch.float32
    assert math.isfinite(trainer.evaluate()["eval_perplexity"])


def test_config_overrides_build_the_config_anew_so_derived_sizes_follow():
    config = load_model_config(Model(config={"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 2}))
    assert config.head_dim == 64  # not the 4096/32 of Llama's defaults


def test_sampling_leaves_the_training_random_state_alone(tmp_path):
    """Samples drawn before training must not change the data order training then draws."""
    from toolkit.evaluation import generate_samples

    trainer = tiny_trainer(tmp_path)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    generate_samples(trainer.model, trainer.processing_class, ["x"], max_new_tokens=3, temperature=1.0, top_k=5, seed=0)
    assert torch.equal(torch.get_rng_state(), before)


def test_activation_checkpointing_accepts_auto_and_nothing_else(tmp_path):
    from toolkit.recipe import training_arguments

    auto = load_recipe(None, ["training.activation_checkpointing=auto"], default=DEFAULT)
    assert "activation_checkpointing" not in training_arguments(auto)  # decided with the model, in training.py
    with pytest.raises(ToolkitError, match="'training.activation_checkpointing' must be true, false or auto, got 'often'"):
        load_recipe(None, ["training.activation_checkpointing=often"], default=DEFAULT)


@pytest.mark.slow
def test_auto_checkpointing_is_off_on_this_cpu_and_the_trainer_runs_without_it(tmp_path):
    trainer = tiny_trainer(tmp_path)  # neither key set: auto
    assert trainer.args.activation_checkpointing is False
    trainer.train()
    assert not trainer.model.is_activation_checkpointing
    forced = tiny_trainer(tmp_path / "forced", "training.activation_checkpointing=true")
    assert forced.args.activation_checkpointing is True


@pytest.fixture
def gpu_of(monkeypatch):
    """Stands in for a CUDA device of a given size: none can be reached from this machine. Only the
    three calls that the auto decision makes are replaced; the estimate itself runs for real."""
    from types import SimpleNamespace

    def make(total_bytes):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=total_bytes))

    return make


def test_auto_checkpointing_turns_on_when_the_step_would_not_fit_the_gpu(tmp_path, gpu_of, monkeypatch):
    from toolkit.budget import checkpointing_needed, meta_causal_lm
    from toolkit.training import decide_checkpointing

    def decided(recipe):
        decide_checkpointing(recipe, model, recipe.data.row_length)
        return recipe.arguments.activation_checkpointing, recipe.arguments.gradient_checkpointing

    recipe = load_recipe(None, [f"training.output_dir={tmp_path}", "training.bf16=true"], default=DEFAULT)
    explicit = load_recipe(None, [f"training.output_dir={tmp_path}", "training.activation_checkpointing=false"],
                           default=DEFAULT)
    model = build_model(recipe.model, load_model_config(recipe.model), FakeVocab())
    _, needed = checkpointing_needed(meta_causal_lm(model.config), recipe, recipe.data.row_length, True, 1e12)

    gpu_of(needed)  # the step alone would fill the whole GPU
    assert decided(recipe) == (True, True)
    gpu_of(2 * needed)
    assert decided(recipe) == (False, False)

    gpu_of(needed)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # sharded: the estimate does not apply; FSDP has its own switch
    assert decided(recipe) == (False, False)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    explicit.arguments.activation_checkpointing = explicit.arguments.gradient_checkpointing = True
    assert decided(explicit) == (True, True)  # the user's choice stands, whatever the estimate


def test_evaluation_keeps_the_rows_in_order_when_training_groups_by_length(tmp_path):
    """group_by_length would regroup evaluation too; answers and sources are matched to rows by position."""
    trainer = tiny_trainer(tmp_path, "training.train_sampling_strategy=group_by_length",
                           "training.per_device_eval_batch_size=3")
    rows = Dataset.from_dict({"input_ids": [[5 + i] * (2 + (i * 5) % 11) for i in range(12)]})  # lengths all over
    seen = [row[0] for batch in trainer.get_eval_dataloader(rows) for row in batch["input_ids"].tolist()]
    assert seen == [5 + i for i in range(12)]
