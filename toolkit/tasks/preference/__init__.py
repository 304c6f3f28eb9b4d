"""Preference tuning: DPO and its relatives (IPO, hinge, robust DPO) and the reference-free SimPO and ORPO.

recipes/preference.py runs this task. A pair is a prompt and two completions, the chosen and the
rejected; the policy learns to prefer the chosen, against a reference policy (the DPO family) or
on its own (SimPO, ORPO). section.py holds the `preference:` section and its checks, corpus.py a
built-in corpus, examples.py loading and the held-out split, data.py encoding and batches, loss.py
the losses and scores, trainer.py the Trainer and the reference.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM, AutoTokenizer

from toolkit.budget import PlanModel
from toolkit.data.prepare import PreparedData
from toolkit.data.sources import check_source
from toolkit.evaluation import generate_samples
from toolkit.modeling import (
    build_model, build_policy, check_block_size, check_lora, load_model_config, local_model_config, locate_pretrained,
    resolve_pretrained,
)
from toolkit.recipe import Recipe
from toolkit.task import Task
from toolkit.tasks.preference.data import prepare_preference_data
from toolkit.tasks.preference.examples import split_pairs
from toolkit.tasks.preference.section import (
    METHODS,
    Preference,
    check_preference_recipe,
    method_settings,
    reference_mode,
)
from toolkit.tasks.preference.trainer import build_preference_trainer, samples
from toolkit.tokenizer import load_pretrained_tokenizer, pretrained_tokenizer_name


class PreferenceTask(Task):
    name = "preference"
    script = "recipes/preference.py"
    section = Preference
    metrics = {"reward_accuracy": ("accuracy", "Reward accuracy"), "reward_margin": ("reward_margin", "Reward margin"),
               "reward_chosen": ("reward_chosen", "Chosen reward"), "reward_rejected": ("reward_rejected", "Rejected reward"),
               "logps_chosen": ("logps_chosen", "Chosen log-prob"), "logps_rejected": ("logps_rejected", "Rejected log-prob"),
               "logps_accuracy": ("logps_accuracy", "Chosen more likely than rejected")}
    pipeline_tag = "text-generation"
    task_name = "Preference tuning"
    card_intro = ("On held-out pairs whose prompts were never trained on. A completion's reward is the method's"
                  " implicit reward: beta times the policy's log-probability of it minus the reference's (DPO, IPO,"
                  " hinge, robust DPO; every reward is 0 before training, when the policy is the reference), or from"
                  " the policy alone (SimPO, ORPO). Reward accuracy is the share of pairs whose chosen completion has"
                  " the higher reward; the margin is their mean difference.")

    def check(self, recipe: Recipe) -> list[str]:
        check_preference_recipe(recipe)
        check_lora(recipe.lora)
        where = locate_pretrained(recipe.model.name_or_path)
        if Path(where).exists():  # a Hub model's config is read once the run starts
            check_block_size(load_model_config(recipe.model), recipe.data.max_length, "data.max_length")
        for source in recipe.data.sources + recipe.data.eval_sources:
            if not source.builtin:
                check_source(source)
        settings = method_settings(recipe.preference)
        mode = reference_mode(recipe)
        described = ", ".join(f"{k} {v}" for k, v in settings.items() if k != "loss")
        return [f"{METHODS[settings['loss']]} ({described}), reference: {mode or 'none (reference-free)'}",
                f"pretrained policy {where}" + (" with LoRA" if recipe.lora.enabled else ""),
                f"{len(recipe.data.sources)} data source(s) found"]

    def prepare_data(self, recipe: Recipe, state) -> PreparedData:
        with state.main_process_first():  # a GGUF file is converted once, on the main process
            spec = resolve_pretrained(recipe.model, recipe.data.cache_dir)
        return _prepare(recipe, spec)

    def build_model(self, recipe: Recipe, data: PreparedData):
        spec, config = data.extra
        return build_policy(recipe, spec, config, data.tokenizer)

    def build_trainer(self, recipe: Recipe, model, data: PreparedData):
        resolved = dataclasses.replace(recipe, model=data.extra[0])  # precomputed log-probs are keyed by its files
        return build_preference_trainer(resolved, model, data.tokenizer, data.train, data.eval, data.stats.get("cache"))

    def draw(self, data: PreparedData):
        return samples

    def documents(self, recipe: Recipe) -> tuple[int, int]:
        train, held_out, _ = split_pairs(recipe)
        return len(train), len(held_out)

    def sequence_length(self, recipe: Recipe) -> tuple[int, str]:
        return recipe.data.max_length, "data.max_length"  # each of a pair's two sequences

    def plan_model(self, recipe: Recipe) -> PlanModel:
        config = local_model_config(recipe.model)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return PlanModel.from_config(model, config, recipe.model.name_or_path)

    def rescore(self, recipe: Recipe, run_dir: Path) -> dict:
        """The saved policy against the run's reference: its base with the adapter off, or the base model."""
        spec = resolve_pretrained(recipe.model, recipe.data.cache_dir)
        data = _prepare(recipe, spec)
        tokenizer = AutoTokenizer.from_pretrained(run_dir)
        mode, reference = reference_mode(recipe), None
        if recipe.lora.enabled:
            model = AutoPeftModelForCausalLM.from_pretrained(run_dir, dtype=torch.float32)
        else:
            model = AutoModelForCausalLM.from_pretrained(run_dir, dtype=torch.float32)
        if mode == "model" or (mode == "precomputed" and not recipe.lora.enabled):
            reference = build_model(spec, data.extra[1], tokenizer, seed=recipe.training["seed"])
        trainer = build_preference_trainer(dataclasses.replace(recipe, model=spec), model, tokenizer, data.train,
                                           data.eval, data.stats.get("cache"), reference_model=reference)
        return trainer.evaluate()

    def generate(self, folder: Path, recipe: Recipe, prompts: list[str], settings: dict) -> list[str]:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        drawn = generate_samples(model, tokenizer, prompts, settings["max_new_tokens"], settings["temperature"],
                                 settings["top_k"], seed=settings["seed"],
                                 chat=settings["chat"] or recipe.preference.chat_template)
        return [s["completion"] for s in drawn]


def _prepare(recipe: Recipe, spec) -> PreparedData:
    """The pairs encoded with the resolved model's tokenizer (and chat template)."""
    resolved = dataclasses.replace(recipe, model=spec)
    config = load_model_config(spec)
    check_block_size(config, recipe.data.max_length, "data.max_length")
    name, revision = pretrained_tokenizer_name(recipe.tokenizer, spec)
    tokenizer = load_pretrained_tokenizer(name, recipe.tokenizer, recipe.tokenizer.revision or revision)
    data = prepare_preference_data(resolved, tokenizer)
    data.extra = (spec, config)
    return data
