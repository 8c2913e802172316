"""The `datadebug` Typer app and what every command shares: the one error edge, output, progress.

A command parses its options, calls core, and prints through `emit`. It never catches errors itself:
`App.command` wraps every command so that a `DatadebugError` prints one line (`datadebug: error: ...`
on stderr, or `{"error", "type"}` on stdout with --json) and exits 2; a job stopped by Ctrl-C raises
`Cancelled`, whose message (what was saved, how to resume) is printed before exiting 130. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
import time
import warnings

import typer
import typer.core

from core.errors import Cancelled, DatadebugError
from core.progress import Progress
from core.data.textsafe import json_safe, visible


class App(typer.Typer):
    """A Typer app whose commands print a DatadebugError as one line instead of a traceback."""

    def command(self, *args, **kwargs):
        register = super().command(*args, **kwargs)

        def decorator(fn):
            @functools.wraps(fn)
            def run(*a, **kw):
                try:
                    return fn(*a, **kw)
                except Cancelled as exc:  # what it saved and how to resume is in the message
                    print(f"\ndatadebug: {visible(str(exc))}", file=sys.stderr)
                    raise typer.Exit(130) from None
                except DatadebugError as exc:
                    fail(exc, bool(kw.get("as_json")))
                except KeyboardInterrupt:
                    print("\ndatadebug: interrupted", file=sys.stderr)
                    raise typer.Exit(130) from None

            register(run)
            return fn

        return decorator


class OneLineUsage(typer.core.TyperGroup):
    """The command group whose usage errors (a missing option, an unknown one, a value of the wrong
    type) print as one line with a hint to --help, not Typer's boxed usage text, exit 2."""

    def make_context(self, *args, **kwargs):
        with _one_line_usage():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _one_line_usage():
            return super().invoke(ctx)


@contextlib.contextmanager
def _one_line_usage():
    # Typer (0.29) carries its own copy of click; its usage errors derive from that copy's classes.
    from typer._click import exceptions as click_errors

    try:
        yield
    except click_errors.NoArgsIsHelpError:
        raise  # a bare command: its help is the answer
    except click_errors.UsageError as exc:
        path = exc.ctx.command_path if exc.ctx is not None else "datadebug"
        msg = " ".join(exc.format_message().split())
        print(f"datadebug: error: {visible(msg)} (see `{visible(path)} --help`)", file=sys.stderr)
        raise typer.Exit(2) from None


app = App(
    cls=OneLineUsage,
    add_completion=False,
    no_args_is_help=True,
    help="Predictive data debugging for preference datasets: what DPO will teach your model, before you train.",
)


# Library chatter a person did not ask for: lance's Rust WARN lines, transformers' advisories and
# "Loading weights" bars, sae-lens' tqdm bars, tokenizers' fork notice. Environment variables, read
# when each library is first imported (every command imports them lazily, after this), and set only
# where the user has not set them: LANCEDB_LOG=info brings lance's log back.
QUIET_ENV = {
    "LANCEDB_LOG": "error",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def quiet_libraries() -> None:
    """Silence library noise on the terminal (see QUIET_ENV); our own progress stays."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    # transformers deprecates the argument name we read the KV cache with; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*`past_key_values` is deprecated", category=FutureWarning)


@app.callback()
def _start() -> None:
    quiet_libraries()

models_app = App(no_args_is_help=True, help="The catalogue and the local store of models and SAEs.")
sae_app = App(no_args_is_help=True, help="Train an SAE for a model that has none.")
app.add_typer(models_app, name="models")
app.add_typer(sae_app, name="sae")

JSON = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")


def fail(exc: BaseException, as_json: bool) -> None:
    """Print `exc` as one line (JSON on stdout with --json) and exit 2."""
    msg = " ".join(str(exc).split("\n")) or type(exc).__name__
    if as_json:
        print(json_safe({"error": msg, "type": type(exc).__name__}, indent=None))
    else:
        print(f"datadebug: error: {visible(msg)}", file=sys.stderr)
    raise typer.Exit(2)


def emit(obj, as_json: bool, text: str) -> None:
    """Print `obj` as JSON or `text` for a person; dataset text in either never reaches the
    terminal as raw control sequences (see core.data.textsafe)."""
    print(json_safe(obj) if as_json else visible(text, keep_newlines=True))


class ProgressPrinter:
    """Renders core Progress reports on stderr.

    On a terminal: a rich progress bar per stage. Otherwise (a log, `nohup`, a pipe): one plain line
    when a stage or its message changes and at most one every `every` seconds in between, so a log
    shows pairs, tok/s and ETA without filling up. DATADEBUG_PROGRESS=lines forces lines,
    DATADEBUG_PROGRESS=0 silences it.
    """

    def __init__(self, every: float = 5.0):
        mode = os.environ.get("DATADEBUG_PROGRESS", "")
        self.silent = mode == "0"
        self.tty = sys.stderr.isatty() and mode != "lines"
        self.every = every
        self._last_line = 0.0
        self._last_key: tuple[str, str] | None = None
        self._rich = None
        self._tasks: dict[str, int] = {}

    def __call__(self, p: Progress) -> None:
        if self.silent:
            return
        if self.tty:
            self._bar(p)
            return
        now = time.monotonic()
        key = (p.stage, p.message)
        if key != self._last_key or now - self._last_line >= self.every or (p.total and p.done >= p.total):
            print(visible(p.line()), file=sys.stderr, flush=True)
            self._last_line, self._last_key = now, key

    def _bar(self, p: Progress) -> None:
        import rich.progress as rp

        if self._rich is None:
            self._rich = rp.Progress(
                rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
                rp.TextColumn("{task.fields[extra]}"), rp.TimeRemainingColumn(),
                console=__import__("rich.console").console.Console(stderr=True), transient=False,
            )
            self._rich.start()
        desc = visible(f"{p.stage}: {p.message}" if p.message else p.stage)[:60]
        extra = f"{p.rate:,.0f} {p.rate_unit}" if p.rate else ""
        if p.metrics:
            extra += " " + " ".join(f"{k} {v:.3g}" for k, v in p.metrics.items())
        task = self._tasks.get(p.stage)
        if task is None:
            task = self._rich.add_task(desc, total=p.total or None, extra=extra)
            self._tasks[p.stage] = task
        self._rich.update(task, description=desc, completed=p.done, total=p.total or None, extra=extra)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None

    def __enter__(self) -> "ProgressPrinter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def ctrl_c_cancels(what: str):
    """Yields a cancel event that the first Ctrl-C sets (the job then stops cleanly and raises
    Cancelled); a second Ctrl-C aborts at once."""
    cancel = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield cancel
        return

    def on_sigint(signum, frame):
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        print(f"\nstopping: {what} (Ctrl-C again to abort)", file=sys.stderr, flush=True)

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield cancel
    finally:
        signal.signal(signal.SIGINT, old)


def set_threads(threads: int | None) -> None:
    """Set torch's CPU threads when asked (on a busy machine 1 can be much faster)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


THREADS = typer.Option(
    None, help="CPU threads for torch (default: torch's choice; on a busy machine 1 can be much faster)"
)
