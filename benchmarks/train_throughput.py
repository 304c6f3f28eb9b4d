"""Training throughput, side by side, and data preparation against transformers' run_clm example.

    python benchmarks/train_throughput.py --device cpu          # the default recipe's tiny Llama, ~2-3 min on 2 cores
    python benchmarks/train_throughput.py --device cuda         # GPT-2 124M (T=1024) and Llama 360M (T=2048)
    python benchmarks/train_throughput.py --device cpu --quick  # seconds: the test suite's smoke run

Three ways train the same weights on the same packed token ids, with the same batch and
number of steps, all in this one process:
  toolkit  the pretraining path: a Recipe (recipes/pretrain/default.yaml) -> build_trainer
  run_clm  a plain Trainer set up as transformers' run_clm example does: group_texts columns,
           default_data_collator, default TrainingArguments (precision matched)
  bare     a PyTorch loop: AdamW, clipping at the recipe's max_grad_norm, the same schedule;
           on a GPU bf16 autocast, fused AdamW and torch.compile
Warm-up steps are not timed; repeats are interleaved in a rotating order and the median
kept, so that load from other jobs on a shared machine falls on every way alike. Then
the toolkit's tokenize + pack is timed against run_clm's map(tokenize) + map(group_texts)
on the python-docs corpus with the same tokenizer, and so is the tokenizer's call alone
(the ceiling of any packer). The last line printed is one JSON object holding every
figure; comparisons are ratios measured in this run.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; a Hub call would only stall
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset, Features, Sequence, Value  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,  # noqa: E402
    set_seed,
)
from transformers.utils import logging as hf_logging  # noqa: E402

from toolkit.data.packing import count_tokens, pack, tokenize  # noqa: E402
from toolkit.data.sources import python_docs  # noqa: E402
from toolkit.modeling import load_model_config  # noqa: E402
from toolkit.plan import flops_per_token, gpu_in_device_name, measure_cpu_flops  # noqa: E402
from toolkit.recipe import Model, Tokenizer, load_recipe  # noqa: E402
from toolkit.tasks.causal_lm.trainer import build_trainer  # noqa: E402
from toolkit.tokenizer import train_bpe  # noqa: E402
from toolkit.training import decide_checkpointing, finish_trainer  # noqa: E402

DEFAULT_RECIPE = ROOT / "recipes" / "pretrain" / "default.yaml"
WAYS = ("toolkit", "run_clm", "bare")
CLEAN_BELOW_CORES = 0.25  # other processes' load, in cores, under which a timed window counts as clean


@dataclass
class Shape:
    name: str
    model_type: str
    config: dict
    seq_len: int  # T
    batch: int  # rows per step, one process, no accumulation
    warmup: int  # steps run before the clock starts
    steps: int  # timed steps; a multiple of logging_steps (10) keeps the logging share exact
    repeats: int


# The default recipe's model and rows: what `recipes/pretrain.py` trains on a CPU.
CPU_SHAPES = [Shape("llama-default-recipe", "llama",
                    {"hidden_size": 128, "intermediate_size": 344, "num_hidden_layers": 4, "num_attention_heads": 2,
                     "num_key_value_heads": 2, "max_position_embeddings": 1024, "tie_word_embeddings": True},
                    seq_len=256, batch=16, warmup=5, steps=10, repeats=5)]
QUICK_SHAPES = [Shape("llama-tiny", "llama",
                      {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "num_key_value_heads": 2, "max_position_embeddings": 128, "tie_word_embeddings": True},
                      seq_len=64, batch=4, warmup=2, steps=4, repeats=1)]
# The GPT-2 124M and Llama 360M shapes of the field's nanoGPT-style speed runs, on random token ids.
CUDA_SHAPES = [
    Shape("gpt2-124m", "gpt2", {"n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024, "vocab_size": 50257},
          seq_len=1024, batch=16, warmup=10, steps=30, repeats=2),
    Shape("llama-360m", "llama",
          {"hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32, "num_attention_heads": 15,
           "num_key_value_heads": 5, "max_position_embeddings": 2048, "tie_word_embeddings": True, "vocab_size": 49152},
          seq_len=2048, batch=8, warmup=10, steps=30, repeats=2),
]


# --------------------------------------------------------------------------- measuring


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _proc_status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def start_memory(device: str) -> float | None:
    """Free what the previous way left and restart the peak counter; returns memory in use now (MiB).

    On CPU the peak is the resident set's high-water mark (VmHWM), which Linux resets on a
    write of 5 to /proc/self/clear_refs; malloc_trim first hands freed heap pages back, so
    that one way's leftovers do not hide the next one's growth.
    """
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None  # not Linux: no resettable peak, so no per-way figure
    return _proc_status_mib("VmRSS")


def peak_memory(device: str) -> float | None:
    """Peak since start_memory, MiB: allocated tensors on a GPU, the resident set on a CPU."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return _proc_status_mib("VmHWM")


