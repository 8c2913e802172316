"""Every catalogue kind, offline: tiny random-weight Llama, Gemma-2, Qwen2 and Qwen3 models and sae-lens
SAEs of the published kinds (JumpReLU as Gemma Scope, TopK, standard ReLU as Goodfire's), as a new
user's local catalogue entries, through index -> shifts -> clusters -> mark -> export on the CLI.

Each model is saved by transformers from its own config class (3 blocks, d_model 64) with the
embedded SmolLM2 tokenizer (chat template included; the Llama copy has no pad token) and a vocabulary
sized to it. Each SAE is saved by sae-lens with random weights, calibrated on the model's activations
so that a few percent of features fire. What the workspace holds is checked against a reference
computed without datadebug: the full HF model's block output (a forward hook) through sae-lens's own
`encode`, and labels through the model's own final norm and LM head.

Also: every sae-lens release named in models.toml resolves, from the pretrained directory shipped
with sae-lens (no download), to the SAE class, d_in and hook layer its catalogue entry needs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from core.model.catalog import load_catalog, read_catalog
from core.cli import app
from core.data.ingest import read_pairs
from core.model.chat import chat_prompt_ids
from core.locations import packaged_catalog_file
from core.model.store import pull_model
from core.data.workspace import Workspace
from tests.conftest import HH, UF, catalog_entries, short_pairs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MAX_TOKENS = 64
N_PAIRS = 8


@dataclass(frozen=True)
class Case:
    arch: str  # transformers config class
    layer: int
    sae_kind: str  # "jumprelu" | "topk" | "standard"
    d_sae: int
    pad: bool = True  # the tokenizer keeps a pad token
    template: str = "smollm2"  # "smollm2" (it has one), "none" (a base model's), "gemma-it" (no system turn)

    @property
    def model(self) -> str:
        return f"tiny-{self.arch.lower()}"

    @property
    def sae(self) -> str:
        return f"{self.model}-{self.sae_kind}-{self.d_sae}"


CASES = [
    # Gemma Scope's kind at Goodfire's width; no chat template, as the catalogue's base Gemma-2-2B
    Case("Gemma2", 1, "jumprelu", 65_536, template="none"),
    Case("Llama", 1, "topk", 4096, pad=False),
    Case("Qwen2", 2, "standard", 1024),  # the last block: its output, not the final norm's
    Case("Qwen3", 1, "jumprelu", 2048, template="gemma-it"),
]
SYSTEM = "You are a terse assistant."  # the first pair's prompt opens with this system turn
# Gemma-2-it's chat template (as published): it refuses a system turn
GEMMA_IT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)


def _config(arch: str, vocab: int, tok):
    import transformers

    common = dict(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    extra = {"Gemma2": {"sliding_window": 32}}.get(arch, {})  # shorter than the prompts: the window matters
    return getattr(transformers, f"{arch}Config")(**common, **extra)


def _block_output(model, layer: int, ids: list[int]) -> torch.Tensor:
    """(tokens, d_model) output of block `layer` of the full model: a forward hook, no datadebug code."""
    got = {}
    block = model.model.layers[layer]
    handle = block.register_forward_hook(lambda m, i, o: got.setdefault("h", o[0] if isinstance(o, tuple) else o))
    try:
        with torch.inference_mode():
            model(torch.tensor([ids]))
    finally:
        handle.remove()
    return got["h"][0].float()


def _make_sae(kind: str, d_sae: int, acts: torch.Tensor, layer: int, out: Path) -> None:
    """A random sae-lens SAE of `kind`, calibrated on `acts` (tokens, d_in) so ~2% of features fire."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    d_in = acts.shape[1]
    meta = {"hook_name": f"blocks.{layer}.hook_resid_post"}
    if kind == "jumprelu":  # as Gemma Scope: no decoder bias subtracted from the input
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False))
    elif kind == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=16))
    else:
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    for key, value in meta.items():
        setattr(sae.cfg.metadata, key, value)
    g = torch.Generator().manual_seed(d_sae)
    with torch.no_grad():
        sae.W_enc.copy_(torch.nn.functional.normalize(torch.randn(d_in, d_sae, generator=g), dim=0))
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=1))
        sae.b_dec.copy_(torch.randn(d_in, generator=g) * 0.01)
        pre = (acts - (sae.b_dec if sae.cfg.apply_b_dec_to_input else 0)) @ sae.W_enc  # (tokens, d_sae)
        q98 = pre.kthvalue(int(0.98 * len(pre)), dim=0).values  # (d_sae,)
        if kind == "jumprelu":
            sae.threshold.copy_(q98.clamp(min=1e-3))
        elif kind == "standard":
            sae.b_enc.copy_(-q98)
    sae.save_model(str(out))


