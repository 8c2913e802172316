"""core.train.dpo on a tiny random Llama and a word-level tokenizer built here: no network, seconds."""

from __future__ import annotations

import copy
import json
import math
import threading
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from core.errors import Cancelled
from core.progress import Progress
from core.train.dpo import (
    DPOConfig,
    DPOStep,
    build_examples,
    dpo_loss,
    sequence_logps,
    train_dpo,
)
from core.train.lora import LoRALinear

SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>", "<user>", "<assistant>", "<end>"]
# fmt: off
WORDS = [
    "the", "a", "is", "was", "cat", "dog", "bird", "fish", "tree", "sky",
    "sun", "moon", "tell", "me", "about", "what", "say", "something", "good", "bad",
    "ok", "fine", "nice", "so", "very", "it", "this", "that", "answer",
]
# fmt: on
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} <end> {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


@dataclass(frozen=True)
class ToyPair:
    prompt: tuple[dict, ...]
    chosen: str
    rejected: str


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A tiny model gains nothing from threads, and on a busy 2-core box torch's spinning
    OpenMP workers make these tests ~50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over SPECIAL + WORDS with a chat template: one token per word."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL + WORDS)}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def toy_pairs() -> list[ToyPair]:
    """Chosen replies always say "good"; rejected ones never do."""
    subjects = ["cat", "dog", "bird", "fish", "tree", "sky", "sun", "moon"]
    bad = ["bad", "ok", "fine", "bad"]
    return [
        ToyPair(
            prompt=({"role": "user", "content": f"tell me about the {s}"},),
            chosen=f"the {s} is good",
            rejected=f"the {s} is {bad[i % len(bad)]}",
        )
        for i, s in enumerate(subjects)
    ]


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def pair_margins(model, tokenizer, pairs, cfg) -> torch.Tensor:
    """log pi(chosen) - log pi(rejected) per pair, (pairs,)."""
    from core.train.dpo import collate

    examples = build_examples(tokenizer, pairs, cfg)
    with torch.inference_mode():
        logps = sequence_logps(model, *collate(examples, tokenizer.pad_token_id, "cpu"))
    return logps[: len(pairs)] - logps[len(pairs) :]


# -- 1. the loss -----------------------------------------------------------------------------------


def test_dpo_loss_is_log2_when_policy_equals_reference():
    logps = torch.tensor([-3.0, -7.5, -1.2])
    loss, chosen, rejected = dpo_loss(logps, logps - 1, logps, logps - 1, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    assert torch.all(chosen == 0) and torch.all(rejected == 0)


def test_dpo_loss_values_and_gradient_signs():
    beta = 0.5
    pc = torch.tensor([-1.0, -2.0], requires_grad=True)
    pr = torch.tensor([-3.0, -1.5], requires_grad=True)
    rc, rr = torch.tensor([-1.5, -2.0]), torch.tensor([-2.0, -2.0])
    loss, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta)

    # margins: (0.5 - -1.0) = 1.5 and (0.0 - 0.5) = -0.5
    margins = [1.5, -0.5]
    # -log sigmoid(x) = log(1 + e^-x)
    expected = sum(math.log1p(math.exp(-beta * m)) for m in margins) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert torch.allclose(chosen, torch.tensor([0.25, 0.0]))
    assert torch.allclose(rejected, torch.tensor([-0.5, 0.25]))
    assert not chosen.requires_grad and not rejected.requires_grad

    loss.backward()
    # |d loss / d logp| = beta * sigmoid(-beta * margin) / n
    analytic = torch.tensor([beta / (1 + math.exp(beta * m)) / 2 for m in margins])
    assert torch.all(pc.grad < 0) and torch.all(pr.grad > 0)
    assert torch.allclose(pc.grad, -analytic) and torch.allclose(pr.grad, analytic)


# -- 2. tokenization and sequence log-probs --------------------------------------------------------


def test_build_examples_masks_the_reply_and_truncates_prompt_then_reply(tokenizer):
    pair = ToyPair(
        ({"role": "user", "content": "tell me about the cat"},), "the cat is good", "bad"
    )
    (ex,) = build_examples(tokenizer, [pair], DPOConfig())
    prompt = tokenizer.convert_tokens_to_ids(
        ["<bos>", "<user>", "tell", "me", "about", "the", "cat", "<end>", "<assistant>"]
    )
    chosen = tokenizer.convert_tokens_to_ids(["the", "cat", "is", "good", "<eos>"])
    assert ex["prompt_length"] == len(prompt)
    assert ex["chosen_input_ids"] == prompt + chosen
    assert ex["chosen_labels_mask"] == [0] * len(prompt) + [1] * len(chosen)
    assert ex["rejected_input_ids"] == prompt + tokenizer.convert_tokens_to_ids(["bad", "<eos>"])

    (short,) = build_examples(tokenizer, [pair], DPOConfig(max_length=7, max_prompt_length=4))
    # the prompt keeps its end, the reply its start
    assert short["chosen_input_ids"] == prompt[-4:] + chosen[:3]
    assert short["chosen_labels_mask"] == [0] * 4 + [1] * 3
    assert short["rejected_input_ids"] == prompt[-4:] + tokenizer.convert_tokens_to_ids(
        ["bad", "<eos>"]
    )


def test_sequence_logps_sums_reply_tokens_only(tokenizer):
    model = tiny_llama(len(tokenizer))
    rows = [[1, 4, 10, 11, 12, 6, 5, 20, 21, 2], [1, 4, 13, 6, 5, 22, 2]]
    prompt_lengths = [7, 5]
    width = max(map(len, rows))
    input_ids = torch.zeros(2, width, dtype=torch.long)  # (batch, tokens), right-padded with <pad>
    attention_mask = torch.zeros(2, width, dtype=torch.long)
    labels_mask = torch.zeros(2, width, dtype=torch.bool)
    for i, (row, p) in enumerate(zip(rows, prompt_lengths)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        labels_mask[i, p : len(row)] = True

    with torch.inference_mode():
        got = sequence_logps(model, input_ids, attention_mask, labels_mask)  # (batch,)
        for i, (row, p) in enumerate(zip(rows, prompt_lengths)):
            ids = torch.tensor([row])
            logp = F.log_softmax(model(ids).logits[0].float(), -1)  # (tokens, vocab), unpadded
            reply = sum(logp[t - 1, row[t]].item() for t in range(p, len(row)))
            everything = sum(logp[t - 1, row[t]].item() for t in range(1, len(row)))
            assert got[i].item() == pytest.approx(reply, abs=1e-4)
            assert got[i].item() != pytest.approx(everything, abs=1e-2)  # prompt really left out


# -- 3. training -----------------------------------------------------------------------------------


def test_training_prefers_chosen_and_leaves_reference_alone(tokenizer, tmp_path):
    pairs = toy_pairs()
    cfg = DPOConfig(beta=0.5, lr=1e-3, epochs=12, batch_size=4, save_every=100)
    model = tiny_llama(len(tokenizer))
    initial = copy.deepcopy(model)
    ref = copy.deepcopy(model)
    ref_before = state(ref)
    margins_before = pair_margins(model, tokenizer, pairs, cfg)

    reports = []
    out = train_dpo(model, tokenizer, pairs, tmp_path, cfg, ref_model=ref, progress=reports.append)
    seen = logged_steps(tmp_path)

    assert out == tmp_path / "model"
    assert [s.step for s in seen] == list(range(1, 25)) and all(s.total_steps == 24 for s in seen)
    trains = [p for p in reports if p.stage == "train"]
    assert [p.done for p in trains] == list(range(1, 25)) and all(p.total == 24 for p in trains)
    assert [p.metrics["loss"] for p in trains] == [s.loss for s in seen]
    assert reports[0].stage == "reference" and reports[0].unit == "pairs"
    losses = [s.loss for s in seen]
    assert seen[0].loss == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at step 0
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert sum(losses[-5:]) / 5 < math.log(2)
    accuracies = [s.reward_accuracy for s in seen]
    assert sum(accuracies[-5:]) / 5 > sum(accuracies[:5]) / 5
    assert seen[-1].reward_accuracy == 1.0 and seen[-1].reward_margin > 0
    assert seen[-1].chosen_reward > seen[-1].rejected_reward

    assert (pair_margins(model, tokenizer, pairs, cfg) > margins_before).all()
    after = state(ref)
    assert all(torch.equal(ref_before[k], after[k]) for k in ref_before)  # bit-identical reference

    # The stored reference log-probs are the initial policy's.
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "reference_logps.safetensors")
    assert torch.allclose(saved["chosen"] - saved["rejected"], margins_before, atol=1e-4)

    # What was written: a loadable model equal to the trained one, the log, the checkpoint.
    loaded = AutoModelForCausalLM.from_pretrained(out)
    trained = model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in loaded.state_dict().items())
    assert not torch.equal(trained["lm_head.weight"], initial.state_dict()["lm_head.weight"])
    ckpt_state = json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())
    assert ckpt_state["step"] == 24 and ckpt_state["config"]["beta"] == 0.5
    assert len(ckpt_state["log_history"]) == 24
    assert (tmp_path / "checkpoint" / "model.safetensors").exists()
    assert (tmp_path / "checkpoint" / "trainer.pt").exists()


