"""The command palette (ctrl+p): every bound action of the app and of the screen it was opened on,
plus a jump to each screen. The `?` help lists the same bindings, for every screen, with their ids."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider

# Actions that start heavy work (an index run, a goblin test, a download, training) or delete files
# are found by typing their name; the palette never offers them unasked, so a stray Enter on its
# first item cannot start one.
DELIBERATE = frozenset({"index.start", "goblin.run", "models.pull", "models.train", "models.remove"})

KEY_NAMES = {
    "question_mark": "?",
    "slash": "/",
    "left_square_bracket": "[",
    "right_square_bracket": "]",
    "escape": "esc",
}


def key_text(keys: str) -> str:
    """'escape,question_mark' -> 'esc ?'."""
    return " ".join(KEY_NAMES.get(k.strip(), k.strip()) for k in keys.split(","))


def bindings_of(cls) -> list[Binding]:
    """The bindings a class declares itself (not inherited), compound keys kept together."""
    out = []
    for b in cls.__dict__.get("BINDINGS", []):
        out.append(b if isinstance(b, Binding) else Binding(*b))
    return out


def effective_keys(binding: Binding, keymap: dict[str, str]) -> str:
    return keymap.get(binding.id, binding.key) if binding.id else binding.key


def help_rows(
    sections: Iterable[tuple[str, type]], keymap: dict[str, str]
) -> list[tuple[str, str, str, str]]:
    """(where, keys, what it does, id) for every binding of each (section name, class)."""
    rows = []
    for where, cls in sections:
        for b in bindings_of(cls):
            rows.append(
                (where, key_text(effective_keys(b, keymap)), b.description or b.action, b.id or "")
            )
    return rows


class ActionsProvider(Provider):
    """Every binding with a description on the app and on the current screen, as palette commands."""

    def _commands(self) -> list[tuple[str, str, object, str]]:
        """(name, help, callback, binding id) of every binding with a description."""
        app = self.app
        screen = self.screen
        keymap = getattr(app, "keymap", {})
        found: list[tuple[str, str, object, str]] = []
        seen: set[str] = set()
        for node in (screen, app):
            for b in bindings_of(type(node)):
                if not b.description or b.action in seen:
                    continue
                seen.add(b.action)
                where = getattr(node, "SCREEN_TITLE", "") or "anywhere"
                where = where.split(" · ")[0]
                help_text = f"{key_text(effective_keys(b, keymap))} · {where} · id {b.id}"
                found.append(
                    (
                        b.description.rstrip("…"),
                        help_text,
                        partial(app.run_action, b.action, node),
                        b.id or "",
                    )
                )
        return found

    async def discover(self) -> Hits:
        for name, help_text, callback, binding_id in self._commands():
            if binding_id not in DELIBERATE:
                yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, callback, _ in self._commands():
            score = matcher.match(f"{name} {help_text}")
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)
