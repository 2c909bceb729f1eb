"""``python -m core COMMAND ...``: the command line (every command: one-line errors, ``--json`` for one object).

Only the module of the command that runs is imported, so ``inspect`` never
pulls in torch. Bad input ends in a one-line ``error: ...`` on stderr and a
non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from typing import NoReturn, Sequence

from core.errors import InputError

# command -> (module, one-line help). Keep in the order users meet them.
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("core.commands.inspect", "load a study (DICOM file/folder/zip or NIfTI) and print geometry, HU and PHI"),
    "deid": ("core.commands.deid", "write a de-identified copy of a DICOM study or a NIfTI file and report what changed"),
    "timeline": ("core.commands.timeline", "summarise a MEDS timeline file, or one subject's timeline"),
    "demo": ("core.commands.demo", "write the embedded demo cohort (CT phantoms, MEDS timelines, outcomes)"),
    "train": ("core.commands.train", "train a fusion survival model on a cohort"),
    "pretrain": ("core.commands.pretrain", "time-to-event pretraining of the image encoder"),
    "evaluate": ("core.commands.evaluate", "evaluate a model on a cohort's test split"),
    "pool": ("core.commands.pool", "pool one model's C-index and O:E over several sites' evaluations (random effects)"),
    "predict": ("core.commands.predict", "individual survival curve for one subject"),
    "compare": ("core.commands.compare", "train every fusion strategy and write a comparison table"),
    "explain": ("core.commands.explain", "attribution figure (saliency, IG, Grad-CAM, occlusion, SmoothGrad, detector evidence) for one subject"),
    "sanity": ("core.commands.sanity", "sanity checks of explanations (randomization test, pointing game)"),
    "export-dicom": ("core.commands.export_dicom", "export a case as DICOM: saliency Parametric Map, top-region Segmentation, prediction SR"),
    "recalibrate": ("core.commands.recalibrate", "write a copy of a model recalibrated to a site's cohort"),
    "cohort": ("core.commands.cohort", "build a cohort folder from a MEDS dataset and an ACES task definition"),
    "site-model": ("core.commands.site_model", "add, list or remove the models every user of the app sees"),
}

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m core",
        description="Multimodal CT + EHR survival prediction: command-line tools.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse with its errors (a mistyped value, an unknown choice, a missing option) as one line in the form of
    every other error: ``error: FIELD: got VALUE, PROBLEM; fix: ...``, instead of the usage block."""

    argv: Sequence[str] = ()  # the command's arguments as typed (main sets them): a mistyped option is named

    def error(self, message: str) -> NoReturn:
        text = usage_error(message, self.prog)
        unknown = [t.split("=")[0] for t in self.argv if t.startswith("--") and t.split("=")[0] not in
                   self._option_string_actions]
        if unknown and message.startswith("the following arguments are required"):  # argparse says only the missing
            text = text.replace("; fix: ", f" ({', '.join(unknown)} is not an option of this command: mistyped?); "
                                "fix: ", 1)
        print(f"error: {text}", file=sys.stderr)
        self.exit(EXIT_BAD_INPUT)


def usage_error(message: str, prog: str) -> str:
    """argparse's ``message`` as ``FIELD: got VALUE, PROBLEM; fix: ...``.

    >>> usage_error("argument --head: invalid choice: 'pexp' (choose from 'discrete', 'pwe', 'cox')", "python -m core train")
    '--head: got pexp, is not a choice; fix: use one of discrete, pwe, cox'
    >>> usage_error("argument --n: invalid int value: 'abc'", "python -m core demo")
    '--n: got abc, is not a whole number; fix: write it as digits, e.g. 40'
    >>> usage_error("the following arguments are required: --subject", "python -m core predict")
    '--subject: got nothing, is required; fix: python -m core predict --help lists the arguments'
    """
    helps = f"{prog} --help lists the arguments"
    if m := re.fullmatch(r"argument (\S+?): invalid choice: '?(.*?)'? \(choose from (.*)\)", message):
        options = ", ".join(o.strip(" '") for o in m.group(3).split(","))
        return f"{m.group(1).split('/')[0]}: got {m.group(2)}, is not a choice; fix: use one of {options}"
    if m := re.fullmatch(r"argument (\S+?): invalid (int|float) value: '(.*)'", message):
        kind = "a whole number" if m.group(2) == "int" else "a number"
        example = "40" if m.group(2) == "int" else "0.5"
        return f"{m.group(1).split('/')[0]}: got {m.group(3)}, is not {kind}; fix: write it as digits, e.g. {example}"
    if m := re.fullmatch(r"the following arguments are required: (.*)", message):
        return f"{m.group(1)}: got nothing, {'is' if ',' not in m.group(1) else 'are'} required; fix: {helps}"
    if m := re.fullmatch(r"unrecognized arguments: (.*)", message):
        return f"arguments: got {m.group(1)}, not known to {prog}; fix: {helps}"
    if m := re.fullmatch(r"argument (\S+?): (.*)", message):
        return f"{m.group(1).split('/')[0]}: {m.group(2)}; fix: {helps}"
    return f"{message}; fix: {helps}"


