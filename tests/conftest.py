"""Shared fixtures: a tiny real SAE trained on real SmolLM2 activations, and a small real workspace.

Nothing is mocked: the embedded SmolLM2-135M runs (its float copy is made once in the user's cache
dir and reused), the SAE is trained with sae-lens, the workspace is LanceDB on disk.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The tests' own real data (tests/data/make_fixtures.py drew it from ../shared/data, copied unchanged):
# 236 short HH-RLHF pairs and 42 UltraFeedback pairs, and ~40 pairs in each format under formats/.
DATA = ROOT / "tests" / "data"
HH = DATA / "hh-rlhf.jsonl"
UF = DATA / "ultrafeedback.jsonl"
FORMATS = DATA / "formats"
# The whole shared data sets, beside the checkout: only tests marked `shared_data` read them (they
# need the sets for their size). Absent, such a test skips; under DATADEBUG_CI=1 (.ci/run) it fails.
SHARED_DATA = ROOT.parent / "shared" / "data"
SHARED_HH = SHARED_DATA / "hh-rlhf-harmless-base-test.jsonl.gz"
SHARED_UF = SHARED_DATA / "ultrafeedback-1k.jsonl"


def pytest_runtest_setup(item):
    """A `shared_data` test without ../shared/data: a skip, or a failure under CI (DATADEBUG_CI=1),
    so a CI run never passes on tests that did not run."""
    if item.get_closest_marker("shared_data") is None or (SHARED_HH.is_file() and SHARED_UF.is_file()):
        return
    why = f"{SHARED_DATA} is absent (the shared data sets sit beside the checkout)"
    if os.environ.get("DATADEBUG_CI") == "1":
        pytest.fail(f"{why}; CI (DATADEBUG_CI=1) runs every shared_data test", pytrace=False)
    pytest.skip(why)


def pytest_collection_modifyitems(config, items):
    """The heaviest files first, by the seconds their `slow(SECONDS)` marks record: the suite runs a
    file per pytest-xdist worker at a time (pyproject's addopts), and a long file that started last
    would finish alone. Within a file, and among unmarked files, the order stays as collected."""
    weight: dict = {}
    for item in items:
        mark = item.get_closest_marker("slow")
        weight[item.path] = weight.get(item.path, 0) + (mark.args[0] if mark and mark.args else 0)
    first = {path: i for i, path in enumerate(dict.fromkeys(item.path for item in items))}
    items.sort(key=lambda item: (-weight[item.path], first[item.path]))


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per core, at most 4 (every worker loads the model and builds the shared
    fixtures once)."""
    return max(1, min(4, os.cpu_count() or 1))


def pytest_configure(config):
    # Several pytest-xdist workers: one torch (OpenMP) thread each, so that workers do not spin on one
    # another's cores (two workers x two threads on 2 cores made every test ~1.8x slower). Set before
    # any test imports torch; the subprocesses tests start inherit it.
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    # A test must never read the developer's own ~/.config/datadebug.
    os.environ["DATADEBUG_CONFIG_DIR"] = tempfile.mkdtemp(prefix="datadebug-config-")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def config_dir() -> Path:
    d = Path(os.environ["DATADEBUG_CONFIG_DIR"])
    d.mkdir(parents=True, exist_ok=True)
    return d


def short_pairs(path: Path, n: int, max_chars: int = 600, skip: int = 0):
    """The first `n` valid pairs of `path` (after `skip`) whose texts are short, for fast tests.

    On the fixtures these are the pairs the same call picks from the whole shared file (HH holds the
    first 236 pairs under 600 characters, UF the first 40 under 900)."""
    from core.data.ingest import read_pairs

    pairs = [
        p for p in read_pairs(path, skip_invalid=True).pairs
        if len(p.prompt_text) + len(p.chosen) + len(p.rejected) < max_chars
    ][skip : skip + n]
    assert len(pairs) == n, f"{path} holds {len(pairs)} such pairs after {skip}, not {n}"
    return pairs


def write_jsonl_subset(src: Path, pairs, out: Path) -> Path:
    """Copy the source lines of `pairs` unchanged into a new JSONL file."""
    from core.data.ingest import raw_records

    raw = raw_records(src)
    out.write_bytes(b"".join(raw[p.source_index] + b"\n" for p in pairs))
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """On this project's busy 2-core machines torch's spinning OpenMP workers make small-batch
    generation ~10x slower than one thread (measured: 147 s vs 15 s for 6 short replies)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_sae(tmp_path_factory, config_dir) -> str:
    """Name of a catalogue SAE entry: 512 features, k=16, trained in seconds on real layer-15 activations."""
    from core.model.catalog import _cached, load_catalog
    from core.model.lm import ResidualReader
    from core.model.sae import train_topk_sae
    from core.model.sae_train import collect_activations

    cat = load_catalog()
    model = cat.model(None)
    reader = ResidualReader.from_entry(model)
    pairs = short_pairs(HH, 40, skip=100) + short_pairs(UF, 20, max_chars=900)
    # prompts too: 60 short pairs hold too few reply tokens for 12k (the product trains on replies only)
    acts = collect_activations(reader, pairs, max_tokens=64, token_budget=12_000, include_prompts=True)
    out = tmp_path_factory.mktemp("sae") / "tiny"
    train_topk_sae(acts, out, d_sae=512, k=16, train_tokens=512 * 120, batch_size=512, lr=2e-3)
    (config_dir / "models.toml").write_text(
        f'[saes.tiny-test]\nmodel = "{model.name}"\nlayer = {model.layer}\nsource = "local"\npath = "{out}"\n'
    )
    _cached.cache_clear()
    return "tiny-test"


def index_then_kill(args: list[str], workspace: Path, n: int, timeout: float = 300) -> list[int]:
    """Run `datadebug index ARGS` in a subprocess, SIGKILL it once `workspace` holds `n` pairs, and
    return the pairs it holds then. Fails when the run ends before it could be killed."""
    import signal
    import subprocess
    import sys
    import time

    from core.data.workspace import Workspace

    proc = subprocess.Popen([sys.executable, "-m", "core.cli", "index", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.3)
        try:
            if len(Workspace(workspace).indexed_source_indices()) >= n:
                break
        except Exception:
            continue
    assert proc.poll() is None, "indexing finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return Workspace(workspace).indexed_source_indices().tolist()


@contextlib.contextmanager
def catalog_entries(config_dir: Path, toml: str):
    """Add catalogue entries to the user's models.toml for the duration (what was there stays, and
    is all that is left afterwards)."""
    from core.model.catalog import _cached

    f = config_dir / "models.toml"
    before = f.read_text() if f.is_file() else None
    f.write_text((before or "") + "\n" + toml)
    _cached.cache_clear()
    try:
        yield
    finally:
        if before is None:
            f.unlink()
        else:
            f.write_text(before)
        _cached.cache_clear()


def tiny_recipe(name: str, d_sae: int = 64) -> str:
    """A "train" recipe on the embedded model so small (64 features, a few thousand tokens, replies cut
    at 32 tokens) that training it on a few pairs takes seconds."""
    return f"""
