"""External validations kept on disk, and a validated model's recalibrated copy.

A validation of a model on a cohort a site uploaded is a result people come back to (a committee, a colleague on
another day), so the job that computes it (``core.app.background.validate_uploaded_job``) also keeps it in the user's
own folder: ``users/<key>/validations/<id>.json`` holds a short summary (when, the validated model and the others, the
upload's name, the site the user named, the subgroup column, the validated model's C-index, patients and events)
that the page lists without reading the results, and ``<id>.result.json`` the job's whole result (metrics, curves,
each patient's risk and outcome, the recalibration's report). Both are mode 0600 in a 0700 folder, written whole (a temporary file renamed), and kept
after the tab closes or the server restarts; a user keeps at most :data:`MAX_KEPT` (the oldest go first) and removes
one from the page. Nothing in them is trusted when read back: a file that is not a summary written here is skipped.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.app.workspace import TRAINED_MARKER, private_dir
from core.job_state import JobContext

FOLDER = "validations"  # users/<key>/validations
MAX_KEPT = 30  # a result holds each patient's risk and outcome: 0.6 MB for 10,000 patients
SITE_CHARS = 60  # a site's name: a line in a picker, a forest plot's row, a report's heading
_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{8}")


def site_name(text: str | None, upload: str) -> str:
    """How a validation names the cohort it was run on: the site the user typed (``text``, spaces collapsed), which
    the listing, the reports and the pooling of sites show (a site validated twice is one site there), or, when none
    was typed, the ``upload``'s file name. Refused (``InputError``) when longer than :data:`SITE_CHARS` characters or
    holding a control character.

    >>> site_name("  Hospital   B  2025 ", "export_0412.zip"), site_name("", "export_0412.zip")
    ('Hospital B 2025', 'export_0412.zip')
    """
    from core.errors import InputError

    site = " ".join(str(text or "").split())
    if len(site) > SITE_CHARS:
        raise InputError("site", site, f"is {len(site)} characters long, longer than {SITE_CHARS}",
                         "a short name of the hospital or cohort, such as 'Hospital B 2025'")
    if any(ord(c) < 32 or ord(c) == 127 for c in site):
        raise InputError("site", site, "holds a control character", "type the site's name as plain text")
    return site or str(upload)


@dataclass(frozen=True)
class Kept:
    """One kept validation as listed: ``id``, ``at`` ("YYYY-MM-DD HH:MM", the server's local time), the ``validated``
    model's name, the ``others`` evaluated beside it, the ``upload``'s file name, the ``subgroup`` column ("" none),
    the validated model's ``c_index`` (None: not computed), ``patients`` and ``events``, and ``version``: a stamp of
    the validated model's weights (``core.evaluation.model_fingerprint``; None: kept before the weights were recorded),
    so that a model replaced under the same name is told apart; ``site``: what the cohort is called
    (:func:`site_name`; the upload's file name for one kept before sites were named, or none was typed)."""

    id: str
    at: str
    validated: str
    others: tuple[str, ...]
    upload: str
    subgroup: str
    c_index: float | None
    patients: int
    events: int
    version: float | None = None
    site: str = ""

    @property
    def where(self) -> str:
        """The site's name, and the upload's file name in brackets when it is another: ``Hospital B (site_b.zip)``."""
        site = self.site or self.upload
        return site if site == self.upload else f"{site} ({self.upload})"

    def label(self) -> str:
        """One line for a picker: ``2026-11-29 17:40 · ehr_only (demo) on site_b.zip · C 0.662 · 120 patients``."""
        c = f"C {self.c_index:.3f}" if self.c_index is not None else "C not computed"
        more = f" and {len(self.others)} more" if self.others else ""
        return f"{self.at} · {self.validated}{more} on {self.where} · {c} · {self.patients} patients"


def folder(user_dir: Path | str) -> Path:
    """``<user_dir>/validations`` (mode 0700), created on first use."""
    return private_dir(Path(user_dir) / FOLDER)


def _text(data: Any) -> str:
    from core.evaluation import json_plain  # the metrics hold numpy numbers and arrays

    return json.dumps(data, default=json_plain)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # removed meanwhile


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def save(user_dir: Path | str, results: dict[str, dict], validated: str, upload: str, subgroup: str | None = None,
         now: float | None = None, site: str | None = None) -> str:
    """Keep ``results`` (``validate_uploaded_job``'s {model name: metrics}, ``validated`` the model the user chose)
    of the cohort uploaded as ``upload`` (its file name) from ``site`` (:func:`site_name`; None: the file name) for the
    user of ``user_dir`` (``<data dir>/users/<key>``);
    the oldest beyond :data:`MAX_KEPT` go. Returns the new validation's id. Refused (``InputError``) when the files
    would take the user or the server over their disk quota, counting the room the oldest beyond :data:`MAX_KEPT`
    would leave (the user's caches give way first): no kept validation is removed then."""
    from core.app.workspace import check_quota_in

    if validated not in results:
        raise ValueError(f"validated: {validated!r} is not among the results {sorted(results)}; fix: pass the name "
                         "of the model the validation was started for")
    stamp = now if now is not None else time.time()
    kept_id = f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(stamp))}-{secrets.token_hex(4)}"
    first = results[validated]
    summary = _text({
        "at": time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp)), "validated": validated,
        "others": [n for n in results if n != validated], "upload": str(upload), "subgroup": subgroup or "",
        "site": site_name(site, upload),
        "c_index": first.get("c_index"), "patients": int(first.get("n") or 0),
        "events": int(first.get("events") or 0),
        "version": (first.get("validated_on") or {}).get("model_fingerprint") or None})
    whole, root = _text(results), Path(user_dir)
    pruned = listing(user_dir)[MAX_KEPT - 1:]  # room for the new one, removed once the quota allows it
    freed = sum(_size(root / FOLDER / f"{k.id}{end}") for k in pruned for end in (".json", ".result.json"))
    check_quota_in(root, root.parent.parent, max(0, len(whole.encode()) + len(summary.encode()) - freed))
    for old in pruned:
        remove(user_dir, old.id)
    base = folder(user_dir)
    _write(base / f"{kept_id}.result.json", whole)  # the summary last: a listed validation always has its result
    _write(base / f"{kept_id}.json", summary)
    return kept_id


