"""The fine-tuning recipe end to end (real subprocesses), resume with LoRA, GGUF, and bad input (in process)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import FINETUNE, run_finetune, write_recipe
from tests.test_bad_input import assert_refused


def recipe(tiny_base, tmp_path, **training):
    return {
        "model": {"name_or_path": str(tiny_base)},
        "data": {"sources": [{"builtin": "python-docs-qa", "limit": 60}], "format": "chat", "max_length": 128,
                 "eval_fraction": 0.2, "cache_dir": str(tmp_path / "cache")},
        "lora": {"enabled": True, "r": 4, "merge": True},
        "training": {"output_dir": str(tmp_path / "out"), "max_steps": 4, "per_device_train_batch_size": 2,
                     "learning_rate": 0.01, "save_steps": 2, "logging_steps": 1, "report_to": [], **training},
        "evaluation": {"sample_prompts": ["What does len do in Python?"], "max_new_tokens": 6},
    }


@pytest.mark.slow
def test_lora_chat_run_saves_adapter_merged_model_and_before_after(tiny_base, tmp_path):
    result = run_finetune("--config", str(write_recipe(tmp_path, recipe(tiny_base, tmp_path))))
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert "packing efficiency" in result.stdout
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    with_adapter = AutoModelForCausalLM.from_pretrained(out)  # base + adapter, through peft
    x = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert (merged(input_ids=x).logits - with_adapter(input_ids=x).logits).abs().max() < 1e-4
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_perplexity"] < results["init_eval_perplexity"]
    sample = json.loads((out / "samples.json").read_text())[0]
    assert set(sample) == {"prompt", "before", "completion"}
    stats = json.loads((out / "data_stats.json").read_text())
    assert 0 < stats["train_packing"]["efficiency"] <= 1


@pytest.mark.slow
def test_resume_from_a_checkpoint_with_lora(tiny_base, tmp_path):
    path = write_recipe(tmp_path, recipe(tiny_base, tmp_path))
    first = run_finetune("--config", str(path))
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "out"
    uninterrupted = load_file(out / "adapter_model.safetensors")
    shutil.rmtree(out / "checkpoint-4")
    shutil.rmtree(out / "merged")
    for leftover in out.iterdir():
        if leftover.is_file() and leftover.name not in {"recipe.yaml", "init_eval_results.json", "samples_before.json"}:
            leftover.unlink()
    resumed = run_finetune("--config", str(path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "checkpoint-2" in resumed.stdout
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    resumed_adapter = load_file(out / "adapter_model.safetensors")
    at_checkpoint = load_file(out / "checkpoint-2" / "adapter_model.safetensors")
    # The restored adapter trained on from step 2, exactly as the uninterrupted run did.
    assert resumed_adapter.keys() == uninterrupted.keys()
    for name, weight in uninterrupted.items():
        assert torch.allclose(resumed_adapter[name], weight, atol=1e-6), name
    assert any(not torch.equal(resumed_adapter[n], at_checkpoint[n]) for n in at_checkpoint)


def test_real_gguf_model_converts_and_loads(smollm2):
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    tok = AutoTokenizer.from_pretrained(smollm2)
    assert model.config.model_type == "llama" and len(tok) == 49152 and tok.chat_template
    assert not hasattr(model.config, "quantization_config")  # plain float weights: trainable
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
                                     add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    answer = tok.decode(model.generate(**ids, max_new_tokens=12, do_sample=False)[0, ids["input_ids"].shape[1]:])
    assert "Paris" in answer


@pytest.mark.parametrize("change, message", [
    ({"model": {"name_or_path": "/nonexistent/model"}}, "model path not found: /nonexistent/model"),
    ({"model": {"name_or_path": "./missing/SmolLM2.gguf"}}, "GGUF file not found"),
    ({"lora": {"enabled": True, "target_modules": ["c_attn"]}}, "LoRA target module 'c_attn' is not in the model; its linear modules are"),
    pytest.param({"lora": {"enabled": True, "quantize_4bit": True}}, "QLoRA) needs a CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
    ({"lora": {"enabled": False, "quantize_4bit": True}}, "lora.quantize_4bit needs lora.enabled=true"),
    ({"data": {"max_length": 8, "too_long": "error"}}, "more than data.max_length=8"),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny_base, tmp_path, change, message, recipe_here):
    r = recipe(tiny_base, tmp_path)
    for section, values in change.items():
        r[section] = {**r[section], **values}
    result = recipe_here(FINETUNE, "--config", str(write_recipe(tmp_path, r)))
    assert_refused(result, message)
    assert not (tmp_path / "out").exists()


def test_conversation_without_an_assistant_is_refused(tiny_base, tmp_path, recipe_here):
    (tmp_path / "chats.jsonl").write_text("\n".join(
        json.dumps({"messages": [{"role": "user", "content": f"question {i}"}]}) for i in range(10)))
    r = recipe(tiny_base, tmp_path)
    r["data"]["sources"] = [{"files": str(tmp_path / "chats.jsonl")}]
    result = recipe_here(FINETUNE, "--config", str(write_recipe(tmp_path, r)))
    assert_refused(result, "no assistant message")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("fmt, lora", [("prompt_completion", False), ("text", True)])
def test_full_fine_tuning_and_other_formats(tiny_base, tmp_path, fmt, lora):
    r = recipe(tiny_base, tmp_path, save_strategy="no")
    r["lora"] = {"enabled": lora}
    r["data"]["format"] = fmt
    if fmt == "text":  # continued pretraining on plain text, cut into block_size blocks
        r["data"]["sources"] = [{"builtin": "python-docs", "limit": 60}]
    result = run_finetune("--config", str(write_recipe(tmp_path, r)))
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    if lora:
        assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    else:  # full fine-tuning: every weight may move, and a whole model is saved
        tuned = AutoModelForCausalLM.from_pretrained(out)
        base = AutoModelForCausalLM.from_pretrained(tiny_base)
        assert not torch.equal(tuned.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_perplexity"] < results["init_eval_perplexity"]
