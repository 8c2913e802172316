"""The user's key overrides: `keymap.toml` in the datadebug config folder, binding id -> keys.

    # $XDG_CONFIG_HOME/datadebug/keymap.toml
    "triage.undo" = "u,ctrl+z"       # several keys, comma separated
    [keymap]                          # the same, inside a table, also works
    "shifts.filter" = "f"

Ids are listed by `?` in the app. Read once at start-up and handed to the App (`App.set_keymap`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from core import locations


def keymap_file() -> Path:
    return locations.config_dir() / "keymap.toml"


def load_keymap(path: Path | None = None) -> tuple[dict[str, str], list[str]]:
    """(binding id -> keys, problems found). A missing file is an empty keymap, not a problem."""
    path = path or keymap_file()
    if not path.is_file():
        return {}, []
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        return {}, [f"{path}: {exc}"]
    table = {**{k: v for k, v in raw.items() if not isinstance(v, dict)}, **raw.get("keymap", {})}
    keymap, problems = {}, []
    for binding_id, keys in table.items():
        if isinstance(keys, list):
            keys = ",".join(str(k) for k in keys)
        if not isinstance(keys, str) or not keys.strip():
            problems.append(f'{path}: {binding_id!r} needs a key string such as "ctrl+z"')
            continue
        keymap[str(binding_id)] = ",".join(k.strip() for k in keys.split(",") if k.strip())
    return keymap, problems
