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
import hashlib
import json
import os
import tempfile
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from transformers import Trainer, TrainingArguments

from toolkit.evaluation import generate_samples
from toolkit.loss import IGNORE
from toolkit.recipe import Recipe
from toolkit.tasks.preference.data import PairCollator
from toolkit.tasks.preference.loss import PairLogps, pair_loss, preference_metrics
from toolkit.tasks.preference.section import method_settings, reference_mode
from toolkit.training import SafeTraining, finish_setup, trainer_keywords

MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "use_cache")


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


def sequence_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence of the batch: the sum of its completion tokens' log-probs, and their number.

    Only the positions that predict a completion token are projected to the vocabulary (logits_to_keep as a
    mask: a third of the head's work and memory on these pairs); log_softmax runs in float32, and the sums
    are taken in float64, as evaluation.token_nll takes them."""
    targets, sequences = batch["labels"][:, 1:], batch["sequence_ids"][:, 1:]
    scored = targets != IGNORE
    keep = torch.nn.functional.pad(scored, (0, 1), value=False)  # position t predicts token t + 1
    logits = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}, logits_to_keep=keep).logits
    if logits.dim() == 3:  # a model that projects every position
        logits = logits[keep]
    token_logps = logits.float().log_softmax(-1).gather(1, targets[scored].unsqueeze(1)).squeeze(1)
    n = 2 * batch["pair_tokens"].shape[0]
    owner = sequences[scored]
    sums = token_logps.new_zeros(n, dtype=torch.float64).index_add(0, owner, token_logps.double())
    counts = torch.bincount(owner, minlength=n)
    return sums, counts


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


def build_preference_trainer(recipe: Recipe, model, tokenizer, train_dataset, eval_dataset, cache: str | None,
                             reference_model=None) -> PreferenceTrainer:
    """The Trainer, its reference set up (a frozen copy made, or log-probs precomputed and cached)."""
    mode = reference_mode(recipe)
    disable_dropout(model)
    if mode == "model":
        reference_model = reference_model if reference_model is not None else copy.deepcopy(model)
        reference_model.requires_grad_(False).eval()
        disable_dropout(reference_model)
    settings = method_settings(recipe.preference)
    collator = PairCollator(tokenizer.pad_token_id, packed=recipe.data.packing)
    trainer = finish_setup(recipe, PreferenceTrainer(
        model=model, data_collator=collator, train_dataset=train_dataset, eval_dataset=eval_dataset,
        processing_class=tokenizer, compute_metrics=Scores(settings, mode is not None),
        settings=settings, reference=Reference(mode, reference_model),
        **trainer_keywords(recipe, TrainingArguments, remove_unused_columns=False),
    ), recipe.data.max_length)
    if mode == "precomputed":
        # From the initial policy, or the reference given (rescoring a trained model: never the trained weights).
        source = reference_model if reference_model is not None else model
        trainer.train_dataset, trainer.eval_dataset = precomputed(trainer, source, recipe, cache, train_dataset,
                                                                  eval_dataset)
    return trainer


def precomputed(trainer, source, recipe: Recipe, cache: str | None, train, held_out):
    """Both sets with the reference's log-probs (of `source`) as columns: computed once (main process first),
    cached beside the data."""
    folder = Path(cache or os.path.expanduser(recipe.data.cache_dir)) / f"reference-{_reference_key(recipe)}"
    with PartialState().main_process_first():
        if not (folder / "logps.json").is_file():
            _store(folder, {name: _reference_logps(source, trainer, ds) for name, ds in (("train", train), ("eval", held_out))})
        stored = json.loads((folder / "logps.json").read_text())
    out = []
    for name, ds in (("train", train), ("eval", held_out)):
        values = np.asarray(stored[name], dtype=np.float64).reshape(-1, 2)
        if len(values) != len(ds):
            raise RuntimeError(f"cached reference log-probs in {folder} do not match the {name} pairs")
        out.append(ds.add_column("ref_chosen_logps", values[:, 0].tolist())
                     .add_column("ref_rejected_logps", values[:, 1].tolist()))
    return out


def _reference_key(recipe: Recipe) -> str:
    """The reference is the initial policy: the base model's weights (files and times) and its settings."""
    spec = recipe.model
    where = Path(spec.name_or_path)
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime) for p in where.glob("*.safetensors")) \
        if where.is_dir() else []
    key = [spec.name_or_path, spec.revision, spec.config, spec.attn_implementation, files, recipe.data.packing]
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


@torch.no_grad()
def _reference_logps(model, trainer, dataset) -> list[list[float]]:
    """The reference's sums for every pair (a LoRA policy's adapter off), in the Trainer's eval batches."""
    model.to(trainer.args.device)
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=trainer.args.per_device_eval_batch_size,
                                         collate_fn=trainer.data_collator)
    off = model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()
    out = []
    with off:
        for batch in loader:
            batch = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            sums, _ = sequence_logps(model, batch)
            out += torch.stack([sums[0::2], sums[1::2]], dim=1).tolist()
    model.train(was_training)
    return out


def _store(folder: Path, values: dict) -> None:
    """Temp folder, then rename: a killed run never leaves half a cache."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    (tmp / "logps.json").write_text(json.dumps(values))
    os.replace(tmp, folder)


def samples(trainer, recipe: Recipe) -> list[dict]:
    """The recipe's sample prompts answered by the policy (as a user turn with the chat template)."""
    ev = recipe.evaluation
    return generate_samples(trainer.model, trainer.processing_class, ev.sample_prompts, ev.max_new_tokens,
                            ev.temperature, ev.top_k, seed=recipe.training.get("seed", 42),
                            chat=recipe.preference.chat_template)
