"""The seq2seq Trainer: generated text scored (predict_with_generate) with the recipe's metrics."""

from __future__ import annotations

import torch
from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer

from toolkit.data.packing import CausalCollator
from toolkit.loss import IGNORE
from toolkit.outputs import write_jsonl
from toolkit.recipe import Recipe
from toolkit.scoring import GenerationScores
from toolkit.tasks.seq2seq.model import continue_prompts, translate
from toolkit.training import FusedLoss, SafeTraining, fused_loss, is_sharded, trainer_keywords


def sequence_length(recipe: Recipe) -> tuple[int, str]:
    """Tokens a pair takes: source and target (an encoder-decoder's two stacks, or a decoder-only row)."""
    s2s = recipe.seq2seq
    return s2s.max_source_length + s2s.max_target_length, "seq2seq.max_source_length + max_target_length"


class Seq2SeqLMTrainer(SafeTraining, FusedLoss, Seq2SeqTrainer):
    """Seq2SeqTrainer with the toolkit's safeguards; a decoder-only model generates from its prompts.

    A decoder-only row holds prompt and target: its loss is taken on the whole row, and it
    generates from the prompt part alone, the tokens before the first learned label.
    """

    def evaluate(self, *args, metric_key_prefix: str = "eval", **kwargs):
        scores = self.compute_metrics if isinstance(self.compute_metrics, GenerationScores) else None
        if scores is not None:  # its texts are kept by evaluation
            scores.prefix = metric_key_prefix
        metrics = super().evaluate(*args, metric_key_prefix=metric_key_prefix, **kwargs)
        # After the Trainer logged the numbers: the signatures go with the results (eval_results.json, the card).
        signatures = scores.signatures.get(metric_key_prefix, {}) if scores is not None else {}
        return {**metrics, **{f"{metric_key_prefix}_{k}": v for k, v in signatures.items()}}

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        if self.model.config.is_encoder_decoder or prediction_loss_only or not self.args.predict_with_generate:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys, **gen_kwargs)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, inputs).detach()
            labels = inputs["labels"]
            prompts = [row[: int((lab != IGNORE).int().argmax())].tolist()
                       for row, lab in zip(inputs["input_ids"], labels)]
            generated = continue_prompts(self.accelerator.unwrap_model(model), prompts,
                                         self.processing_class.pad_token_id, synced_gpus=is_sharded(self))
        return loss, generated, labels


def build_seq2seq_trainer(recipe: Recipe, model, tokenizer, train_dataset, eval_dataset, compute_metrics):
    """Seq2SeqTrainer scoring generated text (predict_with_generate), with the toolkit's safeguards.

    A decoder-only model is evaluated on whole rows (prompt and target) for its loss, and
    generates from the prompt part alone: the tokens before the first learned label.
    """
    decoder_only = not model.config.is_encoder_decoder
    # Decoder-only rows (prompt, target) are padded on the right whatever the tokenizer's side:
    # its saved tokenizer pads on the left, for batched generation.
    collator = (CausalCollator(tokenizer.pad_token_id) if decoder_only
                else DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=IGNORE))
    generation = {"generation_num_beams": model.generation_config.num_beams}
    if not decoder_only:  # a decoder-only model's length is its prompt plus max_new_tokens, set on the model
        generation["generation_max_length"] = model.generation_config.max_new_tokens + 1  # + the start token
    trainer = Seq2SeqLMTrainer(
        model=model,
        data_collator=collator,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        **trainer_keywords(recipe, **generation),
    )
    if decoder_only:
        trainer.fused_loss = fused_loss(recipe, trainer)
    return trainer


def samples(stats: dict):
    """The Task's draw: the first held-out sources, generated from, beside their references."""

    def draw(trainer, recipe: Recipe) -> list[dict]:
        pairs = stats.get("samples", [])
        outputs = translate(trainer.model, trainer.processing_class, recipe.seq2seq, [p["source"] for p in pairs],
                            synced_gpus=is_sharded(trainer))
        return [{"prompt": p["source"], "completion": out, "reference": p["target"]} for p, out in zip(pairs, outputs)]

    return draw


PREDICTIONS_FILE = "predictions.jsonl"


def write_predictions(trainer, recipe: Recipe) -> None:
    """Every held-out pair with what the model wrote before and after training: rescorable outside the toolkit
    (`sacrebleu` on its reference and prediction fields gives the run's BLEU)."""
    if trainer.is_world_process_zero() and isinstance(trainer.compute_metrics, GenerationScores):
        write_jsonl(recipe.output_dir, PREDICTIONS_FILE, trainer.compute_metrics.rows())