@pytest.fixture(scope="module")
def tiny_catalog(tmp_path_factory, config_dir):
    """The four tiny models and their SAEs as local catalogue entries; yields {arch: folder}."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("archs")
    tok_src = pull_model(load_catalog().model(None))  # the embedded model's float copy (its tokenizer)
    toml, folders = [], {}
    texts = [p.prompt_text + " " + p.chosen for p in read_pairs(HH, skip_invalid=True, limit=10).pairs]
    for case in CASES:
        tok = AutoTokenizer.from_pretrained(tok_src)
        if not case.pad:
            tok.pad_token = None
        if case.template != "smollm2":
            tok.chat_template = GEMMA_IT_TEMPLATE if case.template == "gemma-it" else None
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(_config(case.arch, len(tok), tok))
        with torch.no_grad():  # trained final norms are not all ones (Gemma's scale is 1 + weight)
            model.model.norm.weight.uniform_(-0.5, 0.5) if case.arch == "Gemma2" else model.model.norm.weight.uniform_(0.5, 1.5)
        folder = root / case.model
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        acts = torch.cat([_block_output(model, case.layer, tok(t)["input_ids"][:64]) for t in texts])
        _make_sae(case.sae_kind, case.d_sae, acts, case.layer, root / case.sae)
        folders[case.arch] = folder
        toml.append(
            f'[models.{case.model}]\nsource = "local"\npath = "{folder}"\nlayer = {case.layer}\nsae = "{case.sae}"\n'
            f'[saes.{case.sae}]\nmodel = "{case.model}"\nlayer = {case.layer}\nsource = "local"\npath = "{root / case.sae}"\n'
        )
    with catalog_entries(config_dir, "\n".join(toml)):
        yield folders


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Real short HH-RLHF and UltraFeedback pairs as one TRL conversational JSONL file."""
    pairs = short_pairs(HH, N_PAIRS // 2, max_chars=400, skip=40) + short_pairs(UF, N_PAIRS // 2, max_chars=700)
    out = tmp_path_factory.mktemp("archdata") / "mixed.jsonl"
    out.write_text("".join(json.dumps({
        "prompt": ([{"role": "system", "content": SYSTEM}] if i == 0 else []) + list(p.prompt),
        "chosen": [{"role": "assistant", "content": p.chosen}],
        "rejected": [{"role": "assistant", "content": p.rejected}],
    }) + "\n" for i, p in enumerate(pairs)))
    return out


def _cli(*args: str) -> dict:
    r = CliRunner().invoke(app, [*args, "--json"])
    assert r.exit_code == 0, (args, r.output)
    return json.loads(r.stdout)


# the 65536-feature Gemma2 case is slow: 35 s, call + setup (2026-12-05, 2-core machine idle); the others 3-6 s
@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow(35)) if c.d_sae == 65536 else c for c in CASES],
                         ids=lambda c: f"{c.arch}-{c.sae_kind}-{c.d_sae}")
def test_index_shifts_clusters_export(case: Case, tiny_catalog, data, tmp_path):
    ws = tmp_path / "ws"
    r = _cli("index", str(data), "-w", str(ws), "--model", case.model, "--max-tokens", str(MAX_TOKENS))
    assert r["n_pairs"] == N_PAIRS and r["n_new"] == N_PAIRS
    meta = Workspace(ws).meta()
    assert meta["model"] == case.model and meta["sae"] == case.sae and meta["d_sae"] == case.d_sae

    _check_against_reference(case, tiny_catalog[case.arch], ws)

    shifts = _cli("shifts", "-w", str(ws), "--top", "5")
    assert shifts["n_pairs"] == N_PAIRS and shifts["sae"] == case.sae
    clusters = _cli("clusters", "-w", str(ws), "--k", "2")
    assert clusters["k"] == 2 and sum(c["size"] for c in clusters["clusters"]) == N_PAIRS
    _cli("mark", "0", "2", "-w", str(ws), "--reason", "test")
    out = _cli("export", "-w", str(ws), "-o", str(tmp_path / "clean.jsonl"))
    assert out["n_removed"] == 2 and out["n_kept"] == N_PAIRS - 2
    kept = (tmp_path / "clean.jsonl").read_text().splitlines()
    assert kept == [line for i, line in enumerate(data.read_text().splitlines()) if i not in (0, 2)]


