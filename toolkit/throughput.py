"""Training speed in the logs: tokens/s, MFU and peak memory at every logging step.

The Trainer states a run's speed once, averaged over everything since the start; a run that
slows down halfway (a neighbour on a shared machine, a thermal limit, a data stall) shows up
only here. Figures go through the Trainer's logs, so the console, TensorBoard and
trainer_state.json all get them.
"""

from __future__ import annotations

import resource
import sys
import time

import torch
from transformers import TrainerCallback

from toolkit.budget import flops_per_token, gpu_in_device_name


class ThroughputCallback(TrainerCallback):
    """Adds `tokens_per_second`, `mfu` and `peak_memory_gib` to each training log.

    Tokens per second cover the steps since the previous log, all processes together, with
    the time spent evaluating or saving left out. MFU (as PaLM defines it: `flops_per_token` times
    tokens per second per device, over the chip's dense bf16 peak) appears only when the peak
    is known. Tokens are `state.num_input_tokens_seen` (the toolkit turns
    include_num_input_tokens_seen on); without it, steps x global batch x `sequence_length`.
    Add it with `add_throughput_callback`: the reporting callbacks read the logs in order,
    so this one must come before them.
    """

    def __init__(self, flops_per_token: int | None = None, peak_flops: float | None = None,
                 sequence_length: int | None = None):
        self.flops_per_token, self.peak_flops, self.sequence_length = flops_per_token, peak_flops, sequence_length
        self._restart(0, 0)

    def _restart(self, tokens: int, step: int) -> None:
        self._start = self._mark = time.perf_counter()
        self._paused, self._tokens, self._step = 0.0, tokens, step

    def on_train_begin(self, args, state, control, **kwargs):
        reset_peak_memory()
        self._restart(state.num_input_tokens_seen, state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self._mark = time.perf_counter()

    def _pause(self):
        # Evaluation and saving run after a step ends (and after its log): their time is not training.
        now = time.perf_counter()
        self._paused += now - self._mark
        self._mark = now

    def on_evaluate(self, args, state, control, **kwargs):
        self._pause()

    def on_save(self, args, state, control, **kwargs):
        self._pause()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:  # evaluation logs and the end-of-training summary
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the steps queued on the GPU belong to this interval
        elapsed = time.perf_counter() - self._start - self._paused
        tokens = state.num_input_tokens_seen - self._tokens
        if tokens <= 0 and self.sequence_length:
            tokens = (state.global_step - self._step) * args.train_batch_size * args.gradient_accumulation_steps \
                * args.world_size * self.sequence_length
        figures = {}
        if tokens > 0 and elapsed > 0:
            figures["tokens_per_second"] = round(tokens / elapsed, 1)
            if self.flops_per_token and self.peak_flops:
                per_device = tokens / elapsed / max(1, args.world_size)
                figures["mfu"] = round(self.flops_per_token * per_device / self.peak_flops, 4)
        peak = peak_memory_bytes()
        if peak is not None:
            figures["peak_memory_gib"] = round(peak / 2**30, 3)
        logs.update(figures)
        # Trainer.log copied the logs into the history before calling the callbacks.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(figures)
        self._restart(state.num_input_tokens_seen, state.global_step)


def add_throughput_callback(trainer, sequence_length: int) -> ThroughputCallback:
    """Attach a ThroughputCallback sized to the trainer's model, ahead of the reporting callbacks."""
    known = gpu_in_device_name(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
    callback = ThroughputCallback(flops_per_token(trainer.model, sequence_length),
                                  known[1]["peak_flops"] if known else None, sequence_length)
    # Right after DefaultFlowCallback: TensorBoard, the console printer and the others see its figures.
    trainer.callback_handler.callbacks.insert(1, callback)
    return callback


def reset_peak_memory() -> None:
    """Restart the peak: the GPU allocator's counter, or on Linux the process's resident high-water mark."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size (Linux)
    except OSError:
        pass


def peak_memory_bytes() -> int | None:
    """Peak since reset_peak_memory: allocated GPU memory, or the CPU process's resident set."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # since the process started; not resettable
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux
