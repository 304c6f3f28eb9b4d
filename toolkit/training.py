"""Training with the transformers Trainer: arguments from the recipe, token-weighted evaluation, resume."""

from __future__ import annotations

import logging

import torch
from transformers import EarlyStoppingCallback, Trainer, TrainingArguments
from transformers.integrations import TensorBoardCallback

from toolkit.data.packing import CausalCollator, FlatteningCollator, PackedRowsCollator
from toolkit.evaluation import compute_perplexity, token_nll
from toolkit.hardware import has_accelerator
from toolkit.publish import PushEverySave
from toolkit.recipe import Recipe, training_arguments

logger = logging.getLogger("toolkit")


class CausalLMTrainer(Trainer):
    """A Trainer whose eval_loss is the mean over evaluation tokens.

    Trainer's own eval_loss averages per-batch losses (each repeated by the batch size),
    which over-weights short batches; the metric below sums over tokens instead, and the
    logs, early stopping and best-model choice all see that figure.
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
    args = TrainingArguments(**training_arguments(recipe))
    optimizer = None
    if recipe.training.get("optim") == "adam":
        optimizer = (torch.optim.Adam, {"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon})
    callbacks = []
    if recipe.hub.push and recipe.hub.strategy == "every_save":
        callbacks.append(PushEverySave(recipe))
    if recipe.evaluation.early_stopping_patience:
        callbacks.append(
            EarlyStoppingCallback(recipe.evaluation.early_stopping_patience, recipe.evaluation.early_stopping_threshold)
        )
    packed = "position_ids" in train_dataset.column_names
    trainer = CausalLMTrainer(
        model=model,
        args=args,
        optimizer_cls_and_kwargs=optimizer,
        data_collator=FlatteningCollator() if packed else CausalCollator(tokenizer.pad_token_id),
        eval_data_collator=PackedRowsCollator(tokenizer.pad_token_id) if packed else None,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        compute_metrics=compute_perplexity,
        preprocess_logits_for_metrics=token_nll,
        callbacks=callbacks,
    )
    for callback in trainer.callback_handler.callbacks:
        # TensorBoard opens its writer at the first log; before training (the initial evaluation)
        # it would otherwise write to ./runs in the working directory.
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
            callback.logging_dir = str(recipe.output_dir / "runs")
    return trainer


def init_processes():
    """Start this process's part of the run: GPUs when there are any, else the CPU.

    Without a GPU, a multi-process launch (torchrun, `accelerate launch` with several
    processes) runs data-parallel over gloo, and each process gets its share of the cores.
    """
    from accelerate import PartialState

    state = PartialState(cpu=not has_accelerator())
    use_all_cpu_cores()
    return state


def use_all_cpu_cores() -> None:
    """On a CPU-only machine, give each local process its share of the cores.

    `accelerate launch` without a config file sets OMP_NUM_THREADS=1 when no GPU is
    involved, which halves CPU training speed on a 2-core machine for no gain.
    """
    import os

    if has_accelerator() or torch.get_num_threads() > 1:
        return
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    share = max(1, len(os.sched_getaffinity(0)) // local_processes)
    if share > 1:
        torch.set_num_threads(share)
        logger.info("cpu: using %d threads per process", share)
