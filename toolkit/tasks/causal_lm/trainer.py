"""The causal-LM Trainer: token-weighted evaluation, packed rows, the fused loss; and its samples."""

from __future__ import annotations

from transformers import Trainer

from toolkit.data.packing import CausalCollator, FlatteningCollator, PackedRowsCollator
from toolkit.evaluation import compute_perplexity, generate_samples, token_nll
from toolkit.recipe import Recipe
from toolkit.training import FusedLoss, SafeTraining, fused_loss, trainer_keywords


class CausalLMTrainer(SafeTraining, FusedLoss, Trainer):
    """The causal-LM Trainer: eval_loss is the mean over evaluation tokens.

    Trainer's own eval_loss averages per-batch losses (each repeated by the batch size),
    which over-weights short batches; the logs, early stopping and best-model choice all
    see the token mean instead.
    """

    def __init__(self, *args, eval_data_collator=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator

    def get_eval_dataloader(self, eval_dataset=None):
        """Evaluation may batch differently from training (packed rows kept apart, see packing.py)."""
        if self.eval_data_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def evaluation_loop(self, *args, metric_key_prefix: str = "eval", **kwargs):
        output = super().evaluation_loop(*args, metric_key_prefix=metric_key_prefix, **kwargs)
        token_loss = output.metrics.pop(f"{metric_key_prefix}_token_loss", None)
        if token_loss is not None:
            output.metrics[f"{metric_key_prefix}_loss"] = token_loss
        return output


def build_trainer(recipe: Recipe, model, tokenizer, train_dataset, eval_dataset) -> CausalLMTrainer:
    packed = "position_ids" in (getattr(train_dataset, "column_names", None) or [])  # a stream has none
    trainer = CausalLMTrainer(
        model=model,
        data_collator=FlatteningCollator() if packed else CausalCollator(tokenizer.pad_token_id),
        eval_data_collator=PackedRowsCollator(tokenizer.pad_token_id) if packed else None,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        compute_metrics=compute_perplexity,
        preprocess_logits_for_metrics=token_nll,
        **trainer_keywords(recipe),
    )
    trainer.fused_loss = fused_loss(recipe, trainer)
    return trainer


def samples(trainer, recipe: Recipe) -> list[dict]:
    """The recipe's sample prompts, continued by the model (as chat turns for a chat recipe)."""
    ev = recipe.evaluation
    return generate_samples(
        trainer.model, trainer.processing_class, ev.sample_prompts, ev.max_new_tokens, ev.temperature, ev.top_k,
        seed=recipe.seed, chat=recipe.data.format == "chat",
    )
