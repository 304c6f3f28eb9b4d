"""Preference tuning: the losses against hand computations and TRL, the reference modes, exact log-probs
packed and padded, the pairs' forms and refusals, and two processes against one."""

from __future__ import annotations

import json
import math
import shutil
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import ROOT, run, write_recipe
from toolkit.errors import ToolkitError
from toolkit.modeling import ResolvedModel, apply_lora
from toolkit.recipe import Lora
from toolkit.tasks import load_recipe
from toolkit.tasks.preference.data import PairCollator, PreferenceData, encode_pair, encode_pairs
from toolkit.tasks.preference.examples import normalise
from toolkit.tasks.preference.logps import sequence_logps
from toolkit.tasks.preference.loss import PairLogps, pair_loss
from toolkit.tasks.preference.trainer import build_preference_trainer
from toolkit.tokenizer import ensure_chat_template

PREFERENCE = ROOT / "recipes" / "preference.py"
LOG2 = math.log(2)

# Given log-probs of three pairs: policy and reference sums, completion lengths.
PI_C, PI_R = torch.tensor([-12.0, -30.5, -7.25]), torch.tensor([-14.0, -28.0, -9.5])
REF_C, REF_R = torch.tensor([-13.0, -29.0, -8.0]), torch.tensor([-13.5, -29.5, -8.75])
N_C, N_R = torch.tensor([6, 15, 4]), torch.tensor([7, 12, 5])


def logps(reference: bool = True) -> PairLogps:
    return PairLogps(PI_C, PI_R, N_C, N_R, *((REF_C, REF_R) if reference else (None, None)))


def _sig(x):
    return 1 / (1 + math.exp(-x))


def hand(loss: str, beta: float, eps: float = 0.0, gamma: float = 0.0) -> float:
    """Each method's loss, pair by pair, in plain floats from the formulas of the papers."""
    out = []
    for pc, pr, rc, rr, nc, nr in zip(*(t.tolist() for t in (PI_C, PI_R, REF_C, REF_R, N_C, N_R))):
        h = (pc - rc) - (pr - rr)
        if loss == "sigmoid":
            out.append(-math.log(_sig(beta * h)))
        elif loss == "hinge":
            out.append(max(0.0, 1 - beta * h))
        elif loss == "ipo":
            out.append(((pc - rc) / nc - (pr - rr) / nr - 1 / (2 * beta)) ** 2)
        elif loss == "robust":
            out.append(((1 - eps) * -math.log(_sig(beta * h)) + eps * math.log(_sig(-beta * h))) / (1 - 2 * eps))
        elif loss == "simpo":
            out.append(-math.log(_sig(beta * (pc / nc - pr / nr) - gamma)))
        elif loss == "orpo":
            ac, ar = pc / nc, pr / nr
            odds = (ac - math.log(1 - math.exp(ac))) - (ar - math.log(1 - math.exp(ar)))
            out.append(-beta * math.log(_sig(odds)))
    mean = sum(out) / len(out)
    if loss == "orpo":
        mean += -sum(PI_C.tolist()) / sum(N_C.tolist())  # the SFT term: chosen tokens' mean NLL
    return mean


METHODS = [("sigmoid", {"beta": 0.1}), ("ipo", {"beta": 0.1}), ("hinge", {"beta": 0.1}),
           ("robust", {"beta": 0.1, "label_smoothing": 0.2}), ("simpo", {"beta": 2.0, "simpo_gamma": 0.5}),
           ("orpo", {"beta": 0.1})]


@pytest.mark.parametrize("loss, settings", METHODS, ids=[m for m, _ in METHODS])
def test_each_loss_equals_a_hand_computation(loss, settings):
    value, chosen, rejected = pair_loss(logps(loss not in ("simpo", "orpo")), loss, **settings)
    expected = hand(loss, settings["beta"], settings.get("label_smoothing", 0.0), settings.get("simpo_gamma", 0.0))
    assert float(value) == pytest.approx(expected, abs=1e-6)
    if loss in ("simpo", "orpo"):
        assert torch.allclose(chosen, settings["beta"] * PI_C / N_C)
    else:
        assert torch.allclose(chosen - rejected, settings["beta"] * ((PI_C - REF_C) - (PI_R - REF_R)))


