"""The `toolkit` command: check, plan, sample, report, push and launch, reusing the recipes' own stages.

    toolkit validate RECIPE [--data] [key=value ...]
    toolkit plan RECIPE [--gpu NAME] [--num-processes N] [key=value ...]
    toolkit generate MODEL_DIR --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--chat]
    toolkit report RUN_DIR
    toolkit push RUN_DIR --repo-id NAMESPACE/NAME [--public]
    toolkit launch ACCELERATE_CONFIG SCRIPT [recipe arguments ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from toolkit.errors import ToolkitError, exit_on_user_error


def validate(recipe) -> list[str]:
    """Every check the recipes make before their expensive work; returns what was checked."""
    from toolkit.data.prepare import check_data
    from toolkit.modeling import check_block_size, check_lora, load_model_config, locate_pretrained
    from toolkit.outputs import check_output_dir

    done = []
    if recipe.model.name_or_path:
        where = locate_pretrained(recipe.model.name_or_path)
        done.append(f"pretrained model {where}")
        if not where.endswith(".gguf") and Path(where).is_dir():
            config = load_model_config(dataclasses.replace(recipe.model, name_or_path=where))
            check_block_size(config, recipe.data.row_length, f"data.{recipe.data.row_key}")
    else:
        config = load_model_config(recipe.model)
        check_block_size(config, recipe.data.row_length, f"data.{recipe.data.row_key}")
        done.append(f"{config.model_type} model from a config, block_size {recipe.data.block_size}")
    check_lora(recipe.lora)
    check_data(recipe)
    done.append(f"{len(recipe.data.sources)} data source(s) found")
    state = check_output_dir(recipe, lock=False)  # reads only
    done.append("resumes " + state.resume_from if state.resume_from else ("already finished" if state.finished else "new run"))
    return done


def _load(args):
    from toolkit.recipe import load_recipe

    return load_recipe(args.recipe, args.overrides)


def cmd_validate(args) -> None:
    recipe = _load(args)
    checked = validate(recipe)
    if args.data:  # load, clean and split the documents too (no tokenizing): catches data cleaned away
        from toolkit.data.prepare import split_corpus

        train, held_out, _ = split_corpus(recipe, recipe.data.format if recipe.model.name_or_path else "text")
        checked.append(f"{len(train):,} training and {len(held_out):,} held-out documents after cleaning")
    print(f"ok: {args.recipe} is valid ({'; '.join(checked)}); output to {recipe.output_dir}")


def cmd_plan(args) -> None:
    from toolkit.plan import format_plan, plan

    print(format_plan(plan(_load(args), gpu=args.gpu, num_processes=args.num_processes)))


def cmd_generate(args) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolkit.evaluation import generate_samples

    folder = Path(args.model_dir)
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise ToolkitError(f"{folder} holds no model (no config.json or adapter_config.json)")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if args.top_p < 1.0:
        model.generation_config.top_p = args.top_p
    for sample in generate_samples(model, tokenizer, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                                   seed=args.seed, chat=args.chat):
        print(f"{sample['prompt']}{sample['completion']}" if not args.chat else sample["completion"])
        print()


def cmd_report(args) -> None:
    from toolkit.publish import check_run_dir, plot_training, write_model_card

    folder = check_run_dir(Path(args.run_dir))
    plot = plot_training(folder)
    card = write_model_card(folder)
    print(f"card: {card}" + (f"\nplot: {plot}" if plot else ""))


def cmd_push(args) -> None:
    from toolkit.errors import first_line
    from toolkit.publish import check_model_id, check_run_dir, push_folder

    folder = check_run_dir(Path(args.run_dir))
    model_id = check_model_id(args.repo_id)
    try:
        url = push_folder(folder, model_id, private=not args.public)
    except Exception as err:  # no token, no network, no rights
        raise ToolkitError(f"push to {model_id} failed: {first_line(err)} (log in with `hf auth login` or set HF_TOKEN)") from None
    print(f"pushed {folder} to {url}")


def cmd_launch(args) -> None:
    from toolkit.launch import launch

    launch(args.config_file, args.script, args.args)


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
