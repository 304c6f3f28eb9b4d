"""One run of a recipe, for every task: the walk (run_recipe) and its shared stages: the recipe checked,
the model resolved, the Trainer finished, scores before, training, scores after, everything saved."""

from __future__ import annotations

import logging
import platform
import sys
import time
from dataclasses import dataclass

import torch
from peft import AutoPeftModelForCausalLM, AutoPeftModelForSeq2SeqLM
from transformers import TrainerCallback

from toolkit.budget import flops_per_token, gpu_in_device_name
from toolkit.console import setup_logging, summary
from toolkit.data.prepare import PreparedData
from toolkit.distributed import describe, summary_line
from toolkit.modeling import ResolvedModel, count_parameters
from toolkit.outputs import RESULTS_FILE, check_output_dir, read_json, write_json, write_recipe
from toolkit.publish import complete_run, push_run, pushed
from toolkit.recipe import Recipe, load_recipe, parse_command_line
from toolkit.task import Task
from toolkit.throughput import peak_memory_bytes
from toolkit.training import decide_checkpointing, finish_trainer, init_processes

logger = logging.getLogger("toolkit")


@dataclass
class RunStart:
    recipe: Recipe
    task: Task
    state: object  # accelerate's PartialState: which process this is
    resume_from: str | None
    finished: bool
    started: float


def run_recipe(tasks: dict[str, Task], task: str, default_recipe, argv: list[str] | None = None) -> None:
    """One run of a recipe of `task` (from the registry `tasks`), as every recipe script runs it:
    the stages of the README's flow, each handing the next a typed value."""
    # 1. Recipe, checked in full (the task's checks included) before anything expensive; a finished run is
    #    left alone, a saved one only completed.
    run = start_run(argv, default_recipe, tasks, task)
    if run.finished:
        return
    recipe, task = run.recipe, run.task
    located = check_recipe(recipe, task).model

    # 2. The model's weights made loadable, once: a GGUF file converted, a Hub model's config fetched.
    resolved = task.resolve_model(recipe, located, run.state)

    # 3. Data and tokenizer: built by each machine's first process, read from its cache by the others.
    data = task.prepare_data(recipe, resolved)

    # 4. The model, sized to the tokenizer; LoRA on top when the recipe asks.
    model = task.build_model(recipe, resolved, data)

    # 5. The Trainer: the task's, finished by the run (throughput in every log, TensorBoard's folder).
    length, _ = task.sequence_length(recipe)
    decide_checkpointing(recipe, model, length)
    trainer = finish_trainer(task.build_trainer(recipe, model, data), recipe, length)

    # 6. Scores before, training (resumed when a checkpoint is there), scores after.
    results = train_and_evaluate(trainer, recipe, task, data, run.resume_from)

    # 7. The model, results, samples, plot and card saved, "finished" written last; the push when asked.
    finish_run(trainer, recipe, task, data, results, run.started)


@dataclass
class Checked:
    """What checking a recipe found: the model located (its config read), and what was checked, in words."""

    model: ResolvedModel
    done: list[str]


def check_recipe(recipe: Recipe, task: Task) -> Checked:
    """Every check a run makes before its first expensive step, beyond those made when the recipe was loaded;
    `toolkit validate` calls exactly this."""
    model = task.locate_model(recipe)
    return Checked(model, [f"task {recipe.task}", *task.check(recipe, model)])


def start_run(argv: list[str] | None, default_recipe, tasks: dict[str, Task], task: str) -> RunStart:
    """What every run does first: join the processes, read the recipe (of `task`, from the registry `tasks`),
    look at the output folder."""
    started = time.time()
    state = init_processes()
    setup_logging(state.is_main_process)
    config, overrides = parse_command_line(sys.argv[1:] if argv is None else argv)
    recipe = load_recipe(config, overrides, default=default_recipe, tasks=tasks, task=task)
    found = check_output_dir(recipe, lock=state.is_main_process)
    if (found.saved or found.finished) and state.is_main_process:
        _complete(recipe, tasks[task], found.saved)
    return RunStart(recipe, tasks[task], state, found.resume_from, found.finished or found.saved, started)


def _complete(recipe: Recipe, task: Task, saved: bool) -> None:
    """A rerun of a run whose last steps failed (a full disk, the network) does only those:
    the plot, card and finish marker of a saved run, and a push the recipe asked for."""
    out = recipe.output_dir
    if saved:
        complete_run(out, task)
        print(f"[toolkit] run completed: plot, model card and results written in {out}", flush=True)
    if recipe.hub.push and not pushed(recipe):
        print(f"[toolkit] pushing {out} to {recipe.hub.model_id}: {push_run(recipe)}", flush=True)