def _trl_dpo(loss: str, beta: float, eps: float = 0.0) -> float:
    """TRL's DPOTrainer._compute_loss itself, on per-token log-probs that sum to the given figures."""
    from trl import DPOTrainer

    width = int(max(N_C.max(), N_R.max())) + 1
    per_token = torch.zeros(6, width - 1, dtype=torch.float64)
    mask = torch.zeros(6, width, dtype=torch.long)
    for row, (total, n) in enumerate(zip(torch.cat([PI_C, PI_R]).tolist(), torch.cat([N_C, N_R]).tolist())):
        per_token[row, :n] = total / n
        mask[row, 1:n + 1] = 1
    outputs = SimpleNamespace(log_probs=per_token, entropy=torch.zeros_like(per_token),
                              mean_logits=torch.zeros_like(per_token), is_top1=torch.zeros_like(per_token, dtype=torch.bool))
    identity = SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x)
    stub = SimpleNamespace(model=SimpleNamespace(training=True), accelerator=identity, aux_loss_enabled=False,
                           ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss],
                           loss_weights=[1.0], beta=beta, label_smoothing=eps, use_weighting=False,
                           _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.ones(6, width, dtype=torch.long), "attention_mask": torch.ones(6, width, dtype=torch.long),
              "completion_mask": mask, "ref_chosen_logps": REF_C.double(), "ref_rejected_logps": REF_R.double()}
    return float(DPOTrainer._compute_loss(stub, lambda **kw: outputs, inputs, return_outputs=False))


def test_each_loss_equals_trls_on_the_same_inputs():
    """trl is in the test extra: TRL's DPOTrainer, CPOTrainer (SimPO) and ORPOTrainer code on the same log-probs."""
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    for loss, settings in METHODS[:4]:
        ours = float(pair_loss(PairLogps(*(t.double() for t in vars(logps()).values())), loss, **settings)[0])
        assert ours == pytest.approx(_trl_dpo(loss, settings["beta"], settings.get("label_smoothing", 0.0)), abs=1e-6), loss
    device = SimpleNamespace(device="cpu")
    simpo = SimpleNamespace(alpha=0.0, beta=2.0, simpo_gamma=0.5, label_smoothing=0.0, loss_type="simpo", accelerator=device)
    trl_simpo = CPOTrainer.cpo_loss(simpo, PI_C.double() / N_C, PI_R.double() / N_R)[0].mean()
    assert float(pair_loss(logps(False), "simpo", beta=2.0, simpo_gamma=0.5)[0]) == pytest.approx(float(trl_simpo), abs=1e-6)
    orpo = SimpleNamespace(beta=0.1, accelerator=device)
    trl_or = ORPOTrainer.odds_ratio_loss(orpo, PI_C / N_C, PI_R / N_R)[0]
    trl_orpo = -PI_C.sum() / N_C.sum() - trl_or.mean()  # TRL: policy_nll_loss - losses.mean()
    assert float(pair_loss(logps(False), "orpo", beta=0.1)[0]) == pytest.approx(float(trl_orpo), abs=1e-6)


def test_orpo_is_finite_where_a_naive_log_one_minus_p_is_not():
    """A completion the model is sure of: average log-prob -1e-9 in float32; log(1 - exp(a)) underflows to -inf."""
    sure = PairLogps(torch.tensor([-1e-9]), torch.tensor([-5.0]), torch.tensor([1]), torch.tensor([1]))
    assert torch.log(1 - torch.exp(torch.tensor(-1e-9))) == -math.inf
    value = pair_loss(sure, "orpo", beta=0.1)[0]
    assert torch.isfinite(value) and float(value) == pytest.approx(1e-9 + 0.1 * -math.log(_sig(
        -1e-9 - math.log(1e-9) - (-5.0 - math.log(1 - math.exp(-5.0))))), rel=1e-4)


# --------------------------------------------------------------------------- pairs and encoding


@pytest.fixture(scope="module")
def tok(tiny_base):
    t = AutoTokenizer.from_pretrained(tiny_base)
    ensure_chat_template(t)
    return t


