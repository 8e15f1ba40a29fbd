"""Ctrl-C for the `agent` command: say "interrupted" and exit 130 at once, wherever it was.

Kept apart and imported first by `orchestrator.cli`, so the handler is in place before the slower
imports (about a second) run.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import Any

try:
    import termios
except ImportError:  # not a POSIX terminal: nothing to restore
    termios = None  # type: ignore[assignment]

INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, what shells report for a Ctrl-C'd command
_terminal_settings: list[Any] | None = None


def _exit_interrupted(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C: say "interrupted" and leave at once with 130, wherever the program was.

    Leaving through KeyboardInterrupt is not reliable here: asyncio waits for the thread reading a
    `chat` line before it lets go, the SDK turns the cancelled update into "did not answer in
    time", and the Temporal core's threads can abort interpreter finalisation. Nothing is lost by
    leaving: the conversation is durable, and a message already sent is answered and kept.
    """
    try:
        sys.stdout.flush()  # what was already printed (an answer) still reaches a pipe
    except Exception:  # interrupted in the middle of a write to the same stream
        pass
    if termios is not None and _terminal_settings is not None:
        try:  # a chat line being read left the terminal without echo
            termios.tcsetattr(0, termios.TCSADRAIN, _terminal_settings)
        except (OSError, termios.error):
            pass
    if os.isatty(1):
        os.write(1, b"\x1b[?25h\n")  # rich's status spinner hides the cursor; show it again
    os.write(2, b"interrupted\n")
    os._exit(INTERRUPTED_EXIT_CODE)


def exit_on_interrupt() -> None:
    global _terminal_settings
    if termios is not None and _terminal_settings is None and os.isatty(0):
        try:
            _terminal_settings = termios.tcgetattr(0)
        except termios.error:
            pass
    signal.signal(signal.SIGINT, _exit_interrupted)


# Only when this process is the `agent` command: a program that imports the CLI (the demo) keeps
# its own Ctrl-C handling until it calls main().
if os.path.basename(sys.argv[0]) == "agent":
    exit_on_interrupt()