INIT_EVAL_FILE = "init_eval_results.json"
SAMPLES_BEFORE_FILE = "samples_before.json"


class BeforeTraining(TrainerCallback):
    """Perplexity and samples of the untrained model, taken once training is set up.

    Not with `trainer.evaluate()` before `train()`: that prepares the model for inference,
    and accelerate then never wraps it for training. Under DDP the processes would each
    train on their own half of the batch without syncing gradients (measured: two
    processes parted from one after the first step); FSDP2 refuses a model prepared
    without its optimizer. At `on_train_begin` the model is wrapped and every process is
    here, so a sharded model can evaluate and generate.
    """

    def __init__(self, trainer, recipe: Recipe, draw):
        self.trainer, self.recipe, self.draw, self.metrics = trainer, recipe, draw, None

    def on_train_begin(self, args, state, control, **kwargs):
        started = time.time()
        self.metrics = self.trainer.evaluate(metric_key_prefix="init_eval")
        drawn = self.draw(self.trainer, self.recipe)  # on every process, for the same reason
        if self.trainer.is_world_process_zero():
            write_json(self.recipe.output_dir, SAMPLES_BEFORE_FILE, drawn)
            write_json(self.recipe.output_dir, INIT_EVAL_FILE, self.metrics)
        self.seconds = time.time() - started


def _without(seconds: float, train_metrics: dict) -> dict:
    """Training speed without the time the evaluation before training took inside `train()`."""
    runtime = train_metrics.get("train_runtime")
    if not seconds or not runtime or runtime <= seconds:
        return train_metrics
    out = dict(train_metrics, train_runtime=round(runtime - seconds, 4))
    for key, value in train_metrics.items():
        if key.endswith("_per_second"):
            out[key] = round(value * runtime / (runtime - seconds), 3)
    return out


def train_and_evaluate(trainer, recipe: Recipe, task: Task, data: PreparedData, resume_from: str | None) -> dict:
    """Scores before training, the training itself (resumed when possible), scores after;
    the task's samples (Task.draw) before training too."""
    out = recipe.output_dir
    if trainer.is_world_process_zero():
        write_recipe(recipe)  # first write to the folder: everything before it was checked or prepared
    results, before = {}, None
    if recipe.evaluation.before_training:
        # On resume the initial figure is read back, not measured on the restored weights.
        results = read_json(out, INIT_EVAL_FILE) if resume_from else None
        if results is None and not resume_from:
            before = BeforeTraining(trainer, recipe, task.draw(data))
            trainer.add_callback(before)
    train = trainer.train(resume_from_checkpoint=resume_from)
    results = dict(before.metrics if before else results or {})
    before_scores = {k.removeprefix("init_eval_"): v for k, v in results.items()
                     if k.removeprefix("init_eval_") in task.metrics}
    if before_scores:
        logger.info("before training: %s", ", ".join(f"{k} {v:.4g}" for k, v in before_scores.items()))
    results.update(_without(before.seconds if before else 0.0, train.metrics))
    results.update(trainer.evaluate())
    return results


