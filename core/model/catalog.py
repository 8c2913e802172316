"""The catalogue of language models and SAEs: `models.toml` plus the user's override file, as frozen data."""

from __future__ import annotations

import dataclasses
import functools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from core import locations
from core.errors import CatalogError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: str  # "hf" | "local" | "package-gguf"
    layer: int
    sae: str | None = None
    description: str = ""
    repo: str | None = None
    path: str | None = None
    package: str | None = None
    gguf_file: str | None = None
    tokenizer: str | None = None
    dtype_cpu: str = "float32"
    dtype_cuda: str = "bfloat16"


# A trained ("train" source) SAE entry is a recipe; each SAE trained with it for a corpus is stored as
# "RECIPE@KEY" (KEY: the corpus's first dataset's sha256, first 8 hex digits; see core.model.dataset_sae).
VARIANT_SEP = "@"
SAE_INITS = ("sae-lens", "data", "mean")  # how a trained SAE starts (core.model.sae.train_topk_sae)


@dataclass(frozen=True)
class SAEEntry:
    name: str
    model: str
    layer: int
    source: str  # "sae-lens" | "local" | "train"
    description: str = ""
    release: str | None = None
    sae_id: str | None = None
    path: str | None = None
    labels: str | None = None
    # training recipe (source = "train")
    d_sae: int = 4096
    k: int = 32
    train_tokens: int = 400_000
    batch_size: int = 4096
    lr: float = 4e-4
    max_tokens_per_text: int = 256
    activation_tokens: int = 150_000
    init: str = "sae-lens"  # "data": b_dec and decoder rows from the activations; "mean": b_dec only (core.model.sae.train_topk_sae)
    stop_patience: int = 0  # steps without a held-out FVU gain of stop_margin before training stops (0: never)
    stop_margin: float = 0.01  # relative
    seed: int = 0  # of the initialisation and the batches' order (the shipped SAE's manifest names it)

    def __post_init__(self) -> None:
        if self.init not in SAE_INITS:
            raise TypeError(f"init must be one of {', '.join(SAE_INITS)}, not {self.init!r}")
        if self.stop_patience < 0 or not 0 <= self.stop_margin < 1:
            raise TypeError("stop_patience must be >= 0 and stop_margin in [0, 1)")

    @property
    def recipe(self) -> str:
        """The catalogue entry this SAE comes from: its own name, or RECIPE for a "RECIPE@KEY" variant."""
        return self.name.partition(VARIANT_SEP)[0]

    @property
    def corpus_key(self) -> str | None:
        """KEY of a "RECIPE@KEY" variant (None for a catalogue entry itself)."""
        return self.name.partition(VARIANT_SEP)[2] or None


@dataclass(frozen=True)
class Catalog:
    models: dict[str, ModelEntry]
    saes: dict[str, SAEEntry]
    default_model: str
    files: tuple[str, ...] = field(default=())

    def model(self, name: str | None) -> ModelEntry:
        """The model entry called `name` (the default when None). Raises CatalogError naming the known ones."""
        name = name or self.default_model
        if name not in self.models:
            raise CatalogError(f"unknown model {name!r}; known: {', '.join(sorted(self.models))}")
        return self.models[name]

    def sae(self, name: str | None, model: ModelEntry | None = None) -> SAEEntry:
        """The SAE entry called `name`, else the model's default SAE; "RECIPE@KEY" names the SAE trained
        with the "train" entry RECIPE for corpus KEY. Raises CatalogError when none fits."""
        name = name or (model.sae if model else None)
        if not name:
            raise CatalogError(f"model {model.name if model else '?'} names no SAE; pass --sae")
        if name in self.saes:
            return self.saes[name]
        recipe, sep, key = name.partition(VARIANT_SEP)
        if sep and key and recipe in self.saes and self.saes[recipe].source == "train":
            return dataclasses.replace(self.saes[recipe], name=name)  # a variant trained for a corpus
        raise CatalogError(f"unknown SAE {name!r}; known: {', '.join(sorted(self.saes))}")


def _entries(raw: dict, kind: str, cls, path: Path) -> dict:
    out = {}
    known = set(cls.__dataclass_fields__) - {"name"}
    for name, values in raw.get(kind, {}).items():
        unknown = set(values) - known
        if unknown:
            raise CatalogError(f"{path}: [{kind}.{name}] unknown keys: {', '.join(sorted(unknown))}")
        try:
            out[name] = cls(name=name, **values)
        except TypeError as exc:
            raise CatalogError(f"{path}: [{kind}.{name}]: {exc}") from None
    return out


def read_catalog(*files: Path) -> Catalog:
    """Merge catalogue files in order (later entries override earlier ones of the same name)."""
    models: dict[str, ModelEntry] = {}
    saes: dict[str, SAEEntry] = {}
    default = None
    used = []
    for path in files:
        if not path.is_file():
            continue
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise CatalogError(f"{path}: {exc}") from None
        models.update(_entries(raw, "models", ModelEntry, path))
        saes.update(_entries(raw, "saes", SAEEntry, path))
        default = raw.get("default_model", default)
        used.append(str(path))
    if not default or default not in models:
        raise CatalogError(f"default_model {default!r} is not a model in {', '.join(used)}")
    return Catalog(models=models, saes=saes, default_model=default, files=tuple(used))


@functools.cache
def _cached(user_file: str) -> Catalog:
    return read_catalog(locations.packaged_catalog_file(), Path(user_file))


def load_catalog() -> Catalog:
    """The packaged catalogue overridden by the user's file; read once per user file."""
    return _cached(str(locations.user_catalog_file()))
