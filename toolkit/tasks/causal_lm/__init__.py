"""Causal language modeling: pretraining (from a config or pretrained weights) and fine-tuning.

recipes/pretrain.py and recipes/finetune.py both run this task. Plain text is packed into
blocks (data.format: text); prompt/completion pairs and chats are encoded with the model's
tokenizer and chat template, learned on the completion only, and packed padding-free
(data.py, encoding.py). Scored by held-out perplexity, exact over tokens (trainer.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from toolkit.budget import PlanModel, new_vocabulary
from toolkit.data.prepare import PreparedData, check_data, split_corpus
from toolkit.errors import ToolkitError
from toolkit.evaluation import generate_samples
from toolkit.modeling import ResolvedModel, build_policy, check_lora, load_model_config, local_model_config, resolve_pretrained
from toolkit.recipe import Recipe
from toolkit.task import Panel, Task
from toolkit.tasks.causal_lm.data import prepare_finetuning_data, prepare_pretraining_data
from toolkit.tasks.causal_lm.trainer import build_trainer, samples


class CausalLM(Task):
    name = "causal_lm"
    script = "recipes/pretrain.py or recipes/finetune.py"
    metrics = {"perplexity": ("perplexity", "Perplexity")}
    pipeline_tag = "text-generation"
    task_name = "Causal language modeling"
    panel = Panel("Evaluation perplexity", {"perplexity": "perplexity"}, log_scale=True)

    def check(self, recipe: Recipe, model: ResolvedModel) -> list[str]:
        data = recipe.data
        if model.path:
            done = [f"pretrained model {model.path}"]
        else:
            done = [f"{model.config.model_type} model from a config, {data.row_key} {data.row_length}"]
            if recipe.lora.enabled:
                raise ToolkitError("lora.enabled adapts pretrained weights, and a model built from a config has none;"
                                   " set model.name_or_path or lora.enabled=false")
            if data.format != "text" and not recipe.tokenizer.name_or_path:
                raise ToolkitError(f"data.format {data.format} encodes examples with a pretrained tokenizer and its chat"
                                   " template; set model.name_or_path (or data.format=text to pretrain)")
        if recipe.training.get("neftune_noise_alpha") and (data.packing or data.format == "text"):
            # The Trainer scales NEFTune's noise by alpha / sqrt(row length x width): with several
            # examples in a row, each gets the noise of the whole row's length, not its own.
            raise ToolkitError("training.neftune_noise_alpha scales its noise by a row's length, and packed rows hold"
                               " many examples; set data.packing=false for NEFTune, or remove neftune_noise_alpha")
        check_lora(recipe.lora)
        check_data(recipe)
        done.append(f"{len(data.sources)} data source(s) found")
        return done

    def prepare_data(self, recipe: Recipe, model: ResolvedModel) -> PreparedData:
        if recipe.data.format == "text":  # blocks, with the pretrained tokenizer or a new BPE
            return prepare_pretraining_data(recipe, model.spec)
        return prepare_finetuning_data(recipe, model.spec)

    def build_model(self, recipe: Recipe, model: ResolvedModel, data: PreparedData):
        return build_policy(recipe, model, data.tokenizer)

    def build_trainer(self, recipe: Recipe, model, data: PreparedData):
        return build_trainer(recipe, model, data.tokenizer, data.train, data.eval)

    def draw(self, data: PreparedData):
        return samples

    def documents(self, recipe: Recipe) -> tuple[int, int]:
        train, held_out, _ = split_corpus(recipe, recipe.data.format)
        return len(train), len(held_out)

    def sequence_length(self, recipe: Recipe) -> tuple[int, str]:
        return recipe.data.row_length, f"data.{recipe.data.row_key}"

    def plan_model(self, recipe: Recipe) -> PlanModel:
        if recipe.model.name_or_path:
            config, source = local_model_config(recipe.model), recipe.model.name_or_path  # keeps its vocabulary
        else:
            config, source = load_model_config(recipe.model), "from config"
            config.vocab_size = new_vocabulary(recipe)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return PlanModel.from_config(model, config, source)

    def rescore(self, recipe: Recipe, run_dir: Path) -> dict:
        data = self.prepare_data(recipe, ResolvedModel(resolve_pretrained(recipe.model, recipe.data.cache_dir), None))
        tokenizer = AutoTokenizer.from_pretrained(run_dir)
        model = AutoModelForCausalLM.from_pretrained(run_dir)  # an adapter folder loads onto its base
        return build_trainer(recipe, model, tokenizer, data.train, data.eval).evaluate()

    def generate(self, folder: Path, recipe: Recipe | None, prompts: list[str], settings: dict) -> list[str]:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        if settings["top_p"] < 1.0:
            model.generation_config.top_p = settings["top_p"]
        drawn = generate_samples(model, tokenizer, prompts, settings["max_new_tokens"], settings["temperature"],
                                 settings["top_k"], seed=settings["seed"], chat=settings["chat"])
        return [s["completion"] if settings["chat"] else s["prompt"] + s["completion"] for s in drawn]