def _check_against_reference(case: Case, folder: Path, ws: Path) -> None:
    """Reply summaries and feature labels as computed without datadebug's reader or encoder."""
    from sae_lens import SAE
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    sae = SAE.load_from_disk(str(load_catalog().sae(case.sae).path))
    t = Workspace(ws).pairs_columns(["source_index", "chosen_feat", "chosen_mean", "chosen_max", "rejected_feat",
                                     "rejected_mean", "chosen_tokens"])
    pairs = {p.source_index: p for p in read_pairs(Path(Workspace(ws).meta()["dataset"])).pairs}
    n_feat = 0
    for row in t.to_pylist():
        p = pairs[row["source_index"]]
        prompt = chat_prompt_ids(tok, p.prompt)
        if case.template == "none":  # a plain transcript for a base model
            assert tok.decode(prompt).endswith("\n\nAssistant:")
        if p.prompt[0]["role"] == "system":  # kept, at the head of the first user turn where refused
            head = "<start_of_turn>user\n" + SYSTEM if case.template == "gemma-it" else SYSTEM
            assert head in tok.decode(prompt)
        for side, text in (("chosen", p.chosen), ("rejected", p.rejected)):
            reply = tok(text, add_special_tokens=False)["input_ids"][:MAX_TOKENS]
            acts = _block_output(model, case.layer, prompt + reply)[len(prompt):]  # (reply tokens, d_model)
            with torch.inference_mode():
                f = sae.encode(acts)  # (reply tokens, d_sae)
            ref_mean = f.mean(0).numpy()
            got = np.zeros(case.d_sae, np.float32)
            got[row[f"{side}_feat"]] = row[f"{side}_mean"]
            scale = float(np.abs(ref_mean).max())
            # batched, padded and cached reads differ from this single forward by float rounding only;
            # a feature right at a JumpReLU threshold / TopK boundary may flip, so compare the vectors
            assert np.abs(got - ref_mean).sum() <= 1e-3 * np.abs(ref_mean).sum(), (side, row["source_index"])
            assert np.abs(got - ref_mean).max() <= 1e-3 * scale
            n_feat += len(row[f"{side}_feat"])
    assert n_feat > 0
    # labels: each feature's decoder direction through the model's own final norm and LM head
    info = Workspace(ws).feature_info()
    assert len(info) == case.d_sae
    some = list(range(0, case.d_sae, max(1, case.d_sae // 16)))
    with torch.inference_mode():
        logits = model.lm_head(model.model.norm(sae.W_dec[some]))  # (features, vocab)
    for f, ids in zip(some, logits.topk(3, dim=1).indices.tolist()):
        assert info[f]["promoted"][:3] == [tok.decode([i]) for i in ids], f


# -- the catalogue's sae-lens releases, resolved offline -------------------------------------------------

# d_model of each catalogue model that an sae-lens release reads (from the models' published configs)
D_MODEL = {"llama-3.1-8b-instruct": 4096, "gemma-2-2b": 2304}
SAE_CLASS = {"goodfire-llama-3.1-8b-instruct": "StandardSAE", "gemma-scope-2b-pt-res-canonical": "JumpReLUSAE"}


def test_catalogue_sae_lens_releases_resolve_offline(monkeypatch):
    from sae_lens.loading.pretrained_sae_loaders import load_sae_config_from_huggingface
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    from sae_lens.registry import get_sae_class

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cat = read_catalog(packaged_catalog_file())
    directory = get_pretrained_saes_directory()
    releases = [s for s in cat.saes.values() if s.source == "sae-lens"]
    assert releases
    for s in releases:
        assert s.release in directory and s.sae_id in directory[s.release].saes_map, s.name
        cfg = load_sae_config_from_huggingface(s.release, s.sae_id)
        cls, _ = get_sae_class(cfg["architecture"])
        assert cls.__name__ == SAE_CLASS[s.release], (s.name, cls.__name__)
        assert cfg["d_in"] == D_MODEL[s.model], (s.name, cfg["d_in"])
        hook = cfg.get("hook_name") or cfg["metadata"]["hook_name"]
        layer = int(re.fullmatch(r"blocks\.(\d+)\.hook_resid_post", hook)[1])
        assert layer == s.layer == cat.models[s.model].layer, (s.name, hook)
        assert cat.models[s.model].sae == s.name
