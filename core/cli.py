"""``python -m core COMMAND ...``: the command line (every command: one-line errors, ``--json`` for one object).

Only the module of the command that runs is imported, so ``inspect`` never
pulls in torch. Bad input ends in a one-line ``error: ...`` on stderr and a
non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from core.errors import InputError

# command -> (module, one-line help). Keep in the order users meet them.
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("core.commands.inspect", "load a study (DICOM file/folder/zip or NIfTI) and print geometry, HU and PHI"),
    "deid": ("core.commands.deid", "write a de-identified copy of a DICOM study and report what changed"),
    "timeline": ("core.commands.timeline", "summarise one subject's MEDS timeline"),
    "demo": ("core.commands.demo", "write the embedded demo cohort (CT phantoms, MEDS timelines, outcomes)"),
    "train": ("core.commands.train", "train a fusion survival model on a cohort"),
    "pretrain": ("core.commands.pretrain", "time-to-event pretraining of the image encoder"),
    "evaluate": ("core.commands.evaluate", "evaluate a model on a cohort's test split"),
    "predict": ("core.commands.predict", "individual survival curve for one subject"),
    "compare": ("core.commands.compare", "train every fusion strategy and write a comparison table"),
    "explain": ("core.commands.explain", "attribution figure (saliency, IG, Grad-CAM, occlusion) for one subject"),
    "sanity": ("core.commands.sanity", "sanity checks of explanations (randomization test, pointing game)"),
    "export-dicom": ("core.commands.export_dicom", "export a case as DICOM: saliency Parametric Map, top-region Segmentation, prediction SR"),
    "recalibrate": ("core.commands.recalibrate", "write a copy of a model recalibrated to a site's cohort"),
    "cohort": ("core.commands.cohort", "build a cohort folder from a MEDS dataset and an ACES task definition"),
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
    parser = argparse.ArgumentParser(prog=f"python -m core {name}", description=help_text)
    module.add_arguments(parser)
    try:
        args = parser.parse_args(argv[1:])
    except SystemExit as stop:  # argparse already printed a one-line usage error
        return int(stop.code or 0) and EXIT_BAD_INPUT
    try:
        return int(module.run(args) or 0)
    except (InputError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError, MemoryError) as err:
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


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, FileNotFoundError) and err.filename and str(err.filename) not in text:
        text = f"{err.filename}: file not found"
    return text
