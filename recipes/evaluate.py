"""Score predictions against references, or a saved model on text; write eval_results.json.

    python recipes/evaluate.py --predictions hyp.txt --references ref.txt [ref2.txt ...] \\
        [--metrics bleu chrf rouge squad] --output_dir DIR
    python recipes/evaluate.py --model MODEL_DIR --data python-docs|FILE [--limit N] --output_dir DIR
    python recipes/evaluate.py --run RUN_DIR --output_dir DIR

`--run` scores a finished run's saved model again on its recipe's held-out data with its
recipe's metrics (perplexity; BLEU and chrF or ROUGE; exact match and F1). Files hold one example per line;
`--references refs.jsonl` may hold a list of references
per line instead, and several `--references` files are parallel references, as with the
`sacrebleu` command line. Each mode is a small function over `toolkit/scoring.py`.
"""

import argparse
import sys
from pathlib import Path

# The checkout's root in place of recipes/ on the path: the toolkit imports without installing,
# and recipes/evaluate.py cannot shadow the `evaluate` library.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from toolkit import metrics, scoring  # noqa: E402
from toolkit.console import summary  # noqa: E402
from toolkit.errors import ToolkitError, exit_on_user_error  # noqa: E402
from toolkit.outputs import check_not_a_run  # noqa: E402
from toolkit.tasks import rescore_run  # noqa: E402


class Arguments(argparse.ArgumentParser):
    def error(self, message):  # one `error:` line and exit 2, like every other user error
        raise ToolkitError(f"{message} (see python recipes/evaluate.py --help)")


def parse_args(argv):
    p = Arguments(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", required=True, help="where eval_results.json is written")
    texts = p.add_argument_group("predictions against references")
    texts.add_argument("--predictions", help="one prediction per line (.txt), one JSON string per line (.jsonl),"
                       " or a seq2seq run's predictions.jsonl (its references inside)")
    texts.add_argument("--references", nargs="+", action="extend", default=[],
                       help="one reference per line; several files (or a .jsonl of lists) for several references")
    texts.add_argument("--metrics", nargs="+", default=list(metrics.TEXT_METRICS), help="bleu chrf rouge squad")
    texts.add_argument("--target_lang", help="the texts' language, as sacrebleu's -l target: zh, ja, ko tokenize"
                       " BLEU (and ROUGE, SQuAD) their own way; default: 13a and English rules")
    texts.add_argument("--field", default="prediction", help="predictions.jsonl: prediction or prediction_before")
    model = p.add_argument_group("a causal language model on text")
    model.add_argument("--model", help="a model folder, Hub id, package:NAME/path or .gguf file")
    model.add_argument("--data", help="a built-in corpus (python-docs) or data files (txt, jsonl, json, csv, parquet)")
    model.add_argument("--text_column", default="text")
    model.add_argument("--limit", type=int, help="score at most this many documents")
    model.add_argument("--block_size", type=int, help="tokens per row (default: the model's positions, at most 1024)")
    model.add_argument("--batch_size", type=int, default=8)
    p.add_argument_group("a finished run, as its recipe scores it").add_argument(
        "--run", help="an output folder of recipes/pretrain.py, finetune.py, seq2seq.py or qa.py")
    args = p.parse_args(argv)
    if sum(map(bool, (args.predictions, args.model, args.run))) != 1:
        raise ToolkitError("give one of: --predictions with --references, --model with --data, or --run")
    if args.predictions and not args.references and not args.predictions.endswith(".jsonl"):
        raise ToolkitError("--predictions needs --references (or is a seq2seq run's predictions.jsonl)")
    if args.model and not args.data:
        raise ToolkitError("--model needs --data: a built-in corpus name or data files")
    check_not_a_run(Path(args.output_dir).expanduser())  # a run's, a model's or an unwritable folder: refused
    for name in args.metrics:
        metrics.path(name)  # an unknown name stops here, with a did-you-mean
        if args.predictions and name not in metrics.TEXT_METRICS:
            raise ToolkitError(f"--metrics {name} scores a model, not texts; for texts use {', '.join(metrics.TEXT_METRICS)}")
    return args


def score_texts(args) -> dict:
    if args.references:
        predictions, references = scoring.read_pairs(args.predictions, args.references)
    else:
        predictions, references = scoring.read_prediction_rows(args.predictions, args.field)
    scores = scoring.score_texts(predictions, references, args.metrics, args.target_lang)
    return {**scores, "samples": len(predictions)}


def score_run(args) -> dict:
    scores = rescore_run(args.run)
    return {k.removeprefix("eval_"): v for k, v in scores.items()
            if k.startswith("eval_") and not k.endswith(("_runtime", "_per_second", "_model_preparation_time"))}


def score_causal_lm(args) -> dict:
    source = scoring.data_source(args.data, args.text_column, args.limit)
    model, tokenizer, block_size = scoring.load_causal_lm(args.model, str(Path(args.output_dir) / "cache"), args.block_size)
    texts = scoring.load_texts(source)
    return scoring.model_perplexity(model, tokenizer, texts, block_size, args.batch_size)


@exit_on_user_error
def main(argv=None):
    # 1. Arguments, metric names and the mode: checked before any file, model or metric is loaded.
    args = parse_args(argv)
    score = score_texts if args.predictions else score_causal_lm if args.model else score_run

    # 2. Score.
    results = score(args)

    # 3. Save and report.
    path = scoring.write_results(args.output_dir, results)
    numbers = {k: f"{v:.4f}" if isinstance(v, float) else v for k, v in results.items() if not isinstance(v, list)}
    print(summary({**numbers, "written to": path}))


if __name__ == "__main__":
    main()
