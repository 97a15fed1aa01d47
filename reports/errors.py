"""The one error type the report builder raises for bad input.

`reports` must not import `trainables`, so it cannot raise `trainables.errors.ConfigError`.
`ReportError` has the same contract: a `ValueError` whose message is one line naming the file
and the fix. The CLI may catch `ValueError` (or both classes) and print it as `error: ...`.
"""

from __future__ import annotations


class ReportError(ValueError):
    """Bad report input (a missing experiment folder, say), described in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
