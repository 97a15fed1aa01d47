"""The one error type users see.

Every check on user input (config files, overrides, data folders, checkpoints) raises
`ConfigError` with a single line that names the file or field and says how to fix it.
The CLI prints `error: <message>` and exits with status 2; no traceback.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad user input, described in one line that names the culprit and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
