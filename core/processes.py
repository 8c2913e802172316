"""Whether a process is running: files and folders named by their writer's pid (an export's
temporary file, a store folder being written) are left behind when the writer is killed, and the
next writer removes those whose process is gone."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """Whether process `pid` exists (another user's counts: it cannot be signalled, but it runs)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
