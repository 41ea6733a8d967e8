"""The one exception type the CLI turns into a one-line message and exit status 2."""


class UsageError(ValueError):
    """Bad input from the user: a wrong flag, a malformed file, a model we cannot handle."""


def gist(e: BaseException, limit: int = 160) -> str:
    """A library error's first sentence, for a one-line message (its class name when it says nothing)."""
    text = " ".join(str(e).split())
    if not text:
        return type(e).__name__
    head = text.split(". ", 1)[0].rstrip(".")
    return head if len(head) <= limit else head[: limit - 3] + "..."