def test_hub_chat_rows_take_the_shared_turns_as_the_prompt_and_score_the_answer_with_its_eos(tok):
    """ultrafeedback_binarized's form: chosen and rejected repeat the prompt's turn; prompt is a string."""
    user = {"role": "user", "content": "What does len do?"}
    pair = normalise("What does len do?", [user, {"role": "assistant", "content": "Return the number of items."}],
                     [user, {"role": "assistant", "content": "Return the absolute value."}], "row 0", chat=True)
    assert pair["prompt"] == [user] and pair["chosen"] == [{"role": "assistant", "content": "Return the number of items."}]
    prompt, (chosen, rejected), mismatches = encode_pair(pair, tok, chat=True)
    assert mismatches == 0 and chosen[: len(prompt)] == prompt == rejected[: len(prompt)]
    assert tok.decode(chosen[len(prompt):]) == "Return the number of items." + tok.eos_token  # nothing after the EOS
    # Answers only, prompt in its own column (TRL's conversational form): the same pair.
    again = normalise("What does len do?", [{"role": "assistant", "content": "Return the number of items."}],
                      [{"role": "assistant", "content": "Return the absolute value."}], "row 0", chat=True)
    assert again["prompt"] == pair["prompt"] and again["chosen"] == pair["chosen"]



def test_files_in_ultrafeedback_binarized_form_load_unchanged_and_are_held_out_by_prompt(tmp_path, tiny_base):
    """The columns and nesting of HuggingFaceH4/ultrafeedback_binarized (train_prefs), as a local jsonl file."""
    from toolkit.tasks.preference.examples import split_pairs

    rows = []
    for i in range(10):
        q = f"What does function_{i} do?"
        rows.append({"prompt": q, "prompt_id": f"{i:064x}", "score_chosen": 8.0, "score_rejected": 3.0,
                     "chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": f"It does {i}."}],
                     "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": f"It undoes {i}."}],
                     "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": f"It does {i}."}]})
    path = tmp_path / "train_prefs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    raw = {"task": "preference", "model": {"name_or_path": str(tiny_base)},
           "data": {"sources": [{"files": str(path)}], "eval_fraction": 0.2}, "training": {"output_dir": str(tmp_path / "o")}}
    train, held_out, stats = split_pairs(load_recipe(write_recipe(tmp_path, raw)))
    assert (len(train), len(held_out)) == (8, 2) and stats["prompts"] == {"train": 8, "eval": 2}
    assert not {p["key"] for p in train} & {p["key"] for p in held_out}
    first = train[0]
    assert first["prompt"] == [{"role": "user", "content": first["shown"]}]
    assert first["chosen"][0]["role"] == "assistant" and first["chosen"][0]["content"].startswith("It does ")

def test_a_boundary_merged_by_the_tokenizer_is_counted_and_the_completion_taken_by_the_prompts_length(tok):
    pair = normalise("The import stat", "ement binds a name.", "ement is a loop.", "row 0", chat=False)
    prompt, (chosen, _), mismatches = encode_pair(pair, tok, chat=False)
    whole = tok("The import statement binds a name.", add_special_tokens=False)["input_ids"]
    assert chosen == [tok.bos_token_id] + whole + [tok.eos_token_id] if tok.bos_token_id != tok.eos_token_id else True
    assert mismatches >= 1 and chosen[: len(prompt)] != prompt  # "stat" + "ement" merged across the boundary
    _, counts = encode_pairs([pair], tok, chat=False, max_length=64)
    assert counts["prefix_mismatch"] == mismatches


@pytest.mark.parametrize("prompt, chosen, rejected, message", [
    ("Q?", None, "b", "no 'chosen' completion"),
    ("Q?", "a", "", "no 'rejected' completion"),
    ("Q?", "same", "same", "chosen equals rejected ('same')"),
])
def test_bad_pairs_are_refused_in_one_line(prompt, chosen, rejected, message):
    with pytest.raises(ToolkitError, match=message.replace("(", r"\(").replace(")", r"\)")):
        normalise(prompt, chosen, rejected, "pairs.jsonl, row 3", chat=True)


# --------------------------------------------------------------------------- exact log-probs


def _pairs(tok, n: int = 5):
    from toolkit.tasks.preference.corpus import python_docs_preference

    rows = python_docs_preference()
    pairs = [normalise(rows["prompt"][i], rows["chosen"][i], rows["rejected"][i], f"row {i}", chat=True) for i in range(n)]
    return encode_pairs(pairs, tok, chat=True, max_length=128)[0]


