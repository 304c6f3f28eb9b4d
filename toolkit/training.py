"""The training core every task's Trainer shares: arguments from the recipe, the safety mixin
(complete checkpoints, NaN stop), the fused loss, callbacks, and the processes of a run."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from torch.utils.data import SequentialSampler
from transformers import EarlyStoppingCallback
from transformers.integrations import TensorBoardCallback
from transformers.trainer_utils import rotate_checkpoints

from toolkit.budget import checkpointing_needed, checkpointing_setting, meta_causal_lm
from toolkit.distributed import check_launch
from toolkit.errors import ToolkitError
from toolkit.hardware import has_accelerator
from toolkit.loss import FusedCausalLMLoss, check_fused_loss_exact, fused_loss_wanted
from toolkit.modeling import is_decoder_only
from toolkit.outputs import last_complete_checkpoint, mark_complete
from toolkit.publish import PushEverySave
from toolkit.recipe import Recipe
from toolkit.throughput import add_throughput_callback

logger = logging.getLogger("toolkit")


# How often (in optimizer steps) the loss and gradient norm are checked for NaN or inf
# between logs, evaluations and saves, which always check: each check waits for the GPU.
FINITE_CHECK_STEPS = 8


class SafeTraining:
    """What every toolkit Trainer does on top of transformers' (mixed in before the Trainer class).

    - A checkpoint is marked complete once every process has written its part, and only
      then are older ones rotated away: a save cut short never costs the last good one.
    - A loss or gradient norm that becomes NaN or infinite stops the run within
      FINITE_CHECK_STEPS steps, and before any checkpoint of the diverged weights.
    """

    _finite = None  # on the device: all losses and gradient norms since the last check were finite
    _last_loss = None

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._note_finite(loss)
        self._last_loss = loss
        return loss

    def _track_num_input_tokens(self, inputs):
        """Tokens trained, for tokens/s: the Trainer's "non_padding" count compares ids with the pad
        id, which drops every trained end-of-turn token where pad = EOS (SmolLM2: <|im_end|>). Padding
        is known from the attention mask instead; batches without one (packed, padding-free rows;
        pretraining blocks) have no padding at all."""
        if self.args.include_num_input_tokens_seen != "non_padding" or "input_ids" not in inputs:
            return super()._track_num_input_tokens(inputs)
        mask = inputs.get("attention_mask")
        count = mask.sum() if mask is not None else inputs["input_ids"].numel()
        count = torch.as_tensor(count, device=self.args.device, dtype=torch.int64)
        self.state.num_input_tokens_seen += self.accelerator.gather(count).sum().item()

    def _note_finite(self, value) -> None:
        ok = torch.isfinite(torch.as_tensor(value, device=self.args.device)).all()
        self._finite = ok if self._finite is None else self._finite & ok

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, *args, **kwargs):
        if grad_norm is not None:
            self._note_finite(grad_norm)
        due = self.control.should_log or self.control.should_save or self.control.should_evaluate
        if due or self.state.global_step % FINITE_CHECK_STEPS == 0:
            self._stop_if_diverged()
        return super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, **kwargs)

    def _stop_if_diverged(self, model=None) -> None:
        what = None
        if self._finite is not None and not bool(self._finite):
            last = float(self._last_loss) if self._last_loss is not None else float("nan")
            what = f"the loss or gradient norm became NaN or infinite (last loss {last:g})"
        elif model is not None and not bool(torch.stack([torch.isfinite(_local(p)).all() for p in model.parameters()]).all()):
            what = "the weights became NaN or infinite"
        if what is None:
            return
        good = last_complete_checkpoint(Path(self.args.output_dir))
        kept = f"the last good checkpoint, {good}, is kept" if good else "no checkpoint was written before it"
        precision = "; or train in bf16 or fp32 instead of fp16" if self.args.fp16 else ""
        raise ToolkitError(
            f"training stopped at step {self.state.global_step}: {what}; {kept}."
            f" Lower training.learning_rate (now {self.args.learning_rate:g}) or set training.max_grad_norm{precision},"
            " then train into a new training.output_dir"
        )

    def _get_eval_sampler(self, eval_dataset):
        """Held-out rows in their own order, always. Trainer's group_by_length also regroups evaluation,
        and the scores that line predictions up with their examples (QA's windows, seq2seq's sources in
        predictions.jsonl) would pair them with the wrong ones. (A private hook: no public one chooses it.)"""
        if eval_dataset is None or self.args.world_size > 1:
            return None  # several processes: accelerate shards the rows in order, as Trainer itself does
        return SequentialSampler(eval_dataset)

    def _save_checkpoint(self, model, trial):
        self._stop_if_diverged(model)  # never a checkpoint of NaN weights
        # Rotation waits until the new checkpoint is complete (see the class docstring).
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # every process's shards are on disk
        if self.args.should_save:
            run_dir = self._get_output_dir(trial=trial)
            mark_complete(Path(run_dir) / f"checkpoint-{self.state.global_step}")
            rotate_checkpoints(output_dir=run_dir, save_total_limit=limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)


class FusedLoss:
    """A causal LM's training loss taken by toolkit/loss.py when `fused_loss` is set (see fused_loss)."""

    fused_loss = None  # a FusedCausalLMLoss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.fused_loss is None or return_outputs or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # The model's own forward (DDP, compile) with one position's logits and its hidden
        # states; Trainer.compute_loss passes them to compute_loss_func, for this call only.
        self.compute_loss_func = self.fused_loss
        try:
            return super().compute_loss(model, {**inputs, "output_hidden_states": True, "logits_to_keep": 1},
                                        False, num_items_in_batch)
        finally:
            self.compute_loss_func = None