def test_default_reference_is_the_initial_policy_and_caller_flags_survive(tokenizer, tmp_path):
    from safetensors.torch import load_file

    pairs, cfg = toy_pairs(), DPOConfig(lr=1e-3, epochs=2, batch_size=4)
    model = tiny_llama(len(tokenizer))
    model.lm_head.requires_grad_(False)
    margins_before = pair_margins(model, tokenizer, pairs, cfg)

    cancel = threading.Event()
    cancel.set()  # before anything: nothing trained, nothing saved
    with pytest.raises(Cancelled, match="nothing trained yet"):
        train_dpo(model, tokenizer, pairs, tmp_path / "never", cfg, cancel=cancel)
    assert not (tmp_path / "never" / "checkpoint").exists()
    assert torch.equal(pair_margins(model, tokenizer, pairs, cfg), margins_before)

    train_dpo(model, tokenizer, pairs, tmp_path / "run", cfg)
    assert logged_steps(tmp_path / "run")[0].loss == pytest.approx(math.log(2), abs=1e-4)
    saved = load_file(tmp_path / "run" / "reference_logps.safetensors")
    assert torch.allclose(saved["chosen"] - saved["rejected"], margins_before, atol=1e-4)
    assert not model.lm_head.weight.requires_grad
    assert model.model.embed_tokens.weight.requires_grad
    assert not model.training


