"""The one place where a user's mistake becomes one line on stderr (``LUNA_TRACEBACK=1`` shows the
traceback instead), for every command: a mistyped or renamed option, a bad value, a missing
file, a CSV or scan that cannot be used, a checkpoint that cannot be read."""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from luna.cli.console import setup_logging
from luna.io.files import DiskFullError

# options renamed in luna 0.2: old key -> new key, and old values of an option -> new value
RENAMED = {
    "data.val_subset": "data.val_fold",
    "data.eval_series": "data.eval_images",
    "model.threshold": "evaluation.threshold",
    "model.tta_flips": "evaluation.tta_flips",
    "model.prior_correction": "evaluation.prior_correction",
    "model.mistakes_shown": "evaluation.mistakes_shown",
    "model.width_irc": "data.width_irc",
}
RENAMED_VALUES = {"split_by": {"series": "group", "candidate": "row", "subset": "fold"}}
# the lines of a jsonargparse message that only say which alternatives were tried
_NOISE = (
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Given value:",
    "Does not validate against any",
    "Expected a <class 'NoneType'>",
    "Expected a <class 'bool'>",
    "is abstract",
)


def reason(message: str | BaseException) -> str:
    """The line of a (possibly nested) error message or exception that says what is wrong.

    jsonargparse nests a constructor's own message ("batch_size=-1: must be ...") under lines that
    only list the alternatives it tried (a union's subtypes); those are skipped.
    """
    text = str(message).strip()
    if not text:
        return type(message).__name__ if isinstance(message, BaseException) else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [
        line.removeprefix("- ").strip() for line in lines[1:] if not any(noise in line for noise in _NOISE)
    ]
    for k, line in enumerate(useful):  # "Problem with given class_path 'x':" and its cause say the most
        if "class_path" in line and line.endswith(":") and k + 1 < len(useful):
            return f"{line[:-1]}: {useful[k + 1]}"
    return useful[0] if useful else lines[0]


def _given(argv: Sequence[str], key: str) -> tuple[str, str | None]:
    """The full ``section.key`` of ``key`` as given on the command line, and its value (when given there)."""
    options = [arg[2:].partition("=") for arg in argv if arg.startswith("--")]
    for name, _, value in options:
        if name == key or name.endswith(f".{key}"):
            return name, value or None
    for name, _, value in options:  # a field inside a structured value, e.g. --data.extra_views='[{...}]'
        if key in value:
            return f"{name} ({key})", None
    return key, None


def option_error(
    message: str, argv: Sequence[str], known: Sequence[str], suggest: Callable[[str], list[str]]
) -> str:
    """One line (two with a hint) for a command-line parser's error ``message``."""
    head = message.strip().splitlines()[0] if message.strip() else "invalid command line"
    unknown = re.fullmatch(r"Option '(.+)' is not accepted", head)
    keys = [unknown.group(1)] if unknown else []
    if head.startswith("unrecognized arguments:"):
        keys = [arg[2:].split("=")[0] for arg in head.split(":", 1)[1].split() if arg.startswith("--")]
    if keys:
        lines = []
        for key in keys:
            full, _ = _given(argv, key)
            if full in RENAMED:
                lines.append(f"error: --{full} was renamed --{RENAMED[full]} in luna 0.2")
                continue
            close = suggest(full)
            hint = f": did you mean {' or '.join('--' + k for k in close)}?" if close else ""
            lines.append(f"error: --{full} is not an option{hint}")
        return "\n".join(lines)
    parsed = re.fullmatch(r'Parser key "(.+)":', head)
    if not parsed:
        return f"error: {head}"
    full, value = _given(argv, parsed.group(1))
    if full.startswith("trainer.logger") and "NestedArg" in message:
        return (
            f"error: --{full}: luna makes the loggers itself (--loggers) in "
            "<trainer.default_root_dir>/version_N; "
            "move them with --trainer.default_root_dir, or give a whole logger with --trainer.logger=CLASS"
        )
    text = f"error: --{full}: {reason(message)}"
    renamed = RENAMED_VALUES.get(full.rsplit(".", 1)[-1], {})
    if value in renamed:
        text += f" ({full.rsplit('.', 1)[-1]}={value} is called {renamed[value]} since luna 0.2)"
    return text


def describe(error: BaseException) -> str:
    """One line for a user's error: a full disk names the file even when the writer did not."""
    if isinstance(error, DiskFullError):
        return error.strerror  # names the file, the bytes it needed and the space left
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" while writing {error.filename}" if error.filename else ""
        return f"no space left on the device{where}: free some space (or write elsewhere) and run it again"
    return reason(error)


def run_command(
    main: Callable[[], int | None], user_errors: tuple[type[BaseException], ...] = ()
) -> NoReturn:
    """Run a command's ``main`` and exit with its status. A user's error (a bad value, a missing or
    unwritable file, a full disk, or one of ``user_errors``) exits with status 2 and one line on
    stderr; ``LUNA_TRACEBACK=1`` raises it instead, with its traceback."""
    setup_logging()
    try:
        status = main()
    except (ValueError, OSError, *user_errors) as error:
        if os.environ.get("LUNA_TRACEBACK"):
            raise
        print(f"error: {describe(error)}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status or 0)
