"""Ctrl-C for `inferbus up` alone, when a parent such as `make` shares its terminal.

The terminal sends Ctrl-C's SIGINT to its whole foreground process group. Under `make run`
that group holds `make` too, and GNU make always dies of a SIGINT it receives (exit 130,
"Interrupt"), however cleanly `up` stops: a clean stop would look like a failure. So, when
`up` shares its parent's foreground group, it moves into a group of its own and makes that
the terminal's foreground, as a job-control shell does for a job; its parent then sees only
`up`'s own exit status. The terminal is handed back on the way out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def ctrl_c_to_this_process() -> Iterator[bool]:
    """Take the terminal's foreground while inside; yields whether it was taken (False
    without a terminal, in the background, or already leading a group of its own)."""
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    try:
        shared = os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp() != os.getpid()
    except OSError:
        shared = False
    if not shared:
        yield False
        return
    parent_group = os.getpgrp()
    # A background group writing to the terminal's settings would be stopped (SIGTTOU);
    # Ctrl-Z would stop `up` while its parent, not stopped, holds the shell: ignore both.
    previous = {
        signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGTTOU, signal.SIGTSTP)
    }
    try:
        os.setpgid(0, 0)
        os.tcsetpgrp(fd, os.getpgrp())
    except OSError:
        with contextlib.suppress(OSError):  # back where Ctrl-C reaches us
            os.setpgid(0, parent_group)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        yield False
        return
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(fd, parent_group)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