def _machine_busy_seconds() -> float | None:
    """CPU time all processes on this machine have used since boot (/proc/stat), in core-seconds."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Window:
    """A timed stretch of steps, and how much of the machine other processes took meanwhile.

    On a shared machine another job's threads take cores from ours, and a parallel region
    then waits for its slowest thread: a busy neighbour can slow a small model's steps many
    times over. The figure `others` (cores used by other processes) says how clean a window was.
    """

    def __init__(self, device: str):
        self.device = device

    def _snapshot(self):
        sync(self.device)
        own = os.times()
        return time.perf_counter(), _machine_busy_seconds(), own.user + own.system

    def start(self):
        self.begin = self._snapshot()

    def stop(self):
        self.end = self._snapshot()

    @property
    def seconds(self) -> float:
        return self.end[0] - self.begin[0]

    @property
    def others(self) -> float | None:
        if self.begin[1] is None:
            return None
        foreign = (self.end[1] - self.begin[1]) - (self.end[2] - self.begin[2])
        return max(0.0, foreign / self.seconds)


class StepClock(TrainerCallback):
    """Times a Trainer from the end of the last warm-up step to the end of the last step.

    The window holds every per-step cost of the Trainer, the batches' loading and the
    logging of the steps inside it; not the first steps, nor the end of training.
    """

    def __init__(self, warmup: int, window: Window):
        self.warmup, self.window = warmup, window

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self.window.start()
        elif state.global_step == state.max_steps:
            self.window.stop()


# --------------------------------------------------------------------------- data


@dataclass
class Data:
    blocks: torch.Tensor  # [rows, T] token ids, the one source of every way's batches
    toolkit: Dataset  # as toolkit.data.packing.pack leaves them: input_ids only
    run_clm: Dataset  # as run_clm's group_texts leaves them: input_ids, attention_mask, labels


def build_data(blocks: torch.Tensor) -> Data:
    ids = blocks.tolist()
    toolkit = Dataset.from_dict({"input_ids": ids}, features=Features({"input_ids": Sequence(Value("int32"))}))
    run_clm = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids], "labels": ids})
    return Data(blocks, toolkit, run_clm)


def corpus(quick: bool) -> list[str]:
    docs = python_docs()["text"]
    return docs[:300] if quick else docs


def group_texts_the_run_clm_way(ds: Dataset, tokenizer, block_size: int) -> tuple[Dataset, Dataset]:
    """transformers' run_clm preprocessing: batched map(tokenizer), then batched map(group_texts).

    group_texts joins each map batch (1,000 documents) in Python, drops that batch's remainder,
    cuts blocks and copies input_ids into labels; the tokenizer's attention_mask is kept.
    """
    def tokenize_function(batch):
        return tokenizer(batch["text"])

    tokenized = ds.map(tokenize_function, batched=True, remove_columns=ds.column_names)

    def group_texts(batch):
        joined = {key: [t for row in rows for t in row] for key, rows in batch.items()}
        usable = len(joined["input_ids"]) // block_size * block_size
        out = {key: [seq[i:i + block_size] for i in range(0, usable, block_size)] for key, seq in joined.items()}
        out["labels"] = out["input_ids"].copy()
        return out

    return tokenized.map(group_texts, batched=True), tokenized


def prepare_the_toolkit_way(ds: Dataset, tokenizer, block_size: int) -> tuple[Dataset, Dataset]:
    ids = tokenize(ds, tokenizer)
    return pack(ids, block_size)[0], ids


def tokenizer_alone(ds: Dataset, tokenizer, block_size: int) -> None:
    """The Rust tokenizer's own batch call on the same texts, nothing kept: what any
    tokenize + pack pays at least with this tokenizer, so the ratio it would reach bounds ours."""
    tokenizer.backend_tokenizer.encode_batch_fast(ds["text"], add_special_tokens=False)


def bench_data_preparation(texts: list[str], tokenizer, block_size: int, repeats: int) -> dict:
    """Tokens tokenized per second, each way counting the tokens it produced, same text, tokenizer and cores."""
    ds = Dataset.from_dict({"text": texts})  # in memory: map writes no cache files, so no repeat is a cache hit
    ways = {"toolkit": prepare_the_toolkit_way, "run_clm": group_texts_the_run_clm_way,
            "tokenizer_alone": tokenizer_alone}
    seconds = {name: [] for name in ways}
    for r in range(repeats):
        for name in list(ways)[r % len(ways):] + list(ways)[:r % len(ways)]:
            start = time.perf_counter()
            ways[name](ds, tokenizer, block_size)
            seconds[name].append(time.perf_counter() - start)
    # Counted outside the timing; the toolkit's count (its bos/eos included) for the tokenizer alone too.
    tokens = {"toolkit": count_tokens(prepare_the_toolkit_way(ds, tokenizer, block_size)[1]),
              "run_clm": count_tokens(group_texts_the_run_clm_way(ds, tokenizer, block_size)[1])}
    tokens["tokenizer_alone"] = tokens["toolkit"]
    out = {f"{name}_tokens_per_s": statistics.median(tokens[name] / s for s in v) for name, v in seconds.items()}
    out["ratio"] = out["toolkit_tokens_per_s"] / out["run_clm_tokens_per_s"]
    # The most any packer could reach with this tokenizer: the tokenizer's call and nothing else.
    out["tokenizer_alone_ratio"] = out["tokenizer_alone_tokens_per_s"] / out["run_clm_tokens_per_s"]
    out["toolkit_seconds_in_tokenizer"] = statistics.median(seconds["tokenizer_alone"]) / statistics.median(seconds["toolkit"])
    out.update(documents=len(texts), characters=sum(map(len, texts)), repeats=repeats)
    return out


class PeakFlops:
    """The MFU denominator: a known GPU's dense bf16 peak, or this CPU's float32 matmul rate.

    The CPU rate is measured once per repeat and the best kept: measured while another
    job holds a core, it would come out low and the MFU above 100%.
    """

    def __init__(self, device: str):
        self.value, self.source, self.device = None, None, device
        if device == "cuda":
            known = gpu_in_device_name(torch.cuda.get_device_name())
            if known:
                self.value, self.source = known[1]["peak_flops"], f"the {known[0]}'s dense bf16 peak"
        else:
            self.source = "this CPU's float32 matmul rate, best measured in this run"

    def measure(self) -> None:
        if self.device == "cpu":
            self.value = max(self.value or 0.0, measure_cpu_flops.__wrapped__())  # lru_cached: the uncached one

    def __call__(self) -> float | None:
        return self.value


# --------------------------------------------------------------------------- the three ways


def make_model(shape: Shape, vocab_size: int, seed: int = 42):
    """The same initial weights for every way: built as toolkit.modeling.build_model builds from a config."""
    spec = Model(model_type=shape.model_type, config={**shape.config, "vocab_size": vocab_size}, attn_implementation="sdpa")
    set_seed(seed)
    model = AutoModelForCausalLM.from_config(load_model_config(spec), attn_implementation="sdpa", dtype=torch.float32)
    model.config.use_cache = False  # the Trainer turns the KV cache off for training; so does the bare loop
    return model


def train_toolkit(shape: Shape, data: Data, tokenizer, vocab_size: int, device: str, out: str, window: Window) -> None:
    recipe = load_recipe(None, [
        f"training.output_dir={out}", f"training.max_steps={shape.warmup + shape.steps}",
        f"training.per_device_train_batch_size={shape.batch}", f"data.block_size={shape.seq_len}",
        "training.eval_strategy=no", "training.save_strategy=no",  # checkpoints and evaluations are not training steps
    ], default=DEFAULT_RECIPE)
    model = make_model(shape, vocab_size)
    decide_checkpointing(recipe, model, shape.seq_len)  # as toolkit.run.run_recipe readies every Trainer
    trainer = finish_trainer(build_trainer(recipe, model, tokenizer, data.toolkit, data.toolkit.select(range(2))),
                             recipe, shape.seq_len)
    trainer.add_callback(StepClock(shape.warmup, window))
    trainer.train()


def train_run_clm(shape: Shape, data: Data, tokenizer, vocab_size: int, device: str, out: str, window: Window) -> None:
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=shape.batch, max_steps=shape.warmup + shape.steps,
        bf16=device == "cuda",  # the same precision as the other ways (run_clm's --bf16)
        save_strategy="no", use_cpu=device == "cpu",
    )
    trainer = Trainer(model=make_model(shape, vocab_size), args=args, train_dataset=data.run_clm,
                      processing_class=tokenizer, data_collator=default_data_collator)
    trainer.add_callback(StepClock(shape.warmup, window))
    trainer.train()


def train_bare(shape: Shape, data: Data, tokenizer, vocab_size: int, device: str, out: str, window: Window) -> None:
    """nanoGPT's loop on the same model: the recipe's AdamW, schedule and clipping; compiled on a GPU."""
    hp = load_recipe(None, [], default=DEFAULT_RECIPE).training
    lr, warmup_lr, total = hp["learning_rate"], hp["warmup_steps"], shape.warmup + shape.steps
    model = make_model(shape, vocab_size).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": hp["weight_decay"]},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr, fused=device == "cuda")
    forward = torch.compile(model) if device == "cuda" else model
    generator = torch.Generator().manual_seed(42)
    order = torch.cat([torch.randperm(len(data.blocks), generator=generator)
                       for _ in range(math.ceil(total * shape.batch / len(data.blocks)))])
    for step in range(total):
        if step == shape.warmup:
            window.start()
        # Cosine with linear warm-up, as the recipe's lr_scheduler_type: cosine.
        decay = 0.5 * (1 + math.cos(math.pi * (step - warmup_lr) / max(1, total - warmup_lr)))
        ramp = (step + 1) / warmup_lr if step < warmup_lr else decay
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, ramp)
        x = data.blocks[order[step * shape.batch:(step + 1) * shape.batch]].to(device, non_blocking=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = forward(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, hp["max_grad_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 10 == 0:
            loss.item()  # the Trainer reads the loss back at each logging step; so does this loop
    window.stop()
    if device == "cuda":
        torch._dynamo.reset()  # the next repeat's model gets a fresh compile, as in its own run


TRAIN = {"toolkit": train_toolkit, "run_clm": train_run_clm, "bare": train_bare}


def bench_shape(shape: Shape, data: Data, tokenizer, vocab_size: int, device: str, peak_flops) -> dict:
    tokens = shape.steps * shape.batch * shape.seq_len
    runs = {way: [] for way in WAYS}
    for r in range(shape.repeats):
        peak_flops.measure()
        for way in WAYS[r % 3:] + WAYS[:r % 3]:  # each way takes each place in the order in turn
            before = start_memory(device)
            threads = torch.get_num_threads()
            window = Window(device)
            with tempfile.TemporaryDirectory() as out:
                TRAIN[way](shape, data, tokenizer, vocab_size, device, out, window)
            peak = peak_memory(device)
            runs[way].append({"tokens_per_s": tokens / window.seconds, "peak_mib": peak, "others": window.others,
                              "peak_increase_mib": None if peak is None or before is None else peak - before,
                              "threads": threads})
            others = f", other processes {window.others:.2f} cores" if window.others is not None else ""
            print(f"  {shape.name} repeat {r + 1}/{shape.repeats} {way}: {tokens / window.seconds:,.0f} tokens/s{others}",
                  flush=True)
    model = make_model(shape, vocab_size)
    fpt = flops_per_token(model, shape.seq_len)
    del model
    result = {"shape": shape.name, "seq_len": shape.seq_len, "batch": shape.batch, "warmup_steps": shape.warmup,
              "timed_steps": shape.steps, "repeats": shape.repeats, "flops_per_token": fpt, "ways": {}}
    for way, rs in runs.items():
        # A repeat during which other processes took a quarter of a core or more is dropped
        # when cleaner ones exist: such load only ever slows a way down, often many times over.
        clean = [r for r in rs if r["others"] is None or r["others"] < CLEAN_BELOW_CORES] or rs
        rate = statistics.median(r["tokens_per_s"] for r in clean)
        peaks = [r["peak_mib"] for r in rs if r["peak_mib"] is not None]
        increases = [r["peak_increase_mib"] for r in rs if r["peak_increase_mib"] is not None]
        result["ways"][way] = {
            "tokens_per_s": rate,
            "mfu": fpt * rate / peak_flops() if peak_flops() else None,
            "peak_memory_mib": max(peaks) if peaks else None,
            "peak_memory_increase_mib": max(increases) if increases else None,
            "tokens_per_s_repeats": [r["tokens_per_s"] for r in rs],
            "other_processes_cores_repeats": [r["others"] for r in rs],
            "repeats_used": len(clean),
            "threads": rs[0]["threads"],
        }
    ways = result["ways"]
    result["ratios"] = {"toolkit_vs_run_clm": ways["toolkit"]["tokens_per_s"] / ways["run_clm"]["tokens_per_s"],
                        "toolkit_vs_bare": ways["toolkit"]["tokens_per_s"] / ways["bare"]["tokens_per_s"]}
    return result


# --------------------------------------------------------------------------- report


def table(result: dict) -> str:
    head = (f"{result['device']} ({result['precision']}, {result['threads']} threads); MFU against "
            f"{result['peak_flops_source']}: {result['peak_flops'] / 1e9:,.0f} GFLOP/s" if result["peak_flops"]
            else f"{result['device']} ({result['precision']}); MFU: unknown GPU, not computed")
    lines = [head]
    for s in result["shapes"]:
        lines.append(f"\n{s['shape']}: T={s['seq_len']}, batch {s['batch']}, {s['timed_steps']} timed steps after "
                     f"{s['warmup_steps']}, median of the clean repeats of {s['repeats']}")
        lines.append(f"  {'way':<9}{'tokens/s':>12}{'MFU':>8}{'peak MiB':>10}{'(+start)':>10}{'toolkit / way':>15}"
                     f"{'others':>8}{'used':>6}")
        for way, w in s["ways"].items():
            mfu = f"{w['mfu']:.1%}" if w["mfu"] is not None else "-"
            peak = f"{w['peak_memory_mib']:,.0f}" if w["peak_memory_mib"] is not None else "-"
            inc = f"+{w['peak_memory_increase_mib']:,.0f}" if w["peak_memory_increase_mib"] is not None else "-"
            ratio = s["ways"]["toolkit"]["tokens_per_s"] / w["tokens_per_s"]
            busy = [x for x in w["other_processes_cores_repeats"] if x is not None]
            others = f"{statistics.median(busy):.2f}" if busy else "-"
            lines.append(f"  {way:<9}{w['tokens_per_s']:>12,.0f}{mfu:>8}{peak:>10}{inc:>10}{ratio:>14.3f}x{others:>8}"
                         f"{w['repeats_used']:>6}")
        worst = max((x for w in s["ways"].values() for x in w["other_processes_cores_repeats"] if x is not None), default=0)
        if worst > 0.25:
            lines.append(f"  (other processes took up to {worst:.2f} cores during a timed window; 'used' counts the"
                         f" repeats under {CLEAN_BELOW_CORES} cores that the median is taken over)")
    d = result["data_prep"]
    lines.append(f"\ndata preparation, python-docs ({d['documents']:,} documents, {d['characters'] / 1e6:.1f} MB), "
                 f"block {d['block_size']}, median of {d['repeats']}:")
    lines.append(f"  toolkit tokenize+pack {d['toolkit_tokens_per_s']:,.0f} tokens/s, run_clm map(tokenize)+map(group_texts) "
                 f"{d['run_clm_tokens_per_s']:,.0f} tokens/s: {d['ratio']:.2f}x")
    lines.append(f"  the tokenizer's encode_batch_fast alone {d['tokenizer_alone_tokens_per_s']:,.0f} tokens/s: "
                 f"{d['tokenizer_alone_ratio']:.2f}x run_clm, the ceiling of any tokenize + pack with this tokenizer;"
                 f" it is {d['toolkit_seconds_in_tokenizer']:.0%} of the toolkit's time")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="a tiny model and a few steps: a smoke run of seconds")
    parser.add_argument("--repeats", type=int, help="interleaved repeats per way (default: per shape)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU here; use --device cpu")
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()  # both preparation ways would otherwise pay for their bars

    # Data: a byte-level BPE trained on the corpus, as the default recipe trains its own.
    texts = corpus(args.quick)
    tokenizer = train_bpe(iter(texts), Tokenizer(vocab_size=400 if args.quick else 4096), length=len(texts))
    shapes = QUICK_SHAPES if args.quick else CPU_SHAPES if args.device == "cpu" else CUDA_SHAPES

    peak_flops = PeakFlops(args.device)
    result = {"benchmark": "train_throughput", "device": args.device, "quick": args.quick,
              "precision": "bf16" if args.device == "cuda" else "fp32",
              "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "threads": torch.get_num_threads(), "peak_flops": None, "peak_flops_source": peak_flops.source,
              "torch": torch.__version__, "shapes": []}

    for shape in shapes:
        if args.repeats:
            shape.repeats = args.repeats
        if args.device == "cpu":
            # Real text: the toolkit's own tokenize + pack of the corpus, cut to T.
            rows, _ = pack(tokenize(Dataset.from_dict({"text": texts}), tokenizer), shape.seq_len)
            blocks, vocab = torch.tensor(rows["input_ids"], dtype=torch.long), len(tokenizer)
        else:
            vocab = shape.config["vocab_size"]
            rows = shape.batch * (shape.warmup + shape.steps)
            blocks = torch.randint(0, vocab, (rows, shape.seq_len), generator=torch.Generator().manual_seed(0))
        result["shapes"].append(bench_shape(shape, build_data(blocks), tokenizer, vocab, args.device, peak_flops))

    result["peak_flops"] = peak_flops()
    block_size = shapes[0].seq_len
    result["data_prep"] = {"block_size": block_size,
                           **bench_data_preparation(texts, tokenizer, block_size, 1 if args.quick else 5)}
    print(table(result))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
