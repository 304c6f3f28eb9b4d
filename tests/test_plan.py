"""Run planning: exact parameter counts, FLOPs by hand, tokens, memory, time and the report."""

import re

import pytest
import torch
import yaml

from tests.conftest import ROOT
from toolkit import plan as planning
from toolkit.errors import ToolkitError
from toolkit.modeling import build_model, load_model_config
from toolkit.plan import ASSUMED_MFU, KNOWN_GPUS, find_gpu, format_plan
from toolkit.tasks import TASKS, load_recipe

DEFAULT = ROOT / "recipes" / "pretrain" / "default.yaml"
FINETUNE = ROOT / "recipes" / "finetune" / "default.yaml"

LLAMA = ["model.config.hidden_size=64", "model.config.intermediate_size=176", "model.config.num_hidden_layers=3",
         "model.config.num_attention_heads=4", "model.config.num_key_value_heads=2",
         "model.config.max_position_embeddings=256", "tokenizer.vocab_size=500", "data.block_size=128"]
GPT2 = ["model.model_type=gpt2", "model.config={n_embd: 64, n_layer: 2, n_head: 4, n_positions: 128}",
        "tokenizer.vocab_size=500", "data.block_size=128"]
SMOLLM2_360M = ["model.config.hidden_size=960", "model.config.num_hidden_layers=32",
                "model.config.num_attention_heads=15", "model.config.num_key_value_heads=5",
                "model.config.intermediate_size=2560", "model.config.max_position_embeddings=2048",
                "model.config.tie_word_embeddings=true", "tokenizer.vocab_size=49152", "data.block_size=2048",
                "training.per_device_train_batch_size=8", "training.gradient_accumulation_steps=4",
                "training.max_steps=50000"]


def recipe(*overrides, default=DEFAULT):
    return load_recipe(None, list(overrides), default=default)


def plan(recipe, **kwargs):
    """The plan of a recipe, through its task (as `toolkit plan` makes it)."""
    return planning.plan(recipe, TASKS[recipe.task], **kwargs)


class Vocab:
    """What build_model reads from a tokenizer: its length and special ids."""

    bos_token_id, eos_token_id, pad_token_id = 1, 1, 0

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def llama_hand_count(d, L, V, inter, heads, kv_heads):
    head_dim = d // heads
    attention = d * d + 2 * d * (kv_heads * head_dim) + d * d  # q, k, v, o; no biases
    mlp = 3 * d * inter  # gate, up, down
    norms = 2 * d  # input and post-attention RMSNorm weights
    return V * d + L * (attention + mlp + norms) + d  # tied embedding once, final norm


def test_flops_per_token_matches_hand_count_for_llama():
    result = plan(recipe(*LLAMA), gpu="H100")
    d, L, V, T = 64, 3, 500, 128
    N = llama_hand_count(d, L, V, inter=176, heads=4, kv_heads=2)
    assert result["parameters"] == N
    assert result["position_embedding_parameters"] == 0
    assert result["non_embedding_parameters"] == N - V * d
    assert result["flops_per_token"] == 6 * N + 12 * L * d * T


def test_flops_per_token_leaves_out_gpt2_position_embeddings():
    result = plan(recipe(*GPT2), gpu="H100")
    d, L, V, T, positions = 64, 2, 500, 128, 128
    layer = (2 * d                    # ln_1 weight and bias
             + d * 3 * d + 3 * d      # c_attn: q, k, v in one matrix, with bias
             + d * d + d              # attention c_proj
             + 2 * d                  # ln_2
             + d * 4 * d + 4 * d      # mlp c_fc
             + 4 * d * d + d)         # mlp c_proj
    N = V * d + L * layer + 2 * d  # wte tied to the head, once; ln_f
    assert result["position_embedding_parameters"] == positions * d
    assert result["parameters"] == N + positions * d
    assert result["flops_per_token"] == 6 * N + 12 * L * d * T


@pytest.mark.parametrize("overrides", [LLAMA + ["model.config.tie_word_embeddings=false"], GPT2],
                         ids=["llama-untied", "gpt2"])
