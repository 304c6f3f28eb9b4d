"""The preference Trainer: log-probs of chosen and rejected completions, the reference, the losses, the scores.

The reference policy, one of three (section.py, `preference.reference`):
- adapter: the policy's own base with its LoRA adapter disabled, no second copy in memory;
- model: a frozen copy of the initial weights (full fine-tuning);
- precomputed: the reference's log-probs computed once, before training, and cached beside the data;
  a resumed run reads them back, never recomputes them with the weights it has trained since.
Dropout is off in policy and reference alike: with it on, the policy at its initial weights would
not equal its reference, and DPO would not start at log 2.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from transformers import Trainer

from toolkit.evaluation import generate_samples
from toolkit.recipe import Recipe
from toolkit.tasks.preference.data import PairCollator, PreferenceData
from toolkit.tasks.preference.logps import sequence_logps
from toolkit.tasks.preference.loss import PairLogps, pair_loss, preference_metrics
from toolkit.tasks.preference.reference import precompute_reference
from toolkit.tasks.preference.section import method_settings, reference_mode
from toolkit.training import SafeTraining, trainer_keywords


def disable_dropout(model) -> None:
    """Every dropout off: nn.Dropout modules (LoRA's included) and attention dropout held as a float."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    config = getattr(model, "config", None)
    for key in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "attn_pdrop", "embd_pdrop"):
        if isinstance(getattr(config, key, None), float):
            setattr(config, key, 0.0)


class Reference:
    """The reference's log-probs for a batch: from a frozen model, the policy with its adapter off, or the data."""

    def __init__(self, mode: str | None, model=None):
        self.mode, self.model = mode, model

    def logps(self, policy, batch: dict) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.mode is None:
            return None, None
        if self.mode == "precomputed":
            ref = batch["ref_logps"]
            return ref[:, 0], ref[:, 1]
        with torch.no_grad():
            if self.mode == "adapter":
                with policy.disable_adapter():
                    sums, _ = sequence_logps(policy, batch)
            else:
                sums, _ = sequence_logps(self.model.to(batch["input_ids"].device), batch)
        return sums[0::2], sums[1::2]


class PreferenceTrainer(SafeTraining, Trainer):
    """Trainer with the preference loss; evaluation gathers per-pair sums and scores them once, over all pairs."""

    def __init__(self, *args, settings: dict, reference: Reference, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings, self.reference = settings, reference
        self.model_accepts_loss_kwargs = False  # the loss is a mean over pairs: Trainer scales it for accumulation

    def pair_logps(self, model, inputs: dict) -> PairLogps:
        sums, counts = sequence_logps(model, inputs)
        ref_c, ref_r = self.reference.logps(self.accelerator.unwrap_model(model), inputs)
        return PairLogps(sums[0::2], sums[1::2], counts[0::2], counts[1::2], ref_c, ref_r)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logps = self.pair_logps(model, inputs)
        loss, _, _ = pair_loss(logps, **self.settings)
        return (loss, {"pair_logps": logps.stacked()}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            logps = self.pair_logps(model, inputs)
            loss, _, _ = pair_loss(logps, **self.settings)
        stats = logps.stacked().detach()
        return loss.detach(), stats, torch.zeros(len(stats), device=stats.device)

    def evaluation_loop(self, *args, metric_key_prefix: str = "eval", **kwargs):
        output = super().evaluation_loop(*args, metric_key_prefix=metric_key_prefix, **kwargs)
        pair = output.metrics.pop(f"{metric_key_prefix}_preference_loss", None)
        if pair is not None:  # the objective over all held-out pairs, not a mean of batch means
            output.metrics[f"{metric_key_prefix}_loss"] = pair
        return output


class Scores:
    """compute_metrics: the gathered per-pair sums scored (loss, reward accuracy, rewards, margin, log-probs)."""

    def __init__(self, settings: dict, with_reference: bool):
        self.settings, self.with_reference = settings, with_reference

    def __call__(self, eval_pred) -> dict:
        stats = torch.as_tensor(np.asarray(eval_pred.predictions, dtype=np.float64)).reshape(-1, 6)
        return preference_metrics(PairLogps.from_stacked(stats, self.with_reference), self.settings)


def build_preference_trainer(recipe: Recipe, model, data: PreferenceData, reference_model=None) -> PreferenceTrainer:
    """The Trainer, its reference set up (a frozen copy made, or log-probs precomputed and cached)."""
    mode = reference_mode(recipe)
    disable_dropout(model)
    if mode == "model":
        reference_model = reference_model if reference_model is not None else copy.deepcopy(model)
        reference_model.requires_grad_(False).eval()
        disable_dropout(reference_model)
    settings = method_settings(recipe.preference)
    collator = PairCollator(data.tokenizer.pad_token_id, packed=recipe.data.packing)
    trainer = PreferenceTrainer(
        model=model, data_collator=collator, train_dataset=data.train, eval_dataset=data.eval,
        processing_class=data.tokenizer, compute_metrics=Scores(settings, mode is not None),
        settings=settings, reference=Reference(mode, reference_model), **trainer_keywords(recipe),
    )
    if mode == "precomputed":
        # From the initial policy, or the reference given (rescoring a trained model: never the trained weights).
        source = reference_model if reference_model is not None else model
        trainer.train_dataset, trainer.eval_dataset = precompute_reference(
            trainer, source, data.base, data.stats.get("cache"), recipe.data.cache_dir, recipe.data.wait_timeout,
            recipe.data.packing, data.train, data.eval)
    return trainer


def samples(trainer, recipe: Recipe) -> list[dict]:
    """The recipe's sample prompts answered by the policy (as a user turn with the chat template)."""
    ev = recipe.evaluation
    return generate_samples(trainer.model, trainer.processing_class, ev.sample_prompts, ev.max_new_tokens,
                            ev.temperature, ev.top_k, seed=recipe.seed,
                            chat=recipe.preference.chat_template)