def utilisation(trainer, length: int, tokens_per_second: float) -> dict:
    """Achieved model FLOP/s, and MFU against the bf16 peak when the GPU is a known one."""
    per_token = flops_per_token(trainer.model, length)
    if per_token is None:
        return {}
    achieved = per_token * tokens_per_second
    out = {"train_model_flops_per_second": round(achieved)}
    known = gpu_in_device_name(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
    if known:
        out["mfu"] = round(achieved / (known[1]["peak_flops"] * trainer.args.world_size), 4)
    return out


def finish_run(trainer, recipe: Recipe, task: Task, data: PreparedData, results: dict, started: float) -> None:
    """Save the model and every result; push when asked; print the summary; end the process group."""
    if trainer.is_fsdp_enabled:
        # Checkpoints stay sharded (fast, each process its part); the model itself is one
        # consolidated file that from_pretrained loads on any number of devices.
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model()  # model (safetensors) and tokenizer, loadable with from_pretrained
    drawn = task.draw(data)(trainer, recipe)  # on every process: a sharded model generates together
    task.finish(trainer, recipe)
    if trainer.is_world_process_zero():
        _write_results(trainer, recipe, task, data.stats, results, drawn, started)
    # The other processes wait for the main one: one that exits while gloo still holds
    # the group open dies with SIGABRT, and the launcher then kills the main process too.
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def fast_path(trainer, recipe: Recipe, data_stats: dict) -> dict:
    """Which speed switches this run had on, decided or defaulted, as the run saw them."""
    args, model = trainer.args, trainer.model
    return {
        "precision": "bf16" if args.bf16 else ("fp16" if args.fp16 else "fp32"),
        "attention": getattr(model.config, "_attn_implementation", None),
        "optimizer": str(getattr(args.optim, "value", args.optim)),
        "torch_compile": bool(args.torch_compile),
        "liger_kernel": bool(getattr(args, "use_liger_kernel", False)),
        "fused_cross_entropy": getattr(trainer, "fused_loss", None) is not None,
        "activation_checkpointing": bool(getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing),
        "padding_free_packing": "train_packing" in data_stats,
        "packed_blocks": "block_size" in data_stats,
        "pretokenized_cache": not recipe.data.streaming,
        "dataloader_workers": args.dataloader_num_workers,
        "pin_memory": bool(args.dataloader_pin_memory),
    }


def _write_results(trainer, recipe: Recipe, task: Task, data_stats: dict, results: dict, after: list[dict],
                   started: float) -> None:
    out = recipe.output_dir
    distributed = describe(trainer)
    trainer.save_state()
    before = read_json(out, SAMPLES_BEFORE_FILE) or [{} for _ in after]
    written = [{"prompt": a["prompt"], "before": b.get("completion"), "completion": a["completion"]}
               for a, b in zip(after, before)]
    if recipe.lora.enabled and recipe.lora.merge:
        # From the saved adapter onto a freshly loaded float base: exact even after QLoRA,
        # whose 4-bit layers would re-quantise a merge; trainer.model is left as it is.
        auto = AutoPeftModelForSeq2SeqLM if trainer.model.config.is_encoder_decoder else AutoPeftModelForCausalLM
        merged = auto.from_pretrained(out, dtype=torch.float32).merge_and_unload()
        merged.save_pretrained(out / "merged")
        trainer.processing_class.save_pretrained(out / "merged")
    results["wall_time_s"] = round(time.time() - started, 1)
    results["global_step"] = trainer.state.global_step
    tokens = getattr(trainer.state, "num_input_tokens_seen", 0) or 0
    if tokens and results.get("train_runtime"):
        results["train_tokens_seen"] = int(tokens)
        results["train_tokens_per_second"] = round(tokens / results["train_runtime"], 1)
        results.update(utilisation(trainer, task.sequence_length(recipe)[0], tokens / results["train_runtime"]))
    write_json(out, "data_stats.json", data_stats)
    write_json(out, "samples.json", written)
    write_json(out, "run_info.json", {
        "parameters": count_parameters(trainer.model),
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "device": str(trainer.args.device),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "world_size": trainer.args.world_size,
        "distributed": distributed,  # what ran: none, DDP, FSDP and its version, the ZeRO stage
        "platform": platform.platform(),
        "torch": torch.__version__,
        "peak_memory_gib": round((peak_memory_bytes() or 0) / 2**30, 3),  # GPU allocated, or host resident set
        "fast_path": fast_path(trainer, recipe, data_stats),
    })
    write_json(out, RESULTS_FILE, results)  # model and every result saved: a rerun only completes the rest
    complete_run(out, task)  # plot, card (after the adapter's own README, which it replaces), then finished
    lines = {"model": out.resolve()}
    for name in task.metrics:  # perplexity for language models; BLEU, chrF, ROUGE, EM, F1 for the tasks
        if f"eval_{name}" in results:
            if f"init_eval_{name}" in results:
                lines[f"{name} before"] = f"{results[f'init_eval_{name}']:.4g}"
            lines[f"{name} after"] = f"{results[f'eval_{name}']:.4g}"
    lines["training steps"] = trainer.state.global_step
    lines["distributed"] = summary_line(distributed)
    lines["wall time"] = f"{results['wall_time_s']:.0f} s"
    if "train_tokens_per_second" in results:
        lines["training tokens/s"] = f"{results['train_tokens_per_second']:,.0f}"
    if "mfu" in results:
        lines["MFU"] = f"{100 * results['mfu']:.1f}%"
    lines["model card"] = out / "README.md"
    for s in written:
        shown = s["prompt"] if len(s["prompt"]) <= 60 else s["prompt"][:57] + "..."
        lines[f"sample {shown!r}"] = repr(s["completion"][:120])
    if recipe.hub.push:
        lines["hub"] = push_run(recipe)
    print("\n[toolkit] run finished\n" + summary(lines), flush=True)
