"""One error type for bad user input.

Every message is one line that names the field, the bad value and the fix, so
the command line and the app can show it as it is.
"""

from __future__ import annotations


def _short(value: object, limit: int = 80) -> str:
    """The value on one line, at most ``limit`` characters: a longer one keeps its start and its end (a file path
    keeps the file's name).

    >>> _short("/tmp/" + "x" * 100 + "/notes.nii.gz")[-20:]
    'xxxxxxx/notes.nii.gz'
    """
    text = repr(value) if not isinstance(value, str) else value
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    tail = (limit - 3) // 2
    return text[: limit - 3 - tail] + "..." + text[-tail:]


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
