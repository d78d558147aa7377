"""One error type for everything a user can fix: bad files, bad CSVs, bad configs, unknown classes."""
from __future__ import annotations

import sys
from typing import Callable

MARKER = "[fpc_keras]"


class BadInputError(ValueError):
    """A problem in the user's data, config or model files, with the file named and the fix stated."""

    def __init__(self, what: str, fix: str = ""):
        self.what = what
        self.fix = fix
        super().__init__(f"{MARKER} {what}" + (f"\n  Fix: {fix}" if fix else ""))


def one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    """Refuse `value` of config key `key` unless it is one of `allowed`, listing them."""
    if value not in allowed:
        raise BadInputError(f"{key} is {value!r}", f"use one of: {', '.join(allowed)}")


def user_message(exc: BaseException) -> str | None:
    """The clean message of a BadInputError, also when TensorFlow wrapped it inside a tf.data error."""
    if isinstance(exc, BadInputError):
        return str(exc)
    text = str(exc)
    start = text.find(MARKER)
    if start < 0:
        return None
    message = text[start:]
    # tf.data appends its op context and a stack after the Python message: keep only our lines.
    kept = []
    for line in message.splitlines():
        if line.startswith(MARKER) or line.startswith("  Fix:"):
            kept.append(line)
        elif kept:
            break
    return "\n".join(kept)


def exit_code_of(action: Callable[[], int | None]) -> int:
    """Run a command's `action` as its exit code: a user error (also one TensorFlow wrapped) prints its message and
    fix, not a traceback, and gives 2; Ctrl-C gives 130 and says how to resume; anything else is a bug and raises."""
    try:
        code = action()
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        message = user_message(exc)
        if message is None:
            raise
        print(message.replace(f"{MARKER} ", "error: ", 1), file=sys.stderr)
        return 2
    return code or 0