@pytest.mark.slow
def test_trainer_logps_equal_a_token_by_token_computation_alone_padded_and_packed(tiny_base, tok):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    data = _pairs(tok)
    rows = [data[i] for i in range(len(data))]
    expected = []
    with torch.no_grad():
        for r in rows:
            for key in ("chosen_input_ids", "rejected_input_ids"):
                ids = torch.tensor(r[key])[None]
                token_logps = model(ids).logits[0, :-1].log_softmax(-1)
                expected.append(sum(float(token_logps[t - 1, ids[0, t]]) for t in range(r["prompt_length"], ids.shape[1])))
        for packed in (True, False):
            sums, counts = sequence_logps(model, PairCollator(tok.pad_token_id, packed=packed)(rows))
            assert sums.tolist() == pytest.approx(expected, abs=1e-5), packed
            assert counts.tolist() == [len(r[k]) - r["prompt_length"] for r in rows for k in ("chosen_input_ids", "rejected_input_ids")]


# --------------------------------------------------------------------------- the reference


def _recipe(tmp_path, tiny_base, **preference):
    tmp_path.mkdir(parents=True, exist_ok=True)
    raw = {"task": "preference", "model": {"name_or_path": str(tiny_base)},
           "data": {"sources": [{"builtin": "python-docs-preference", "limit": 24}], "max_length": 128,
                    "cache_dir": str(tmp_path / "cache")},
           "preference": preference,
           "training": {"output_dir": str(tmp_path / "out"), "max_steps": 3, "per_device_train_batch_size": 4,
                        "per_device_eval_batch_size": 8, "learning_rate": 5e-3, "logging_steps": 1, "report_to": [],
                        "save_strategy": "no", "lr_scheduler_type": "constant", "seed": 0}}
    return load_recipe(write_recipe(tmp_path, raw))


def _trainer(tmp_path, tiny_base, tok, lora: bool = False, **preference):
    recipe = _recipe(tmp_path, tiny_base, **preference)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    if lora:
        model = apply_lora(model, Lora(enabled=True, r=4, alpha=8, dropout=0.1))
    data = _pairs(tok, 16)
    pairs = PreferenceData(data, _pairs(tok, 20).select(range(16, 20)), tok, {"cache": str(tmp_path / "cache")},
                           base=ResolvedModel(recipe.model, None))
    return build_preference_trainer(recipe, model, pairs)


@pytest.mark.slow
@pytest.mark.parametrize("mode, lora", [("model", False), ("adapter", True), ("precomputed", False)])
def test_dpo_starts_at_log_2_with_every_reward_zero_in_each_reference_mode(tmp_path, tiny_base, tok, mode, lora):
    trainer = _trainer(tmp_path, tiny_base, tok, lora=lora, reference=mode)
    trainer.model.train()  # dropout (LoRA's 0.1 included) is off, so training mode changes nothing
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    assert float(trainer.compute_loss(trainer.model, batch).detach()) == pytest.approx(LOG2, abs=1e-6)
    scores = trainer.evaluate()
    assert scores["eval_loss"] == pytest.approx(LOG2, abs=1e-6)
    for key in ("eval_reward_chosen", "eval_reward_rejected", "eval_reward_margin"):
        assert scores[key] == pytest.approx(0.0, abs=1e-6), key


@pytest.mark.slow
def test_precomputed_and_on_the_fly_references_give_the_same_loss_trajectory(tmp_path, tiny_base, tok):
    def losses(mode):
        trainer = _trainer(tmp_path / mode, tiny_base, tok, reference=mode)
        trainer.train()
        return [h["loss"] for h in trainer.state.log_history if "loss" in h]

    frozen, precomputed = losses("model"), losses("precomputed")
    assert len(frozen) == 3 and frozen[0] == pytest.approx(LOG2, abs=1e-4)
    assert frozen[-1] < frozen[0] - 1e-3  # the policy moved from its reference: a recomputed one would stay at log 2
    assert precomputed == pytest.approx(frozen, abs=1e-5)


@pytest.mark.slow
def test_one_optimizer_step_raises_the_margin(tmp_path, tiny_base, tok):
    trainer = _trainer(tmp_path, tiny_base, tok, reference="model")
    trainer.args.max_steps = 1
    before = trainer.evaluate(trainer.train_dataset)["eval_reward_margin"]
    trainer.train()
    after = trainer.evaluate(trainer.train_dataset)["eval_reward_margin"]
    assert before == pytest.approx(0.0, abs=1e-6) and after > 1e-4


# --------------------------------------------------------------------------- the recipe script


