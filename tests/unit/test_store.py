import json
import os
import subprocess
import sys

import pytest

from core.model.catalog import load_catalog
from core.model.store import StoreError, model_ready, pull_model, status, verify


def test_hub_pull_without_network_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DATADEBUG_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    entry = load_catalog().model("smollm2-135m-hf")
    with pytest.raises(StoreError, match="cannot download HuggingFaceTB/SmolLM2-135M-Instruct.*network"):
        pull_model(entry)
    assert not (tmp_path / "models" / "smollm2-135m-hf").exists()  # nothing half-written left behind


def test_cli_pull_failure_prints_message_not_traceback(tmp_path):
    env = {"DATADEBUG_CACHE_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "-m", "core.cli", "models", "pull", "gemma-2-2b", "--json"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr + r.stdout
    assert "cannot download google/gemma-2-2b" in json.loads(r.stdout)["error"]


def test_embedded_model_is_ready_offline_and_verifies():
    cat = load_catalog()
    entry = cat.model(None)
    pull_model(entry)  # dequantises the packaged GGUF once per machine
    assert model_ready(entry)
    row = next(r for r in status(cat) if r.name == entry.name)
    assert row.ready and row.size_bytes > 100e6
    assert "30 layers" in verify(cat, entry.name)


def test_an_offline_pull_keeps_the_real_cause_and_a_bug_stays_a_bug(monkeypatch, tmp_path):
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setenv("DATADEBUG_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    entry = load_catalog().model("smollm2-135m-hf")
    with pytest.raises(StoreError) as raised:
        pull_model(entry)
    assert isinstance(raised.value.__cause__, LocalEntryNotFoundError)  # the chain is kept
    assert "LocalEntryNotFoundError" in str(raised.value)

    # anything that is not the hub saying no (here a fault injected into the download) is a bug:
    # it must not be dressed up as "needs network"
    import huggingface_hub

    def broken(*a, **k):
        raise KeyError("a bug in our code")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", broken)
    with pytest.raises(KeyError, match="a bug in our code"):
        pull_model(entry)
    assert not (tmp_path / "models" / "smollm2-135m-hf").exists()


def test_an_sae_the_catalogue_misnames_is_a_store_error_before_any_download(tmp_path, monkeypatch):
    import dataclasses

    monkeypatch.setenv("DATADEBUG_CACHE_DIR", str(tmp_path))
    from core.model.store import pull_sae

    entry = load_catalog().sae("gemma-scope-2b-res-l12-16k")
    with pytest.raises(StoreError, match="has no SAE 'layer_99/none'"):
        pull_sae(dataclasses.replace(entry, sae_id="layer_99/none"))
    with pytest.raises(StoreError, match="knows no release 'no-such-release'"):
        pull_sae(dataclasses.replace(entry, release="no-such-release"))


def test_a_new_sae_source_is_one_table_entry(tmp_path, monkeypatch):
    """core.model.store.SAE_SOURCES is the extension point: a source registered there is pulled,
    listed and removed like the others, with no other code."""
    import dataclasses
    import shutil

    from core.model import store
    from core.model.catalog import load_catalog
    from core.model.shipped import SHIPPED_DIR

    monkeypatch.setenv("DATADEBUG_CACHE_DIR", str(tmp_path / "cache"))
    shipped = next(p for p in SHIPPED_DIR.iterdir() if p.is_dir())
    calls = []

    def copy(entry, out, say):
        calls.append(entry.name)
        say(f"copying {shipped.name}")
        shutil.copytree(shipped, out)

    monkeypatch.setitem(store.SAE_SOURCES, "mirror", store.Source(copy, note="copied from a mirror"))
    cat = load_catalog()
    entry = dataclasses.replace(cat.sae(None, cat.model(None)), name="mirrored", source="mirror")
    assert not store.sae_ready(entry)
    out = store.pull_sae(entry)
    assert calls == ["mirrored"] and store.sae_ready(entry) and out == tmp_path / "cache" / "saes" / "mirrored"
    assert store.pull_sae(entry) == out and calls == ["mirrored"]  # ready: not pulled again
    bad = dataclasses.replace(entry, name="typo", source="sae-lenz")
    with pytest.raises(StoreError, match="unknown source 'sae-lenz'"):
        store.pull_sae(bad)


_SAVER = r"""
import sys, time
from pathlib import Path
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from core.model.store import _save_float_copy

out, tokenizer, start = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2))
tok = AutoTokenizer.from_pretrained(tokenizer)
while time.time() < start:  # both processes write at the same moment
    time.sleep(0.001)
began = time.time()
_save_float_copy(model, tok, out)
print(began, time.time())
"""


def test_two_processes_making_the_float_copy_at_once_leave_one_whole_copy(tmp_path):
    """Two commands on a fresh machine (or two test workers) dequantise the embedded model at once.
    Each writes its own folder and the first to finish publishes it (with one shared `.partial`
    folder, one process deleted the other's half-written copy). The two writes must overlap in time,
    or the test proved nothing."""
    import time

    from core.model.store import model_dir

    tokenizer = model_dir(load_catalog().model(None))  # the embedded model's tokenizer (its float copy)
    pull_model(load_catalog().model(None))
    out = tmp_path / "models" / "copy"
    out.parent.mkdir()
    for attempt in range(3):
        start = time.time() + 8  # after both have imported torch and built the model
        procs = [subprocess.Popen([sys.executable, "-c", _SAVER, str(out), str(tokenizer), str(start)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        runs = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in runs]
        (a0, a1), (b0, b1) = (map(float, o.split()) for o, _ in runs)
        if a0 < b1 and b0 < a1:  # the two writes overlapped
            break
        import shutil

        shutil.rmtree(out)
    else:
        pytest.fail("the two writes never overlapped in 3 attempts: the race was not exercised")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["copy"]  # no partial folder left behind
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out).config.hidden_size == 64  # whole and loadable


def test_a_killed_writers_partial_folder_is_removed_and_a_running_ones_kept(tmp_path):
    """A process killed while writing leaves `NAME.partial-PID`; the next writer removes it, but never
    the folder of a writer still running."""
    from core.model.publish import partial_folder

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid now names no process
    out = tmp_path / "copy"
    left = tmp_path / f"copy.partial-{dead.pid}"
    running = tmp_path / f"copy.partial-{os.getppid()}"  # pytest's parent process: running
    other = tmp_path / f"other.partial-{dead.pid}"  # another folder's: not ours to remove
    for d in (left, running, other):
        (d / "weights").mkdir(parents=True)
    tmp = partial_folder(out)
    assert tmp.name == f"copy.partial-{os.getpid()}" and not tmp.exists()
    assert not left.exists() and running.is_dir() and other.is_dir()
