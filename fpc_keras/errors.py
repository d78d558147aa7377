"""One error type for everything a user can fix: bad files, bad CSVs, bad configs, unknown classes."""
from __future__ import annotations

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
