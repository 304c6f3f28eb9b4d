"""Preference tuning: DPO and its relatives (IPO, hinge, robust DPO) and the reference-free SimPO and ORPO.

recipes/preference.py runs this task. A pair is a prompt and two completions, the chosen and the
rejected; the policy learns to prefer the chosen, against a reference policy (the DPO family) or
on its own (SimPO, ORPO). section.py holds the `preference:` section and its checks, corpus.py a
built-in corpus, examples.py loading and the held-out split, data.py encoding and batches, loss.py
the losses and scores, trainer.py the Trainer and the reference.
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import PartialState
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM, AutoTokenizer

from toolkit.budget import PlanModel
from toolkit.data.sources import check_source
from toolkit.evaluation import generate_samples
from toolkit.modeling import ResolvedModel, build_model, build_policy, check_lora, local_model_config
from toolkit.recipe import Recipe
from toolkit.task import Panel, Task
from toolkit.tasks.preference.data import PreferenceData, prepare_preference_data
from toolkit.tasks.preference.examples import split_pairs
from toolkit.tasks.preference.section import METHODS, Preference, check_preference_recipe, method_settings, reference_mode
from toolkit.tasks.preference.trainer import build_preference_trainer, samples


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
    panel = Panel("Held-out reward margin and accuracy",
                  {"reward_margin": "reward margin", "reward_accuracy": "reward accuracy"})
    card_intro = ("On held-out pairs whose prompts were never trained on. A completion's reward is the method's"
                  " implicit reward: beta times the policy's log-probability of it minus the reference's (DPO, IPO,"
                  " hinge, robust DPO; every reward is 0 before training, when the policy is the reference), or from"
                  " the policy alone (SimPO, ORPO). Reward accuracy is the share of pairs whose chosen completion has"
                  " the higher reward; the margin is their mean difference.")

    def check(self, recipe: Recipe, model: ResolvedModel) -> list[str]:
        check_preference_recipe(recipe)
        check_lora(recipe.lora)
        for source in recipe.data.sources + recipe.data.eval_sources:
            if not source.builtin:
                check_source(source)
        settings = method_settings(recipe.preference)
        mode = reference_mode(recipe)
        described = ", ".join(f"{k} {v}" for k, v in settings.items() if k != "loss")
        return [f"{METHODS[settings['loss']]} ({described}), reference: {mode or 'none (reference-free)'}",
                f"pretrained policy {model.path}" + (" with LoRA" if recipe.lora.enabled else ""),
                f"{len(recipe.data.sources)} data source(s) found"]

    def trainer_arguments(self, recipe: Recipe) -> dict:
        return {"remove_unused_columns": False}  # the collator reads the pairs' own columns

    def prepare_data(self, recipe: Recipe, model: ResolvedModel) -> PreferenceData:
        return prepare_preference_data(recipe, model)

    def build_model(self, recipe: Recipe, model: ResolvedModel, data: PreferenceData):
        return build_policy(recipe, model, data.tokenizer)

    def build_trainer(self, recipe: Recipe, model, data: PreferenceData):
        return build_preference_trainer(recipe, model, data)

    def draw(self, data: PreferenceData):
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
        base = self.locate_model(recipe)
        data = prepare_preference_data(recipe, base.materialized(recipe.data.cache_dir, PartialState()))
        mode, reference = reference_mode(recipe), None
        if recipe.lora.enabled:
            model = AutoPeftModelForCausalLM.from_pretrained(run_dir, dtype=torch.float32)
        else:
            model = AutoModelForCausalLM.from_pretrained(run_dir, dtype=torch.float32)
        data.tokenizer = AutoTokenizer.from_pretrained(run_dir)
        if mode == "model" or (mode == "precomputed" and not recipe.lora.enabled):
            reference = build_model(data.base.spec, data.base.config, data.tokenizer, seed=recipe.seed)
        return build_preference_trainer(recipe, model, data, reference_model=reference).evaluate()

    def generate(self, folder: Path, recipe: Recipe, prompts: list[str], settings: dict) -> list[str]:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        drawn = generate_samples(model, tokenizer, prompts, settings["max_new_tokens"], settings["temperature"],
                                 settings["top_k"], seed=settings["seed"],
                                 chat=settings["chat"] or recipe.preference.chat_template)
        return [s["completion"] for s in drawn]

