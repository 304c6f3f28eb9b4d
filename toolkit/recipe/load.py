"""Reading a recipe: the YAML file, `key=value` overrides, the task it names, and every section checked.

A recipe names its task (`task: causal_lm | seq2seq | qa | ...`, causal_lm when left out).
The shared sections (model, tokenizer, data, training, lora, evaluation, hub) are the
dataclasses of sections.py; a task with a section of its own brings its dataclass in the
Task it registers (toolkit/task.py), and only that task's recipes may hold that section.
Validation is complete before data or models are touched: unknown keys get a
did-you-mean, wrong types name the type that was expected, and each message names the file
and line the value came from.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path

import yaml

from toolkit.errors import SECRET_NAME, ToolkitError
from toolkit.recipe.arguments import build_training, check_consistency
from toolkit.recipe.sections import DEFAULT_TASK, Data, Evaluation, Hub, Lora, Model, Recipe, Tokenizer
from toolkit.recipe.types import OriginMap, build_dataclass, dotted, unknown_key

SHARED_SECTIONS = {"model": Model, "tokenizer": Tokenizer, "data": Data, "training": dict, "lora": Lora,
                   "evaluation": Evaluation, "hub": Hub}


def load_recipe(path: str | Path | None, overrides: list[str] = (), default: str | Path | None = None,
                tasks: Mapping | None = None, task: str | None = None) -> Recipe:
    """Read a recipe file (or `default`), apply `key=value` overrides, and validate it all.

    `tasks`: the registry (name -> Task), whose sections the recipe may hold; without it only
    causal-LM recipes load. `task`: the task of the calling script, the default when the file
    names none; a recipe of another task is refused.
    """
    path = Path(path if path is not None else default)
    if not path.is_file():
        raise ToolkitError(f"recipe file not found: {path} (check the path given to --config)")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ToolkitError(f"{path}, line {line}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start});"
                           " re-save the recipe as UTF-8") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ToolkitError(f"{path}{line}: YAML syntax error: {problem}; fix the recipe file") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ToolkitError(f"{path}: a recipe is a mapping of sections (model, data, training, ...)")
    origins = OriginMap(str(path), _key_lines(text))
    for item in overrides:
        _apply_override(raw, item, origins)
    return build_recipe(raw, origins, str(path), tasks, task)


def parse_command_line(argv: list[str]) -> tuple[str | None, list[str]]:
    """`[--config FILE] [section.key=value ...]` -> (config path or None, overrides)."""
    config, overrides = None, []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            raise SystemExit(
                "usage: [--config RECIPE.yaml] [section.key=value ...]\n"
                "  sections: task, model, tokenizer, data, training, lora, evaluation, hub, and the task's own\n"
                "  example:  training.max_steps=100 data.block_size=128"
            )
        if arg == "--config" or arg.startswith("--config="):
            if "=" in arg:
                config = arg.split("=", 1)[1]
            elif args:
                config = args.pop(0)
            else:
                raise ToolkitError("--config needs a recipe file: --config recipes/pretrain/default.yaml")
        elif arg.startswith("-"):
            raise ToolkitError(f"unknown option {arg!r}: the options are --config FILE and section.key=value overrides")
        elif "=" not in arg:
            raise ToolkitError(f"override {arg!r} has no '=': write section.key=value, e.g. training.max_steps=100")
        else:
            overrides.append(arg)
    return config, overrides


def _key_lines(text: str) -> dict[tuple, int]:
    """Map each key path in a YAML document to the 1-based line of its key."""
    lines: dict[tuple, int] = {}

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                path = prefix + (key.value,)
                lines[path] = key.start_mark.line + 1
                walk(value, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[prefix + (i,)] = item.start_mark.line + 1
                walk(item, prefix + (i,))

    try:
        walk(yaml.compose(text), ())
    except yaml.YAMLError:
        pass
    return lines


def _apply_override(raw: dict, item: str, origins: OriginMap) -> None:
    key_text, _, text = item.partition("=")
    # data.sources[0].weight and data.sources.0.weight both address a list item.
    keys = tuple(int(k) if k.isdigit() else k for k in key_text.strip().replace("[", ".").replace("]", "").split("."))
    if (len(keys) < 2 and keys != ("task",)) or not all(str(k) for k in keys):
        hint = ("; a token belongs in HF_TOKEN or `hf auth login`, never on the command line"
                if SECRET_NAME.search(str(keys[-1])) or "hf_" in text else "")
        raise ToolkitError(f"override {item!r}: the key must be section.key, e.g. training.learning_rate=3e-4{hint}")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    for depth, key in enumerate(keys[:-1]):
        if isinstance(node, list) and not isinstance(key, int):
            raise ToolkitError(f"override {item!r}: '{dotted(keys[:depth])}' is a list; address an item by index,"
                               f" e.g. {dotted(keys[:depth])}[0].{key}")
        if isinstance(key, int):
            if not isinstance(node, list) or key >= len(node):
                raise ToolkitError(f"override {item!r}: '{dotted(keys[:depth])}' has no item {key}")
            node = node[key]
        else:
            if not isinstance(node.get(key), (dict, list)):
                node[key] = [] if isinstance(keys[depth + 1], int) else {}
            node = node[key]
    last = keys[-1]
    if isinstance(node, list) and not isinstance(last, int):
        raise ToolkitError(f"override {item!r}: '{dotted(keys[:-1])}' is a list; address an item by index,"
                           f" e.g. {dotted(keys[:-1])}[0].{last}")
    if isinstance(last, int):
        if not isinstance(node, list) or last > len(node):
            raise ToolkitError(f"override {item!r}: '{dotted(keys[:-1])}' has no item {last}")
        node[last:last + 1] = [value]
    else:
        node[last] = value
    origins.overridden.add(keys)


def build_recipe(raw: dict, origins: OriginMap, path: str, tasks: Mapping | None = None,
                 task: str | None = None) -> Recipe:
    tasks = tasks or {DEFAULT_TASK: None}
    name = raw.get("task", task or DEFAULT_TASK)
    if name not in tasks:
        close = difflib.get_close_matches(str(name), list(tasks), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"the tasks are {', '.join(tasks)}"
        raise ToolkitError(f"{origins(('task',))}: unknown task {name!r}; {hint}")
    if task is not None and name != task:
        script = getattr(tasks[name], "script", None)
        raise ToolkitError(f"{origins(('task',))}: this is a {name} recipe and this script trains {task};"
                           f" run it with {script or 'the ' + name + ' script'}")
    own = getattr(tasks[name], "section", None)
    allowed = ["task", *SHARED_SECTIONS] + ([name] if own else [])
    for key in raw:
        if key not in allowed and key in tasks:
            raise ToolkitError(f"{origins((key,))}: a '{key}' section belongs to the {key} task, and this recipe's task"
                               f" is {name}; set task: {key} or remove the section")
        if key not in allowed:
            unknown_key((key,), allowed, origins)
    sections = {}
    for key, cls in SHARED_SECTIONS.items():
        value = raw.get(key) or {}
        sections[key] = build_training(value, origins) if key == "training" else build_dataclass(cls, value, (key,), origins)
    section = build_dataclass(own, raw.get(name) or {}, (name,), origins) if own else None
    recipe = Recipe(task=name, **sections, section=section, path=path)
    check_consistency(recipe, origins, tasks[name])
    return recipe
