"""One error type for bad user input.

Every message is one line that names the field, the bad value and the fix, so
the command line and the app can show it as it is.
"""

from __future__ import annotations


def _short(value: object, limit: int = 80) -> str:
    text = repr(value) if not isinstance(value, str) else value
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class InputError(ValueError):
    """Bad input from a user: a file, a column, an option.

    >>> str(InputError("time", -3, "must be >= 0", "drop or correct negative follow-up times"))
    'time: got -3, must be >= 0; fix: drop or correct negative follow-up times'
    """

    def __init__(self, field: str, value: object, problem: str, fix: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        self.fix = fix
        super().__init__(f"{field}: got {_short(value)}, {problem}; fix: {fix}")