[saes.{name}]
model = "smollm2-135m"
layer = 15
source = "train"
d_sae = {d_sae}
k = 8
train_tokens = 9600
batch_size = 64
lr = 2e-3
activation_tokens = 1200
max_tokens_per_text = 32
"""


@contextlib.contextmanager
def temporary_store(cache: Path, config_dir: Path, *recipes: str):
    """DATADEBUG_CACHE_DIR at `cache` (its models/ the real one: no second float copy) with `recipes` in
    the user's catalogue, for the duration."""
    from core import locations

    (cache / "models").symlink_to(locations.models_dir(), target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp, catalog_entries(config_dir, "".join(recipes)):
        mp.setenv("DATADEBUG_CACHE_DIR", str(cache))
        yield cache


@pytest.fixture(scope="session")
def hh_small(tmp_path_factory) -> Path:
    """24 short real HH-RLHF pairs, their source lines copied unchanged."""
    pairs = short_pairs(HH, 24)
    return write_jsonl_subset(HH, pairs, tmp_path_factory.mktemp("data") / "hh-small.jsonl")


@pytest.fixture(scope="session")
def small_workspace(tmp_path_factory, tiny_sae, hh_small) -> Path:
    from core.index.build import IndexSettings, index_dataset

    ws = tmp_path_factory.mktemp("ws") / "hh"
    index_dataset(hh_small, ws, sae=tiny_sae, settings=IndexSettings(max_tokens=64, chunk_pairs=8))
    return ws