def _tiny_run(tmp_path, tiny_base, **extra) -> dict:
    raw = {"task": "preference", "model": {"name_or_path": str(tiny_base)},
           "data": {"sources": [{"builtin": "python-docs-preference", "limit": 40}], "max_length": 128,
                    "eval_fraction": 0.2, "cache_dir": str(tmp_path / "cache")},
           "training": {"output_dir": str(tmp_path / "out"), "max_steps": 4, "per_device_train_batch_size": 4,
                        "per_device_eval_batch_size": 4, "learning_rate": 5e-3, "logging_steps": 1, "report_to": [],
                        "save_strategy": "no", "seed": 0},
           "evaluation": {"sample_prompts": ["What does len do?"], "max_new_tokens": 3}}
    for key, value in extra.items():
        raw.setdefault(key, {}).update(value)
    return raw


def _assert_refused(result, fragment, out):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and lines[-1].startswith("error: ") and fragment in lines[-1], lines[-1:]
    assert not out.exists()


def test_bad_pairs_and_settings_stop_the_script_in_one_line_writing_nothing(tmp_path, tiny_base, recipe_here):
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Q{i}?", "chosen": f"A{i}.", "rejected": f"B{i}."} for i in range(6)]
    for broken, fragment in (({"prompt": "Q?", "chosen": "A."}, "row 6: no 'rejected' completion"),
                             ({"prompt": "Q?", "chosen": "A.", "rejected": "A."}, "row 6: chosen equals rejected")):
        pairs.write_text("\n".join(json.dumps(r) for r in rows + [broken]))
        raw = _tiny_run(tmp_path, tiny_base, data={"sources": [{"files": str(pairs)}]})
        _assert_refused(recipe_here(PREFERENCE, "--config", str(write_recipe(tmp_path, raw))), fragment, tmp_path / "out")
    raw = _tiny_run(tmp_path, tiny_base, preference={"loss": "simpo", "reference": "precomputed"})
    _assert_refused(recipe_here(PREFERENCE, "--config", str(write_recipe(tmp_path, raw))),
                    "preference.reference=precomputed: SimPO (preference.loss=simpo) is reference-free", tmp_path / "out")


def test_prompts_that_leave_no_room_are_dropped_and_counted(tmp_path, tiny_base, tok):
    long = normalise("word " * 200, "yes", "no", "row 0", chat=True)
    short = normalise("Q?", "yes", "no", "row 1", chat=True)
    encoded, counts = encode_pairs([long, short, short], tok, chat=True, max_length=64)
    assert len(encoded) == 2 and counts["dropped_prompt_too_long"] == 1 and counts["pairs"] == 2
    with pytest.raises(ToolkitError, match=r"pair 0 .* leaves no room for a completion in data.max_length=64"):
        encode_pairs([long], tok, chat=True, max_length=64, too_long="error")


@pytest.mark.slow
def test_two_processes_match_one_at_the_same_global_batch(tmp_path, tiny_base, recipe_here):
    """DDP over gloo: per-step losses and held-out scores of 2 x 2 pairs equal 1 x 4 pairs."""
    one = _tiny_run(tmp_path, tiny_base)
    result = recipe_here(PREFERENCE, "--config", str(write_recipe(tmp_path, one, "one.yaml")))
    assert result.returncode == 0, result.stderr[-3000:]
    two = _tiny_run(tmp_path, tiny_base, training={"output_dir": str(tmp_path / "two"), "per_device_train_batch_size": 2,
                                                   "per_device_eval_batch_size": 2})
    launched = run([shutil.which("toolkit") or "toolkit", "launch", str(ROOT / "accelerate_configs" / "cpu_2proc.yaml"),
                    str(PREFERENCE), "--config", str(write_recipe(tmp_path, two, "two.yaml"))])
    assert launched.returncode == 0, launched.stderr[-3000:]

    def read(out, name):
        return json.loads((out / name).read_text())

    assert read(tmp_path / "two", "run_info.json")["world_size"] == 2
    losses = [[h["loss"] for h in read(out, "trainer_state.json")["log_history"] if "loss" in h]
              for out in (tmp_path / "out", tmp_path / "two")]
    assert len(losses[0]) == 4 and losses[1] == pytest.approx(losses[0], rel=1e-4)
    scores = [read(out, "eval_results.json") for out in (tmp_path / "out", tmp_path / "two")]
    for key in ("init_eval_loss", "eval_loss", "eval_reward_accuracy", "eval_reward_margin", "eval_logps_chosen"):
        assert scores[1][key] == pytest.approx(scores[0][key], rel=1e-4, abs=1e-6), key
    assert yaml.safe_load((tmp_path / "out" / "recipe.yaml").read_text())["task"] == "preference"
