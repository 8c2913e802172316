"""Where datadebug keeps things on disk. Every path is resolved here, at call time (never at import)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "datadebug"


def config_dir() -> Path:
    """The user's config folder ($DATADEBUG_CONFIG_DIR, else the XDG config dir)."""
    return Path(os.environ.get("DATADEBUG_CONFIG_DIR") or platformdirs.user_config_dir(APP))


def cache_dir() -> Path:
    """The local model/SAE store ($DATADEBUG_CACHE_DIR, else the XDG cache dir)."""
    return Path(os.environ.get("DATADEBUG_CACHE_DIR") or platformdirs.user_cache_dir(APP))


def user_catalog_file() -> Path:
    """The user's own models.toml, whose entries override the packaged catalogue."""
    return config_dir() / "models.toml"


def packaged_catalog_file() -> Path:
    """The catalogue shipped with datadebug (repo root in a checkout, inside `core` in a wheel)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "models.toml", here / "models.toml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("models.toml not found beside the datadebug package")


def models_dir() -> Path:
    return cache_dir() / "models"


def saes_dir() -> Path:
    return cache_dir() / "saes"


def sample_data_file() -> Path:
    """The bundled sample of real preference pairs used by the demo and for SAE training."""
    return Path(__file__).resolve().parent / "data" / "sample.jsonl"