def _local(tensor):
    """A sharded (FSDP2) parameter's own shard; any other tensor as it is."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def decide_checkpointing(recipe: Recipe, model, length: int) -> None:
    """training.activation_checkpointing=auto (the default) made true or false in the run's arguments, the same
    way for every causal LM (pretraining, fine-tuning, preference, a decoder-only seq2seq model): on only when
    the plan's estimate of a step of `length`-token rows without it would not fit the GPU (toolkit/plan.py).

    Off on a CPU, whose memory is the host's, under FSDP or DeepSpeed, where each GPU holds a shard the
    estimate does not model (FSDP has its own switch in the accelerate config, fsdp_activation_checkpointing),
    and for other models (encoder-decoders, span heads). Decided before the Trainer exists: DDP's wrapping
    depends on it.
    """
    if checkpointing_setting(recipe) != "auto":
        return
    args, on = recipe.arguments, False
    sharded = (parse_flag_from_env("ACCELERATE_USE_FSDP") or parse_flag_from_env("ACCELERATE_USE_DEEPSPEED")
               or args.fsdp or args.deepspeed)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a LoRA wrapper too
    if is_decoder_only(base.config.model_type) and not sharded and torch.cuda.is_available():
        config = copy.deepcopy(model.config)
        config.__dict__.pop("quantization_config", None)  # counted as QLoRA from the recipe, not quantized again
        memory = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        on, needed = checkpointing_needed(meta_causal_lm(config), recipe, length, bool(args.bf16 or args.fp16), memory)
        if on:
            logger.info("activation checkpointing on (training.activation_checkpointing=auto): a step without it"
                        " needs about %.1f GiB of this GPU's %.1f GiB", needed / 2**30, memory / 2**30)
    args.activation_checkpointing = args.gradient_checkpointing = on  # the second: the old name mirrors the new


def is_sharded(trainer) -> bool:
    """Whether each process holds only a shard of the weights (FSDP, DeepSpeed)."""
    return trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled


def fused_loss(recipe: Recipe, trainer) -> FusedCausalLMLoss | None:
    """model.fused_cross_entropy decided: true (checked to be exact), false, or auto (by vocabulary size).

    Under auto, any reason against it keeps the plain loss (None); under true, it stops the run in one line.
    In a bf16 or fp16 run the loss's matmuls take that dtype.
    """
    setting, args = recipe.model.fused_cross_entropy, trainer.args
    head = trainer.model.get_output_embeddings()
    if not fused_loss_wanted(setting, head.weight.shape[0] if head is not None else 0):
        return None
    try:
        if is_sharded(trainer):  # the weight is sharded again before the loss
            raise ToolkitError("model.fused_cross_entropy=true does not work with FSDP or DeepSpeed yet")
        if hasattr(head, "lora_A") or hasattr(head, "base_layer"):  # the loss would read the frozen base weight only
            raise ToolkitError("model.fused_cross_entropy=true cannot train a LoRA adapter on the output layer;"
                               " leave lm_head out of lora.target_modules")
        if args.label_smoothing_factor:
            raise ToolkitError("model.fused_cross_entropy=true does not smooth labels;"
                               " set training.label_smoothing_factor=0")
        check_fused_loss_exact(trainer.model)
    except ToolkitError as err:
        if setting == "auto":
            return None
        raise ToolkitError(f"{err}; set model.fused_cross_entropy=auto (the plain loss where it cannot be used)"
                           " or false") from None
    return FusedCausalLMLoss(trainer.model, torch.bfloat16 if args.bf16 else (torch.float16 if args.fp16 else None))


def trainer_keywords(recipe: Recipe, **fields) -> dict:
    """Trainer keywords every task shares: the run's arguments (built once, when the recipe was checked;
    `fields` set on this Trainer's copy, for values that depend on the model), optimizer, callbacks."""
    args = copy.copy(recipe.arguments)
    for key, value in fields.items():
        setattr(args, key, value)
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
    common = {"args": args, "callbacks": callbacks}
    if optimizer:  # Seq2SeqTrainer's signature lacks the keyword
        common["optimizer_cls_and_kwargs"] = optimizer
    return common


def finish_trainer(trainer, recipe: Recipe, sequence_length: int):
    """What the run adds to every task's Trainer: tokens/s, MFU and peak memory in every log (rows of
    `sequence_length` tokens), and TensorBoard's folder inside the run's."""
    add_throughput_callback(trainer, sequence_length)
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
    check_launch()  # FSDP or DeepSpeed asked for where accelerate would not apply it: one line, before any work
    state = PartialState(cpu=not has_accelerator())
    use_all_cpu_cores()
    return state


def use_all_cpu_cores() -> None:
    """On a CPU-only machine, give each local process its share of the cores.

    `accelerate launch` without a config file sets OMP_NUM_THREADS=1 when no GPU is
    involved, which halves CPU training speed on a 2-core machine for no gain.
    """
    if has_accelerator() or torch.get_num_threads() > 1:
        return
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    share = max(1, len(os.sched_getaffinity(0)) // local_processes)
    if share > 1:
        torch.set_num_threads(share)
        logger.info("cpu: using %d threads per process", share)