def _summary(path: Path) -> Kept | None:
    try:
        raw = json.loads(path.read_text())
        c = raw["c_index"]
        return Kept(path.name[:-len(".json")], str(raw["at"]), str(raw["validated"]),
                    tuple(str(n) for n in raw["others"]), str(raw["upload"]), str(raw["subgroup"]),
                    None if c is None else float(c), int(raw["patients"]), int(raw["events"]),
                    float(raw["version"]) if raw.get("version") else None, str(raw.get("site") or raw["upload"]))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None  # removed meanwhile, being written, or not written here


def listing(user_dir: Path | str) -> list[Kept]:
    """The user's kept validations, newest first (ids start with the time they were kept)."""
    base = Path(user_dir) / FOLDER
    if not base.is_dir():
        return []
    found = (_summary(p) for p in base.glob("*.json") if _ID.fullmatch(p.name[:-len(".json")]))
    return sorted((k for k in found if k is not None), key=lambda k: k.id, reverse=True)


def by_model(kept: list[Kept]) -> dict[str, list[Kept]]:
    """``kept`` (newest first) with a C-index, by the model they validated, newest first in each; a model replaced
    under its name (other weights: :attr:`Kept.version`) is split into ``"<name> (version N, validated from <at>)"``,
    N counted from its oldest weights, and ``"<name> (weights not recorded)"`` for those kept before the weights were.

    >>> k = [Kept(str(i), f"2026-11-2{i} 10:00", "m", (), f"s{i}.zip", "", 0.7, 50, 10, v)
    ...      for i, v in ((3, 2.0), (2, 1.0), (1, None))]
    >>> {name: [x.id for x in ks] for name, ks in by_model(k).items()}
    {'m (version 1, validated from 2026-11-22 10:00)': ['2'], 'm (version 2, validated from 2026-11-23 10:00)': ['3'], 'm (weights not recorded)': ['1']}
    """
    out: dict[str, list[Kept]] = {}
    for k in kept:
        if k.c_index is not None:
            out.setdefault(k.validated, []).append(k)
    for name, ks in list(out.items()):
        versions = list(dict.fromkeys(k.version for k in reversed(ks)))  # oldest first
        if len(versions) > 1:
            del out[name]
            for n, v in enumerate([v for v in versions if v is not None], 1):
                first = next(k.at for k in reversed(ks) if k.version == v)
                out[f"{name} (version {n}, validated from {first})"] = [k for k in ks if k.version == v]
            if None in versions:
                out[f"{name} (weights not recorded)"] = [k for k in ks if k.version is None]
    return out


def load(user_dir: Path | str, kept_id: str) -> dict[str, dict] | None:
    """The whole result of the kept validation ``kept_id``, or None (no such validation, or a damaged file)."""
    if not _ID.fullmatch(str(kept_id)):
        return None
    try:
        raw = json.loads((Path(user_dir) / FOLDER / f"{kept_id}.result.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return raw if isinstance(raw, dict) and all(isinstance(v, dict) for v in raw.values()) else None


def remove(user_dir: Path | str, kept_id: str) -> None:
    """Remove the kept validation ``kept_id`` (its summary first, so that it is never listed without its result)."""
    if not _ID.fullmatch(str(kept_id)):
        raise ValueError(f"kept_id: {kept_id!r} is not a validation's id; fix: pass an id from listing()")
    base = Path(user_dir) / FOLDER
    (base / f"{kept_id}.json").unlink(missing_ok=True)
    (base / f"{kept_id}.result.json").unlink(missing_ok=True)


def recalibrated_copy(ctx: JobContext, model_dir: str, cohort_dir: Path, spec: dict[str, str], device: str) -> dict:
    """:func:`core.recalibrate.recalibrate_model` of ``model_dir`` on every subject of ``cohort_dir`` into
    ``spec["out"]``, marked as a model of this user (``trained_models`` lists it, evaluated on ``base_cohort``)."""
    from core.evaluation import ALL_SPLITS
    from core.recalibrate import recalibrate_model

    report = recalibrate_model(model_dir, cohort_dir, spec["out"], split=ALL_SPLITS, device=device, label=spec["site"],
                               progress=lambda f, m: ctx.progress(0.85 + 0.15 * f, f"recalibrating: {m}"))
    config = json.loads((Path(model_dir) / "config.json").read_text())
    (Path(spec["out"]) / TRAINED_MARKER).write_text(json.dumps({
        "cohort_dir": spec["base_cohort"], "fusion": config.get("fusion"), "label": spec["label"],
        "recalibrated_from": str(model_dir), "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    return {**report, "label": spec["label"]}
