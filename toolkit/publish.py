"""Publishing a run: training-curve plots, a model card in the Hub's format, and the push.

Everything here reads the files a run left in its output directory, so `toolkit report`
and `toolkit push` can redo it later for any finished run.
"""

from __future__ import annotations

import fnmatch
import io
import json
import logging
import os
import time
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from transformers import TrainerCallback

from toolkit.errors import ToolkitError, first_line
from toolkit.outputs import FINAL_FILE, PUSHED_FILE, RECIPE_FILE, RESULTS_FILE, read_json, write_atomic, write_json

logger = logging.getLogger("toolkit")

PLOT_FILE = "training_curves.png"
CARD_FILE = "README.md"

# What a pushed repository holds, matched name by name (never across a '/'): the model, its
# tokenizer, the card and the run's record (numbers, no text of the data). Everything else
# stays local: checkpoints, logs, pickles, hidden files, any other folder, and every symlink.
MODEL_FILES = ["*.safetensors", "config.json", "generation_config.json", "adapter_config.json", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt",
               "merges.txt", "*.model", "chat_template.jinja", "chat_template.json"]
RECORD_FILES = ["README.md", RECIPE_FILE, "training_curves.png", FINAL_FILE, RESULTS_FILE, "run_info.json",
                "trainer_state.json"]
# Files that hold text of the data (held-out sources, references, answers): pushed only with
# hub.include_samples: true.
SAMPLE_FILES = ["samples.json", "samples_before.json", "predictions.json", "predictions.jsonl", "data_stats.json"]
PUSHED_FOLDERS = {"merged": MODEL_FILES}  # the LoRA run's merged model


def check_run_dir(folder: Path, finished: bool = True) -> Path:
    """A run folder: finished (its eval_results.json written) or, with finished=False, at least saved
    (model and all_results.json), which is all that a card and a plot need."""
    folder = Path(folder)
    marker = FINAL_FILE if finished else RESULTS_FILE
    if not (folder / RECIPE_FILE).is_file() or not (folder / marker).is_file():
        raise ToolkitError(f"{folder} is no {'finished ' if finished else ''}toolkit run (no {RECIPE_FILE} and"
                           f" {marker} there)")
    read_json(folder, marker)  # a damaged one is refused here, in one line
    return folder


def final_results(results: dict) -> dict:
    """eval_results.json from every result: the scores, before and after, without timings."""
    timings = ("_runtime", "_per_second", "_model_preparation_time")
    return {k: v for k, v in results.items() if "eval_" in k and not k.endswith(timings)}


def complete_run(folder: Path, task) -> None:
    """What a run writes once its model and results are saved: the plot, the card, and last the
    file that marks it finished. A rerun after a failure here (a full disk) does only this."""
    folder = check_run_dir(folder, finished=False)
    plot_training(folder, task)
    write_model_card(folder, task)
    write_json(folder, FINAL_FILE, final_results(read_json(folder, RESULTS_FILE)))


# --------------------------------------------------------------------------- plots