_NEGATIVE = re.compile(r"-\d")


def glue_negative_values(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """``--opt -30,365`` as ``--opt=-30,365`` for an option that takes one value: argparse reads a value that starts
    with a minus and is no plain number as an option ("expected one argument"), so the value's own check never
    ran and never said what is wrong with it.

    >>> p = argparse.ArgumentParser(); _ = p.add_argument("--horizons"); _ = p.add_argument("--json", action="store_true")
    >>> glue_negative_values(p, ["--horizons", "-30,365", "--json"])
    ['--horizons=-30,365', '--json']
    >>> glue_negative_values(p, ["--json", "-3"])
    ['--json', '-3']
    """
    takes_one = {o for a in parser._actions if a.nargs is None and a.option_strings for o in a.option_strings}
    out: list[str] = []
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in takes_one and i + 1 < len(tokens) and _NEGATIVE.match(tokens[i + 1]):
            out.append(f"{token}={tokens[i + 1]}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        _top_parser().print_help()
        return 0 if argv else EXIT_BAD_INPUT
    name = argv[0]
    if name not in COMMANDS:
        print(f"error: command: got {name!r}, not a command; fix: use one of {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = _Parser(prog=f"python -m core {name}", description=help_text)
    module.add_arguments(parser)
    parser.argv = argv[1:]
    try:
        args = parser.parse_args(glue_negative_values(parser, argv[1:]))
    except SystemExit as stop:  # --help, or a usage error already printed in one line
        return int(stop.code or 0) and EXIT_BAD_INPUT
    try:
        return int(module.run(args) or 0)
    except InputError as err:
        print(f"error: {_one_line(as_option(err, parser, args))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError, MemoryError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (``... | head``): what it wanted was printed; nothing to report
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 0
    except Exception as err:  # noqa: BLE001 - last resort: one line instead of a traceback
        print(f"error: internal {type(err).__name__}: {_one_line(err)} (please report this)", file=sys.stderr)
        return EXIT_INTERNAL


# the names core's functions give a value that a command takes as an option of another name
FIELD_OPTIONS = {"horizon_days": "horizon", "n_steps": "steps"}


def as_option(err: InputError, parser: argparse.ArgumentParser, args: argparse.Namespace) -> InputError:
    """``err`` named by the option the user typed (``--slice``, not ``slice_index``) when it is about that option's
    value; an error about anything else (a cohort.csv column that shares an option's name) keeps its field.

    >>> p = argparse.ArgumentParser(); _ = p.add_argument("--n-boot", type=int); _ = p.add_argument("--split")
    >>> args = p.parse_args(["--n-boot", "-5", "--split", "test"])
    >>> str(as_option(InputError("n_boot", -5, "must be >= 0", "pass 0 or more"), p, args))
    '--n-boot: got -5, must be >= 0; fix: pass 0 or more'
    >>> str(as_option(InputError("split", "no 'train' rows", "training needs one", "add rows"), p, args))
    "split: got no 'train' rows, training needs one; fix: add rows"
    """
    names = {err.field.replace("-", "_"), FIELD_OPTIONS.get(err.field, err.field)}
    for action in parser._actions:
        given = getattr(args, action.dest, None)
        if action.dest in names and action.option_strings and given is not None and str(given) == str(err.value):
            return InputError(max(action.option_strings, key=len), err.value, err.problem, err.fix)
    return err


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, FileNotFoundError) and err.filename and str(err.filename) not in text:
        text = f"{err.filename}: file not found"
    return text