def test_parameter_count_equals_a_real_model(overrides):
    r = recipe(*overrides)
    torch.manual_seed(0)
    model = build_model(r.model, load_model_config(r.model), Vocab(r.tokenizer.vocab_size))
    assert plan(r, gpu="H100")["parameters"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("targets", ["[q_proj, v_proj]", "all-linear"])
def test_lora_trainable_count_equals_peft_count(targets):
    from peft import LoraConfig, get_peft_model

    r = recipe(*LLAMA, "lora.enabled=true", "lora.r=4", f"lora.target_modules={targets}")
    model = build_model(r.model, load_model_config(r.model), Vocab(500))
    wrapped = get_peft_model(model, LoraConfig(r=4, target_modules=r.lora.target_modules, task_type="CAUSAL_LM"))
    trainable, _ = wrapped.get_nb_trainable_parameters()
    result = plan(r, gpu="H100")
    assert result["trainable_parameters"] == trainable
    if targets != "all-linear":  # r*(in+out) per adapted matrix: q is 64->64, v is 64->32
        assert trainable == 3 * 4 * ((64 + 64) + (64 + 32))
    assert result["parameters"] == llama_hand_count(64, 3, 500, 176, 4, 2)  # the base, adapters aside


def test_unknown_gpu_error_lists_known_names():
    with pytest.raises(ToolkitError) as err:
        plan(recipe(), gpu="x")
    assert str(err.value) == "unknown GPU 'x'; known: " + ", ".join(KNOWN_GPUS)
    assert str(err.value).startswith("unknown GPU 'x'; known: H200, H100, A100")
    assert find_gpu("h200") == find_gpu("H200") and find_gpu("rtx4090")[0] == "RTX 4090"


def test_tokens_seen_for_default_pretraining_recipe():
    raw = yaml.safe_load(DEFAULT.read_text())
    training = raw["training"]
    assert (training["per_device_train_batch_size"], raw["data"]["block_size"], training["max_steps"]) == (16, 256, 300)
    assert plan(recipe(), gpu="H100")["tokens"] == 16 * 256 * 300
    assert plan(recipe(), gpu="H100", num_processes=4)["tokens"] == 4 * 16 * 256 * 300


def test_no_max_steps_means_tokens_depend_on_the_data():
    result = plan(recipe("training.max_steps=-1", "training.num_train_epochs=2"), gpu="L4")
    assert result["tokens"] is None and result["total_flops"] is None and result["time_s"] is None
    assert result["time_per_step_s"] > 0
    assert any("depend on the data size" in note for note in result["notes"])


def test_smollm2_360m_on_h200_total_flops_follow_the_formula():
    result = plan(recipe(*SMOLLM2_360M), gpu="H200")
    N = llama_hand_count(960, 32, 49152, inter=2560, heads=15, kv_heads=5)
    assert N == 361_821_120  # SmolLM2-360M's published size
    tokens = 8 * 4 * 2048 * 50_000
    assert result["parameters"] == N and result["tokens"] == tokens
    assert result["flops_per_token"] == 6 * N + 12 * 32 * 960 * 2048
    assert result["total_flops"] == (6 * N + 12 * 32 * 960 * 2048) * tokens
    assert result["time_s"] == pytest.approx(result["total_flops"] / (989e12 * ASSUMED_MFU))
    assert plan(recipe(*SMOLLM2_360M), gpu="H200", num_processes=8)["time_s"] == pytest.approx(result["time_s"])
    memory = result["memory"]  # bf16 autocast over fp32 weights, AdamW
    assert (memory["weights"], memory["gradients"], memory["optimizer"]) == (6 * N, 4 * N, 8 * N)
    # At a 49k vocabulary the fused loss is on (auto): one chunk of logits, not the whole head's.
    head = 2**25 * (4 + 2) + 8 * 2048 * 960 * 4 + 49152 * 960 * 4
    assert memory["activations"] == 32 * 2048 * 8 * 960 * 34 + head
    assert result["fits"] is True
    plain = plan(recipe(*SMOLLM2_360M, "model.fused_cross_entropy=false"), gpu="H200")["memory"]["activations"]
    assert plain == 32 * 2048 * 8 * 960 * 34 + 8 * 2048 * 49152 * (2 + 4)  # 4.8 GB of logits against 0.5 GB
    smoothed = plan(recipe(*SMOLLM2_360M, "training.label_smoothing_factor=0.1"), gpu="H200")  # the plain loss then
    assert smoothed["memory"]["activations"] == plain


@pytest.mark.parametrize("key", ["activation_checkpointing", "gradient_checkpointing"])
def test_memory_grows_with_eager_attention_and_shrinks_with_checkpointing(key):
    layer, logits = 2048 * 8 * 960 * 34, 8 * 2048 * 49152 * (2 + 4)  # one layer's 16-bit activations; the head's
    plain_loss = "model.fused_cross_entropy=false"
    base = plan(recipe(*SMOLLM2_360M, plain_loss, "training.activation_checkpointing=false"), gpu="L4")
    eager = plan(recipe(*SMOLLM2_360M, plain_loss, "model.attn_implementation=eager",
                        "training.activation_checkpointing=false"), gpu="L4")
    checkpointed = plan(recipe(*SMOLLM2_360M, plain_loss, f"training.{key}=true"), gpu="L4")
    assert base["memory"]["activations"] == 32 * layer + logits
    assert eager["memory"]["activations"] == 32 * 2048 * 8 * 960 * (34 + 5 * 15 * 2048 / 960) + logits
    # Only each layer's fp32 input is kept, and one layer is rebuilt at a time.
    assert checkpointed["memory"]["activations"] == 32 * 2048 * 8 * 960 * 4 + layer + logits
    assert base["fits"] is False and checkpointed["fits"] is True  # on the L4's 24 GB
    assert any("does not fit" in note for note in base["notes"])


def test_auto_checkpointing_turns_on_only_where_a_step_would_not_fit():
    """Neither key set means auto: the L4 (24 GB) needs it for this step, the H200 (141 GB) does not."""
    plain_loss = "model.fused_cross_entropy=false"
    on_l4 = plan(recipe(*SMOLLM2_360M, plain_loss), gpu="L4")
    forced_off = plan(recipe(*SMOLLM2_360M, plain_loss, "training.activation_checkpointing=false"), gpu="L4")
    on_h200 = plan(recipe(*SMOLLM2_360M, plain_loss), gpu="H200")
    assert on_l4["activation_checkpointing"] is True and on_l4["activation_checkpointing_setting"] == "auto"
    assert on_l4["fits"] is True and forced_off["fits"] is False
    assert on_l4["memory"]["activations"] < forced_off["memory"]["activations"]
    assert any("activation_checkpointing=auto found" in note for note in on_l4["notes"])
    assert on_h200["activation_checkpointing"] is False
    assert on_h200["memory"] == plan(recipe(*SMOLLM2_360M, plain_loss, "training.activation_checkpointing=false"),
                                     gpu="H200")["memory"]
    assert re.search(r"activation checkpointing +on \(auto\)", format_plan(on_l4))
    # A step that does not fit even so: the note leaves out the switch that is already on.
    huge = plan(recipe(*SMOLLM2_360M, plain_loss, "training.per_device_train_batch_size=256"), gpu="L4")
    [note] = [n for n in huge["notes"] if "does not fit" in n]
    assert huge["activation_checkpointing"] is True and "activation_checkpointing=true" not in note
    assert plan(recipe(*SMOLLM2_360M, plain_loss))["activation_checkpointing"] is False  # a CPU: the host's memory


def test_cpu_plan_uses_the_measured_matmul_rate():
    result = plan(recipe())
    assert result["device"] == "CPU" and result["precision"] == "fp32" and result["fits"] is None
    assert result["flops_per_second"] == result["peak_flops"] * ASSUMED_MFU
    assert result["time_s"] == pytest.approx(result["total_flops"] / (result["peak_flops"] * ASSUMED_MFU))


def test_pretrained_model_must_be_on_this_machine(tmp_path):
    from transformers import LlamaConfig

    with pytest.raises(ToolkitError, match="is not on this machine; plan downloads nothing"):
        plan(recipe("model.name_or_path=someone/some-model", default=FINETUNE), gpu="A10G")  # a Hub id
    LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2).save_pretrained(tmp_path)
    result = plan(recipe(f"model.name_or_path={tmp_path}", default=FINETUNE), gpu="a10g")
    assert result["model"]["vocab_size"] == 300  # the model's own vocabulary, not tokenizer.vocab_size
    assert result["sequence_length"] == 256 and result["sequence_length_key"] == "data.max_length"
    assert result["trainable_parameters"] < result["parameters"]  # LoRA


def test_format_plan_is_an_aligned_table():
    text = format_plan(plan(recipe(*SMOLLM2_360M), gpu="H200"))
    assert "361,821,120" in text and "3,276,800,000" in text
    assert "9.59e18" in text and "GiB" in text and "fits in the H200" in text and " h " in text
    rows = [line for line in text.splitlines() if line.startswith("  ") and not line.startswith("  - ")]
    columns = {re.match(r"^ +\S.*? {2,}(\S)", line).start(1) for line in rows}
    assert len(columns) == 1  # every value starts in the same column


def test_device_names_map_to_known_gpus():
    from toolkit.plan import gpu_in_device_name

    assert gpu_in_device_name("NVIDIA H200")[0] == "H200"
    assert gpu_in_device_name("NVIDIA A100-SXM4-80GB")[0] == "A100"
    assert gpu_in_device_name("NVIDIA GeForce RTX 4090")[0] == "RTX 4090"
    assert gpu_in_device_name("Some Future Chip") is None