def plot_training(folder: Path, task) -> Path | None:
    """Loss and evaluation loss, the task's held-out scores (its Task.plot_panel) and the learning rate
    against steps, from trainer_state.json."""
    state = read_json(folder, "trainer_state.json")
    if not state or not state.get("log_history"):
        return None
    import matplotlib  # deferred: a second of import time, needed only once a run is done

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    history = state["log_history"]
    panel = task.plot_panel()
    scores = [f"eval_{key}" for key in panel.curves]
    series = {key: [(h["step"], h[key]) for h in history if key in h and "step" in h]
              for key in ("loss", "eval_loss", "learning_rate", *scores)}
    init = read_json(folder, "init_eval_results.json") or {}
    for key in ("eval_loss", *scores):
        if f"init_{key}" in init:
            series[key].insert(0, (0, init[f"init_{key}"]))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    loss_ax, score_ax, lr_ax = axes
    for key, label in (("loss", "training loss"), ("eval_loss", "evaluation loss")):
        if series[key]:
            loss_ax.plot(*zip(*series[key]), marker="." if key == "eval_loss" else None, label=label)
    loss_ax.set(title="Loss (nats per token)", xlabel="step")
    loss_ax.legend()
    drawn = [(key, label) for key, label in zip(scores, panel.curves.values()) if series[key]]
    for key, label in drawn:
        score_ax.plot(*zip(*series[key]), marker="o", label=label)
    if panel.log_scale and drawn:
        score_ax.set_yscale("log")
    score_ax.set(title=panel.title, xlabel="step")
    if len(drawn) > 1:
        score_ax.legend()
    if series["learning_rate"]:
        lr_ax.plot(*zip(*series["learning_rate"]))
    lr_ax.set(title="Learning rate", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    return write_atomic(Path(folder) / PLOT_FILE, png.getvalue())


# --------------------------------------------------------------------------- model card


def write_model_card(folder: Path, task) -> Path:
    """README.md in the Hub's format: metadata (with model-index) and a description of the run.
    `task`: the run's Task, which names its pipeline tag, model-index task and metrics."""
    folder = check_run_dir(folder, finished=False)
    recipe = yaml.safe_load((folder / RECIPE_FILE).read_text(encoding="utf-8"))
    everything = read_json(folder, RESULTS_FILE)
    results = final_results(everything)  # what eval_results.json holds (or will, once the card is written)
    stats = read_json(folder, "data_stats.json") or {}
    info = read_json(folder, "run_info.json") or {}
    samples = read_json(folder, "samples.json") or []
    hub = recipe.get("hub", {})
    model, lora = recipe.get("model", {}), recipe.get("lora", {})
    base = model.get("name_or_path")
    fine_tuned = bool(base)
    name = (hub.get("model_id") or folder.name).split("/")[-1]
    hub_datasets = [s["hub"] for s in recipe["data"]["sources"] if s.get("hub")]

    pipeline_tag, task_type, task_name = task.card(recipe, stats)
    dataset_name = ", ".join(_source_name(s) for s in recipe["data"]["sources"]) + " (held-out split)"
    eval_results = [
        EvalResult(task_type=task_type, task_name=task_name, dataset_type=hub_datasets[0] if hub_datasets else "held-out",
                   dataset_name=dataset_name, metric_type=metric_type, metric_name=metric_name,
                   metric_value=round(results[f"eval_{key}"], 4))
        for key, (metric_type, metric_name) in task.metrics.items() if f"eval_{key}" in results
    ]
    tags = ["toolkit", task_type, "fine-tuned" if fine_tuned else "pretrained-from-scratch"]
    if lora.get("enabled"):
        tags.append("lora")
    data = ModelCardData(
        model_name=name,
        license=hub.get("license", "apache-2.0"),
        language=hub.get("language", ["en"]),
        library_name="peft" if lora.get("enabled") else "transformers",
        tags=tags,
        datasets=hub_datasets or None,
        base_model=base if fine_tuned and _looks_like_hub_id(base) else None,
        pipeline_tag=pipeline_tag,
        eval_results=eval_results or None,
    )
    body = _card_body(name, recipe, task, results, stats, info, everything, samples, folder)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    return write_atomic(folder / CARD_FILE, str(card))


def _source_name(source: dict) -> str:
    if source.get("builtin"):
        return f"built-in corpus {source['builtin']}"
    if source.get("hub"):
        return f"{source['hub']}" + (f" ({source['config']})" if source.get("config") else "")
    files = source.get("files")
    return "local files " + (files if isinstance(files, str) else ", ".join(files))


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not name.endswith(".gguf") and not Path(name).exists()


def _card_body(name, recipe, task, results, stats, info, everything, samples, folder) -> str:
    model, lora, training = recipe["model"], recipe.get("lora", {}), recipe["training"]
    base = model.get("name_or_path")
    what = (f"fine-tuned from `{base}`" + (" with LoRA" if lora.get("enabled") else "") if base
            else f"a {model.get('model_type')} model trained from scratch")
    _, _, task_name = task.card(recipe, stats)
    lines = [f"# {name}", "", f"A model for {task_name.lower()}, {what}, with toolkit, from one YAML recipe.", ""]
    scored = [k for k in task.metrics if f"eval_{k}" in results]
    intro = task.card_intro or (
             "Perplexity on the held-out split: exp(total cross-entropy / predicted tokens)." if scored == ["perplexity"]
             else "On the held-out split: " + ", ".join(task.metrics[k][1] for k in scored) + " (text generated or"
             " extracted by the model, scored by the toolkit's metric modules).")
    lines += ["## Evaluation", "", intro, "", "| | before training | after training |", "|---|---|---|"]
    for key in scored:
        lines.append(f"| {task.metrics[key][1]} | {_fmt(results.get(f'init_eval_{key}'))} | {_fmt(results[f'eval_{key}'])} |")
    if "eval_perplexity" in results:
        lines.append(f"| loss (nats per token) | {_fmt(results.get('init_eval_loss'))} | {_fmt(results.get('eval_loss'))} |")
        lines.append(f"| evaluation tokens | {results.get('init_eval_tokens', '')} | {results.get('eval_tokens', '')} |")
    if results.get("eval_bleu_signature"):  # how BLEU was computed: its tokenizer decides the figure
        lines += ["", f"BLEU signature (sacrebleu): `{results['eval_bleu_signature']}`"]
    lines.append("")
    if (folder / PLOT_FILE).is_file():
        lines += [f"![Training curves]({PLOT_FILE})", ""]

    lines += ["## Data", ""]
    for source in recipe["data"]["sources"]:
        lines.append(f"- {_source_name(source)}, weight {source.get('weight', 1.0)}")
    docs = stats.get("documents", {})
    if docs:
        lines.append(f"- documents: {docs.get('train', 0):,} for training, {docs.get('eval', 0):,} held out")
    if "train_tokens" in stats:
        lines.append(f"- tokens: {stats['train_tokens']:,} for training, {stats.get('eval_tokens', 0):,} held out,"
                     f" in blocks of {stats.get('block_size')}")
    if "train_packing" in stats:
        p = stats["train_packing"]
        lines.append(f"- packing: {p['examples']:,} examples in {p['rows']:,} rows, efficiency {100 * p['efficiency']:.1f}%")
    cleaning = stats.get("cleaning", {})
    if cleaning:
        steps = "; ".join(f"{k.replace('_', ' ')}: " + ", ".join(f"{n:,} {m.replace('_', ' ')}" for m, n in v.items())
                          for k, v in cleaning.items() if isinstance(v, dict))
        lines.append(f"- cleaning ({cleaning.get('documents_in', 0):,} documents in, {cleaning.get('documents_out', 0):,} kept): {steps}")
    lines.append("")

    runtime = everything.get("train_runtime")
    speed = everything.get("train_tokens_per_second")
    lines += ["## Training", "",
              f"- hardware: {info.get('cuda') or 'CPU'} x {info.get('world_size', 1)} ({info.get('platform', '')})",
              f"- parameters: {info.get('parameters', 0):,}"
              + (f", of which trained (LoRA r={lora.get('r')}): {info['trainable_parameters']:,}"
                 if lora.get("enabled") and "trainable_parameters" in info else ""),
              f"- steps: {(read_json(folder, 'trainer_state.json') or {}).get('global_step', '')},"
              f" learning rate {training.get('learning_rate', '')}, optimizer {training.get('optim', 'adamw_torch')}"]
    if runtime:
        lines.append(f"- training time: {runtime:.0f} s" + (f", {speed:,.0f} tokens/s" if speed else ""))
    if everything.get("train_model_flops_per_second"):
        lines.append(f"- model FLOP/s achieved: {everything['train_model_flops_per_second']:.3g} (6N + 12LdT per token)")
    if everything.get("mfu") is not None:
        lines.append(f"- model FLOPs utilisation: {100 * everything['mfu']:.1f}%")
    lines += ["", "The full recipe, as run:", "", "```yaml", yaml.safe_dump(recipe, sort_keys=False).strip(), "```", ""]

    # Samples drawn from the held-out data (seq2seq sources, QA questions) are data text: shown
    # only with hub.include_samples; those written for the recipe's own prompts always.
    own_prompts = set((recipe.get("evaluation") or {}).get("sample_prompts") or [])
    if not (recipe.get("hub") or {}).get("include_samples"):
        samples = [s for s in samples if s.get("prompt") in own_prompts]
    if samples:
        lines += ["## Samples", ""]
        for s in samples[:3]:
            lines.append(f"- **{s['prompt']}** → {json.dumps(s.get('completion', ''))}")
        lines.append("")
    lines += [
        "## Intended uses and limitations", "",
        "A research and teaching artifact: a model of the text it was trained on, for experiments with training"
        " recipes. It is not an assistant to rely on: it states falsehoods fluently, and its perplexity says how well"
        " it predicts held-out text of the same kind, not whether what it writes is true.",
        "",
        "It inherits the biases and gaps of its training data: the topics, dialects and viewpoints that are over- or"
        " under-represented there shape what it writes. Small models trained briefly repeat their data's phrasing"
        " and can reproduce it verbatim.", "",
    ]
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else ""


# --------------------------------------------------------------------------- push


def files_to_push(folder: Path, include_samples: bool | None = None) -> list[str]:
    """The relative paths a push uploads, in order: allowlisted names at the top and in `merged/`.
    `include_samples`: also the files that hold data text; by default as the run's recipe says."""
    folder = Path(folder)
    if include_samples is None:
        recipe = yaml.safe_load((folder / RECIPE_FILE).read_text(encoding="utf-8")) if (folder / RECIPE_FILE).is_file() else {}
        include_samples = bool(((recipe or {}).get("hub") or {}).get("include_samples"))
    allowed = {"": MODEL_FILES + RECORD_FILES + (SAMPLE_FILES if include_samples else []), **PUSHED_FOLDERS}
    out = []
    for sub, patterns in allowed.items():
        where = folder / sub
        if sub and (where.is_symlink() or not where.is_dir()):
            continue
        for entry in sorted(os.scandir(where), key=lambda e: e.name):
            # A symlink could point anywhere (a token file, another folder): never followed.
            if entry.name.startswith(".") or entry.is_symlink() or not entry.is_file(follow_symlinks=False):
                continue
            if any(fnmatch.fnmatchcase(entry.name, p) for p in patterns):
                out.append(f"{sub}/{entry.name}" if sub else entry.name)
    return out


def check_model_id(model_id: str | None) -> str:
    if not model_id:
        raise ToolkitError("no Hub model id: set hub.model_id or pass --repo-id namespace/name")
    if model_id.count("/") != 1 or not all(model_id.split("/")):
        raise ToolkitError(f"Hub model id {model_id!r} is not 'namespace/name'")
    return model_id


def push_folder(folder: Path, model_id: str, private: bool = True, token: str | None = None) -> str:
    """Upload exactly `files_to_push(folder)`; the token comes from the argument, HF_TOKEN or the stored login."""
    check_model_id(model_id)
    api = HfApi(token=token)
    api.create_repo(model_id, private=private, exist_ok=True)
    # Exact paths as patterns ([ and ] escaped): the upload holds this list and nothing else.
    exact = [name.replace("[", "[[]") for name in files_to_push(folder)]
    api.upload_folder(repo_id=model_id, folder_path=str(folder), allow_patterns=exact,
                      commit_message="Upload model trained with toolkit")
    url = f"https://huggingface.co/{model_id}"
    if (Path(folder) / RECIPE_FILE).is_file():  # a run (not a checkpoint): a rerun need not push again
        write_json(folder, PUSHED_FILE, {"model_id": model_id, "url": url, "private": private, "time": time.time()})
    return url


class PushEverySave(TrainerCallback):
    """A Trainer callback for hub.strategy=every_save: each checkpoint's model goes to the Hub.

    A failed upload is logged and training goes on; the final push reports for good.
    """

    def __init__(self, recipe):
        self.recipe = recipe

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        hub = self.recipe.hub
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        try:
            push_folder(checkpoint, hub.model_id, hub.private, hub.token)
        except Exception as err:
            logger.warning("push of %s to %s failed: %s; training goes on", checkpoint.name, hub.model_id, first_line(err))


def pushed(recipe) -> bool:
    """This run's folder was pushed to the recipe's hub.model_id already."""
    record = read_json(recipe.output_dir, PUSHED_FILE) or {}
    return record.get("model_id") == recipe.hub.model_id


def push_run(recipe) -> str:
    """Push a finished run as its recipe says; on failure, say how to push later.

    The model is already saved locally, so a failed push costs nothing but a retry: rerunning
    the recipe pushes again (see toolkit/run.py), as does `toolkit push`.
    """
    hub, folder = recipe.hub, recipe.output_dir
    later = f"toolkit push {folder} --repo-id {hub.model_id}"
    try:
        return push_folder(folder, hub.model_id, hub.private, hub.token)
    except Exception as err:  # no token, no network, no rights: the model stays saved locally
        logger.error("push to %s failed: %s; the model is saved in %s; push it later with: %s",
                     hub.model_id, first_line(err), folder, later)
        return f"push failed (model saved locally); later: {later}"
