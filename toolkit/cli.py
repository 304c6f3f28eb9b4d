"""The `toolkit` command: check, plan, sample, report, push and launch, through the recipe's task.

    toolkit validate RECIPE [--data] [key=value ...]
    toolkit plan RECIPE [--gpu NAME] [--num-processes N] [key=value ...]
    toolkit generate MODEL_DIR --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--chat]
    toolkit report RUN_DIR
    toolkit push RUN_DIR --repo-id NAMESPACE/NAME [--public]
    toolkit launch ACCELERATE_CONFIG [--machine_rank R ...] SCRIPT [recipe arguments ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from toolkit.errors import ToolkitError, exit_on_user_error, first_line
from toolkit.launch import LAUNCH_OPTIONS, launch
from toolkit.outputs import RECIPE_FILE, check_output_dir
from toolkit.plan import format_plan, plan
from toolkit.publish import check_model_id, check_run_dir, plot_training, push_folder, write_model_card
from toolkit.recipe import DEFAULT_TASK
from toolkit.run import check_recipe
from toolkit.tasks import TASKS, load_recipe


def validate(recipe) -> list[str]:
    """Every check the recipe's script makes before its expensive work (toolkit.run.check_recipe, as the
    run calls it); returns what was checked."""
    done = check_recipe(recipe, TASKS[recipe.task]).done
    state = check_output_dir(recipe, lock=False)  # reads only
    done.append("resumes " + state.resume_from if state.resume_from else "already finished" if state.finished
                else "model and results saved; a rerun writes the plot and card" if state.saved else "new run")
    return done


def _load(args):
    return load_recipe(args.recipe, args.overrides)


def cmd_validate(args) -> None:
    recipe = _load(args)
    checked = validate(recipe)
    if args.data:  # load, clean and split the data too (no tokenizing): catches data cleaned away
        train, held_out = TASKS[recipe.task].documents(recipe)
        checked.append(f"{train:,} training and {held_out:,} held-out examples after cleaning")
    print(f"ok: {args.recipe} is valid ({'; '.join(checked)}); output to {recipe.output_dir}")


def cmd_plan(args) -> None:
    recipe = _load(args)
    print(format_plan(plan(recipe, TASKS[recipe.task], gpu=args.gpu, num_processes=args.num_processes)))


def _run_task(folder: Path):
    """The task of a saved run (its recipe.yaml), or causal_lm for a model folder without one (e.g. merged/)."""
    if (folder / RECIPE_FILE).is_file():
        recipe = load_recipe(folder / RECIPE_FILE, ["training.report_to=[]"])
        return TASKS[recipe.task], recipe
    return TASKS[DEFAULT_TASK], None


def cmd_generate(args) -> None:
    folder = Path(args.model_dir)
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise ToolkitError(f"{folder} holds no model (no config.json or adapter_config.json)")
    task, recipe = _run_task(folder)
    settings = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_k": args.top_k,
                "top_p": args.top_p, "seed": args.seed, "chat": args.chat}
    for text in task.generate(folder, recipe, args.prompt, settings):
        print(text)
        print()


def cmd_report(args) -> None:
    folder = check_run_dir(Path(args.run_dir))
    task, _ = _run_task(folder)
    plot = plot_training(folder, task)
    card = write_model_card(folder, task)
    print(f"card: {card}" + (f"\nplot: {plot}" if plot else ""))


def cmd_push(args) -> None:
    folder = check_run_dir(Path(args.run_dir))
    model_id = check_model_id(args.repo_id)
    try:
        url = push_folder(folder, model_id, private=not args.public)
    except Exception as err:  # no token, no network, no rights
        raise ToolkitError(f"push to {model_id} failed: {first_line(err)} (log in with `hf auth login` or set HF_TOKEN)") from None
    print(f"pushed {folder} to {url}")


def cmd_launch(args) -> None:
    launch(args.config_file, args.script, args.args, {key: getattr(args, key) for key in LAUNCH_OPTIONS})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="toolkit", description="Check, plan, sample, report and push toolkit runs.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, helptext in (("validate", "check a recipe fully, doing no work"),
                           ("plan", "parameters, FLOPs, memory and time a recipe needs")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("recipe")
        s.add_argument("overrides", nargs="*", help="section.key=value")
        if name == "validate":
            s.add_argument("--data", action="store_true", help="also load, clean and split the data (no tokenizing)")
        if name == "plan":
            s.add_argument("--gpu", help="a GPU name (H200, H100, A100, ...); default: this machine's CPU")
            s.add_argument("--num-processes", type=int, default=1)
    g = sub.add_parser("generate", help="sample from a saved model")
    g.add_argument("model_dir")
    g.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    g.add_argument("--top-k", type=int, default=50)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--chat", action="store_true", help="render each prompt as a user message with the chat template")
    r = sub.add_parser("report", help="rebuild the plots and model card of a finished run")
    r.add_argument("run_dir")
    u = sub.add_parser("push", help="push a finished run to the Hugging Face Hub")
    u.add_argument("run_dir")
    u.add_argument("--repo-id", help="namespace/name")
    u.add_argument("--public", action="store_true", help="a public repository (default: private)")
    la = sub.add_parser("launch", help="accelerate launch, with the accelerate config checked first")
    la.add_argument("config_file", help="an accelerate config, e.g. accelerate_configs/multi_gpu.yaml")
    for key, kind in LAUNCH_OPTIONS.items():  # before SCRIPT; each overrides the config's key
        la.add_argument(f"--{key}", type=kind, help=f"accelerate launch --{key}")
    la.add_argument("script", help="e.g. recipes/pretrain.py")
    la.add_argument("args", nargs=argparse.REMAINDER, help="the script's own arguments")
    return p


COMMANDS = {"validate": cmd_validate, "plan": cmd_plan, "generate": cmd_generate, "report": cmd_report, "push": cmd_push,
            "launch": cmd_launch}


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    p = parser()
    # argparse ends a positional list at the first option, so the overrides in
    # `toolkit plan r.yaml --gpu H200 data.block_size=512` would come back unrecognized.
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    if rest and hasattr(args, "overrides") and all("=" in item and not item.startswith("-") for item in rest):
        args.overrides += rest
    elif rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    COMMANDS[args.command](args)


if __name__ == "__main__":
    main()