# -- 4. resume -------------------------------------------------------------------------------------


def read_log(out_dir) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "train_log.jsonl").read_text().splitlines()]


def logged_steps(out_dir) -> list[DPOStep]:
    return [DPOStep(**r) for r in read_log(out_dir)]


def stop_after(k: int, cancel: threading.Event):
    def progress(p: Progress):
        if p.stage == "train" and p.done == k:
            cancel.set()

    return progress


def test_resume_matches_an_uninterrupted_run(tokenizer, tmp_path):
    pairs = toy_pairs()
    cfg = DPOConfig(
        beta=0.5, lr=1e-3, epochs=4, batch_size=2, grad_accum=2, save_every=3, warmup_steps=2
    )

    straight = tiny_llama(len(tokenizer))
    train_dpo(straight, tokenizer, pairs, tmp_path / "straight", cfg)

    model = tiny_llama(len(tokenizer))
    cancel = threading.Event()
    with pytest.raises(Cancelled, match="at step 5/8; checkpoint in .*checkpoint"):
        train_dpo(model, tokenizer, pairs, tmp_path / "resumed", cfg, progress=stop_after(5, cancel),
                  cancel=cancel)
    first = tmp_path / "resumed" / "checkpoint"
    assert json.loads((first / "trainer_state.json").read_text())["step"] == 5
    assert not (tmp_path / "resumed" / "model").exists()

    with pytest.raises(ValueError, match="beta"):
        train_dpo(
            model,
            tokenizer,
            pairs,
            tmp_path / "resumed",
            DPOConfig(**{**cfg.__dict__, "beta": 0.2}),
        )

    # Resume with the same, partly trained, model object: its log-probs are not the reference's.
    seen = []
    final = train_dpo(model, tokenizer, pairs, tmp_path / "resumed", cfg, progress=seen.append)
    assert [p.done for p in seen if p.stage == "train"] == [6, 7, 8]
    expected, got = straight.state_dict(), model.state_dict()
    assert all(torch.allclose(expected[k], got[k], atol=1e-6) for k in expected)
    loaded = AutoModelForCausalLM.from_pretrained(final).state_dict()
    assert all(torch.allclose(expected[k], loaded[k], atol=1e-6) for k in expected)

    straight_log, resumed_log = read_log(tmp_path / "straight"), read_log(tmp_path / "resumed")
    assert [r["step"] for r in resumed_log] == list(range(1, 9))
    assert [r["loss"] for r in resumed_log] == pytest.approx(
        [r["loss"] for r in straight_log], abs=1e-6
    )


# -- 5. LoRA ---------------------------------------------------------------------------------------


def test_lora_trains_only_adapters_and_saves_a_merged_plain_model(tokenizer, tmp_path):
    pairs = toy_pairs()
    cfg = DPOConfig(
        beta=0.5,
        lr=5e-3,
        epochs=3,
        batch_size=4,
        lora=True,
        lora_rank=4,
        lora_alpha=8,
        save_every=2,
    )
    model = tiny_llama(len(tokenizer))
    base = state(model)

    def check(step: Progress):  # mid-training: only adapters train, the wrapped base stays put
        if step.stage != "train":
            return
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
        for name, value in model.state_dict().items():
            if "lora_" not in name:
                assert torch.equal(value, base[name.replace(".base.", ".")]), name

    straight = train_dpo(model, tokenizer, pairs, tmp_path / "straight", cfg, progress=check)
    # the caller gets a plain model back
    assert not any(isinstance(m, LoRALinear) for m in model.modules())

    merged = AutoModelForCausalLM.from_pretrained(straight).state_dict()
    assert merged.keys() == base.keys()
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)
    for k in changed:
        assert torch.linalg.matrix_rank(merged[k] - base[k]).item() <= cfg.lora_rank

    # Interrupt and resume under LoRA too; the merged result must match.
    resumed_model = tiny_llama(len(tokenizer))
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        train_dpo(resumed_model, tokenizer, pairs, tmp_path / "resumed", cfg,
                  progress=stop_after(3, cancel), cancel=cancel)
    assert (tmp_path / "resumed" / "checkpoint" / "lora.safetensors").exists()
    final = train_dpo(resumed_model, tokenizer, pairs, tmp_path / "resumed", cfg)
    resumed = AutoModelForCausalLM.from_pretrained(final).state_dict()
    assert all(torch.allclose(merged[k], resumed[k], atol=1e-6) for k in merged)
