"""A user's saved cases: a gated CT study and/or a subject's timeline, kept in the user's folder.

Each case is ``users/<key>/cases/<case id>/`` (``core.app.workspace``): ``case.json`` (number, date added,
modalities, series, index date), the study's bytes as they passed the PHI gate (``study.zip`` / ``.dcm`` /
``.nii`` / ``.nii.gz``), ``timeline.parquet`` (the subject's events, its id replaced by the case id) and
``features.json`` (clinical values such as age or the last lab results, named as a cohort's features.csv
columns: the curated features of models trained on one; :func:`check_case_features`), and ``decoded/``: the
study decoded once (``core.io.study_cache``, the HU array read back memory-mapped, so reopening a full-resolution
CT costs no decoding and no session memory; inside the user's quota, the first to give way when the quota is full,
and left out when it has no room). Case
ids are random hex chosen here; any other id is refused, so no path from a request can leave the user's
folder, and another user's id is simply not found. Writes check the quotas first and appear whole or not at
all (a hidden folder renamed into place). Cases persist across pages, reloads and server restarts.

>>> import tempfile, pathlib
>>> with tempfile.TemporaryDirectory() as tmp:
...     info = save_case("alice", study=None, events=_demo_events(), index_time="2020-02-01", base=pathlib.Path(tmp))
...     [c.describe()[:17] for c in list_cases("alice", base=pathlib.Path(tmp))], list_cases("bob", base=pathlib.Path(tmp))
(['Case 1 · timeline'], [])
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from core.app.workspace import DECODED, LOCK, MAPS, check_quota, private_dir, user_cases_dir, user_quota_bytes, user_root
from core.errors import InputError
from core.io.contrast import META_KEY as CONTRAST_META
from core.io.contrast import STATED_SOURCE, table_contrast, with_record
from core.io.study_cache import VIEWER_NIFTI, StudyCache
from core.io.volume import Volume

_CASE_ID = re.compile(r"^[0-9a-f]{16}$")
FEATURES_FILE = "features.json"
FEATURES_MODALITY = "clinical values"
MAX_FEATURES = 500  # values of one case
MAX_FEATURE_NAME = 64  # characters of a value's name


@dataclass(frozen=True)
class CaseInfo:
    """One saved case of a user (``case.json``)."""

    case_id: str
    number: int  # the user's own running number: "Case 3"
    added: str  # ISO date and time (UTC) the case was saved
    modalities: tuple[str, ...]  # "CT", "timeline", "clinical values"
    path: Path
    study_file: str = ""  # file name inside the case folder ("" without a CT)
    series: str | None = None  # the series chosen in the study (None: the loader's default)
    deidentified: bool = False
    index_time: str = ""  # ISO, "" without a timeline
    version: int = 1  # raised when a timeline is added
    contrast: str = ""  # "yes" / "no" as stated on Upload for a study whose file records none ("": not stated)

    @property
    def label(self) -> str:
        return f"Case {self.number}"

    @property
    def study_path(self) -> Path | None:
        return self.path / self.study_file if self.study_file else None

    @property
    def timeline_path(self) -> Path | None:
        p = self.path / "timeline.parquet"
        return p if p.is_file() else None

    @property
    def features_path(self) -> Path | None:
        p = self.path / FEATURES_FILE
        return p if p.is_file() else None

    def describe(self) -> str:
        """``Case 3 · CT + timeline · added 2026-11-22 12:30``."""
        return f"{self.label} · {' + '.join(self.modalities) or 'empty'} · added {self.added[:16].replace('T', ' ')}"


def _modalities(study: bool, timeline: bool, features: bool) -> list[str]:
    return (["CT"] if study else []) + (["timeline"] if timeline else []) + ([FEATURES_MODALITY] if features else [])


def check_case_features(values: Mapping[str, object] | None) -> dict[str, float]:
    """A case's clinical values as {name: finite float}: blank, None and NaN entries are dropped (read as missing).

    >>> check_case_features({"age": "61.5", "sex_female": 1, "last_bnp": None, "note": ""})
    {'age': 61.5, 'sex_female': 1.0}
    >>> check_case_features({"age": "sixty"})
    Traceback (most recent call last):
    ...
    core.errors.InputError: clinical value age: got sixty, is not a number; fix: enter a number, or leave it blank (read as missing)
    """
    out: dict[str, float] = {}
    for name, value in (values or {}).items():
        key = str(name).strip()
        if not key or len(key) > MAX_FEATURE_NAME or not key.isprintable():
            raise InputError("clinical value name", key[:MAX_FEATURE_NAME] + ("..." if len(key) > MAX_FEATURE_NAME else ""),
                             f"must be 1 to {MAX_FEATURE_NAME} printable characters", "name it as the features.csv column")
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise InputError(f"clinical value {key}", str(value)[:40], "is not a number",
                             "enter a number, or leave it blank (read as missing)") from None
        if math.isnan(number):
            continue
        if not math.isfinite(number):
            raise InputError(f"clinical value {key}", str(value), "is not finite", "enter a finite number, or leave it blank")
        out[key] = number
    if len(out) > MAX_FEATURES:
        raise InputError("clinical values", f"{len(out)} values", f"are more than {MAX_FEATURES}",
                         "keep the columns the models read (the model card lists them)")
    return out


def case_features(info: CaseInfo) -> dict[str, float]:
    """The case's clinical values ({} without any)."""
    path = info.features_path
    return check_case_features(json.loads(path.read_text())) if path is not None else {}


def _check_case_id(case_id: str) -> str:
    if not isinstance(case_id, str) or not _CASE_ID.fullmatch(case_id):
        shown = case_id if isinstance(case_id, str) and len(case_id) <= 40 else f"a {type(case_id).__name__}"
        raise InputError("case", shown, "is not a case id of this workspace",
                         "pick a case from the list on the Upload or Case review page")
    return case_id


def _read_info(folder: Path) -> CaseInfo:
    raw = json.loads((folder / "case.json").read_text())
    return CaseInfo(case_id=folder.name, number=int(raw["number"]), added=str(raw["added"]),
                    modalities=tuple(raw.get("modalities", [])), path=folder, study_file=str(raw.get("study_file", "")),
                    series=raw.get("series"), deidentified=bool(raw.get("deidentified", False)),
                    index_time=str(raw.get("index_time", "")), version=int(raw.get("version", 1)),
                    contrast=table_contrast(raw.get("contrast", "")))


def _write_info(folder: Path, info: dict) -> None:
    tmp = folder / ".case.json.tmp"
    tmp.write_text(json.dumps(info, indent=1))
    os.chmod(tmp, 0o600)
    os.replace(tmp, folder / "case.json")


def list_cases(user: str, base: Path | None = None) -> list[CaseInfo]:
    """The user's saved cases, oldest first (unfinished or unreadable folders are skipped)."""
    root = user_cases_dir(user, base)
    cases = []
    for folder in root.iterdir():
        if not _CASE_ID.fullmatch(folder.name) or folder.is_symlink() or not (folder / "case.json").is_file():
            continue
        try:
            cases.append(_read_info(folder))
        except (OSError, ValueError, KeyError):
            continue
    return sorted(cases, key=lambda c: (c.number, c.added))


def get_case(user: str, case_id: str, base: Path | None = None) -> CaseInfo:
    """One of the user's cases; another user's case id, or any other text, is refused as unknown."""
    folder = user_cases_dir(user, base) / _check_case_id(case_id)
    if folder.is_symlink() or not (folder / "case.json").is_file():
        raise InputError("case", case_id, "is not one of your saved cases",
                         "pick a case from the list on the Upload or Case review page")
    return _read_info(folder)


def _study_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in (".nii.gz", ".nii", ".zip"):
        if lower.endswith(suffix):
            return suffix
    return ".dcm"


def _events_frame(events: pd.DataFrame, case_id: str) -> pd.DataFrame:
    """The events to keep: the four MEDS columns, the subject id replaced by the case id."""
    missing = [c for c in ("time", "code") if c not in events.columns]
    if missing:
        raise InputError("timeline", ", ".join(map(str, events.columns)), f"lacks {', '.join(missing)}",
                         "pass the frame read by core.io.timeline")
    frame = pd.DataFrame({"subject_id": case_id, "time": pd.to_datetime(events["time"]).to_numpy(),
                          "code": events["code"].astype(str).to_numpy(),
                          "numeric_value": pd.to_numeric(events.get("numeric_value", pd.Series(float("nan"), index=events.index)),
                                                         errors="coerce").astype("float64").to_numpy()})
    return frame


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    import io

    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def _next_number(user: str, base: Path | None) -> int:
    counter = user_root(user, base) / "case_counter"
    try:
        last = int(counter.read_text().strip() or 0)
    except (OSError, ValueError):
        last = 0
    last = max([last] + [c.number for c in list_cases(user, base)])
    tmp = counter.with_suffix(".tmp")
    tmp.write_text(str(last + 1))
    os.chmod(tmp, 0o600)
    os.replace(tmp, counter)
    return last + 1


def _iso_time(index_time: object) -> str:
    if index_time is None:
        return ""
    t = pd.Timestamp(index_time)
    if pd.isna(t):
        raise InputError("index date", str(index_time), "is not a date", "pick the scan date")
    return t.isoformat()


def save_case(user: str, *, study: bytes | None = None, study_name: str = "", series: str | None = None,
              deidentified: bool = False, events: pd.DataFrame | None = None, index_time: object = None,
              contrast: str = "", features: Mapping[str, object] | None = None,
              base: Path | None = None) -> CaseInfo:
    """Write a new case of ``user`` (a study's bytes and/or a subject's events, and any clinical values) and return it.

    ``contrast``: "yes" / "no" as the user stated it for a study whose file records none (``core.io.contrast``);
    the case's CT is then loaded with that record.

    Call only with data that passed the PHI gate: ``core.app.uploads.CheckedStudy.bytes_to_store`` refuses
    otherwise. The quotas are checked before anything is written; the case folder appears complete or not at
    all (written under a hidden name, then renamed).
    """
    if study is None and (events is None or events.empty):
        raise InputError("case", "nothing", "needs a CT study or a timeline", "upload a study or a timeline first")
    stated = table_contrast(contrast, source="the case's contrast") if study is not None else ""  # checked first
    values = check_case_features(features)
    case_id = secrets.token_hex(8)
    payload: dict[str, bytes] = {}
    if study is not None:
        payload["study" + _study_suffix(study_name or "study.zip")] = bytes(study)
    if events is not None and not events.empty:
        payload["timeline.parquet"] = _parquet_bytes(_events_frame(events, case_id))
    if values:
        payload[FEATURES_FILE] = json.dumps(values, indent=1).encode()
    with LOCK:
        check_quota(user, sum(len(v) for v in payload.values()), base)
        root = user_cases_dir(user, base)
        staging = private_dir(root / f".new-{case_id}")
        try:
            for name, data in payload.items():
                target = staging / name
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
            modalities = _modalities(study is not None, "timeline.parquet" in payload, bool(values))
            info = {"number": _next_number(user, base), "added": pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%dT%H:%M:%S"),
                    "modalities": modalities, "study_file": next((n for n in payload if n.startswith("study")), ""),
                    "series": series, "deidentified": bool(deidentified),
                    "index_time": _iso_time(index_time) if "timeline.parquet" in payload else "", "version": 1,
                    "contrast": stated}
            _write_info(staging, info)
            os.replace(staging, root / case_id)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return get_case(user, case_id, base)


def add_timeline(user: str, case_id: str, events: pd.DataFrame, index_time: object,
                 base: Path | None = None) -> CaseInfo:
    """Add (or replace) the timeline of one of the user's cases; the CT stays as it is."""
    info = get_case(user, case_id, base)
    if events is None or events.empty:
        raise InputError("timeline", "0 events", "is empty", "upload a timeline with rows for this subject")
    data = _parquet_bytes(_events_frame(events, case_id))
    with LOCK:
        old = info.timeline_path.stat().st_size if info.timeline_path else 0
        check_quota(user, max(0, len(data) - old), base)
        tmp = info.path / ".timeline.parquet.tmp"
        tmp.write_bytes(data)
        os.chmod(tmp, 0o600)
        os.replace(tmp, info.path / "timeline.parquet")
        raw = json.loads((info.path / "case.json").read_text())
        raw["modalities"] = _modalities(bool(info.study_file), True, info.features_path is not None)
        raw["index_time"] = _iso_time(index_time)
        raw["version"] = int(raw.get("version", 1)) + 1
        _write_info(info.path, raw)
    return get_case(user, case_id, base)


def set_features(user: str, case_id: str, features: Mapping[str, object] | None,
                 base: Path | None = None) -> CaseInfo:
    """Replace the clinical values of one of the user's cases (none given: they are removed); CT and timeline stay."""
    info = get_case(user, case_id, base)
    values = check_case_features(features)
    data = json.dumps(values, indent=1).encode()
    with LOCK:
        old = info.features_path.stat().st_size if info.features_path else 0
        check_quota(user, max(0, len(data) - old), base)
        if values:
            tmp = info.path / f".{FEATURES_FILE}.tmp"
            tmp.write_bytes(data)
            os.chmod(tmp, 0o600)
            os.replace(tmp, info.path / FEATURES_FILE)
        elif info.features_path is not None:
            info.features_path.unlink()
        raw = json.loads((info.path / "case.json").read_text())
        raw["modalities"] = _modalities(bool(info.study_file), info.timeline_path is not None, bool(values))
        raw["version"] = int(raw.get("version", 1)) + 1
        _write_info(info.path, raw)
    return get_case(user, case_id, base)


def set_series(user: str, case_id: str, series: str, base: Path | None = None) -> CaseInfo:
    """Read another series of one of the user's saved studies (a multi-phase study's other phase); version + 1.
    The series must load from the stored study (``load_study_bytes`` names the study's series otherwise)."""
    info = get_case(user, case_id, base)
    if info.study_path is None:
        raise InputError("series", str(series)[:64], "belongs to no study: this case has no CT", "upload the study first")
    from core.io.study import load_study_bytes

    load_study_bytes(info.study_path.read_bytes(), info.study_file, series=series)  # refused here if not in the study
    with LOCK:
        raw = json.loads((info.path / "case.json").read_text())
        raw["series"] = series
        raw["version"] = int(raw.get("version", 1)) + 1
        _write_info(info.path, raw)
    return get_case(user, case_id, base)


def delete_case(user: str, case_id: str, base: Path | None = None) -> None:
    """Delete one of the user's cases and everything in its folder."""
    info = get_case(user, case_id, base)
    with LOCK:
        trash = info.path.with_name(f".del-{case_id}")
        os.replace(info.path, trash)
        shutil.rmtree(trash, ignore_errors=True)


def case_events(info: CaseInfo) -> pd.DataFrame | None:
    """The case's saved events (subject id = the case id), or None."""
    path = info.timeline_path
    if path is None:
        return None
    frame = pd.read_parquet(path)
    frame["subject_id"] = frame["subject_id"].astype(str)
    frame["time"] = pd.to_datetime(frame["time"]).astype("datetime64[ns]")
    return frame


def case_index_time(info: CaseInfo) -> pd.Timestamp | None:
    return pd.Timestamp(info.index_time) if info.index_time else None


def decoded_cache(info: CaseInfo) -> StudyCache:
    """The case's decoded study and what is derived from it (the CT viewer's NIfTI): two series at most."""
    return StudyCache(private_dir(info.path / DECODED), max_entries=2, max_bytes=user_quota_bytes())


def maps_dir(info: CaseInfo) -> Path:
    """The folder of the case's attribution maps (``core.app.attribution_volume``): in the user's quota, deleted with
    the case, given way to a real save as the decoded copies are."""
    return private_dir(info.path / MAPS)


def has_room(user: str, n_bytes: int, base: Path | None = None) -> bool:
    """Whether ``n_bytes`` more fit the user's and the server's quotas as they are (a decoded copy that does not fit
    is not kept, and evicts no other)."""
    try:
        check_quota(user, n_bytes, base, drop=False)
    except InputError:
        return False
    return True


def load_case_volume(info: CaseInfo, user: str | None = None, base: Path | None = None) -> Volume | None:
    """The case's CT as a ``Volume`` (loaded from the stored, gated bytes), or None without a CT.

    With ``user`` (the case's owner): decoded once and kept in the case's ``decoded/`` folder while the quotas
    have room, its HU array read back memory-mapped from then on.
    """
    if info.study_path is None:
        return None
    from core.io.study import load_study_bytes

    path = info.study_path

    def decode() -> Volume:
        return load_study_bytes(path.read_bytes(), info.study_file, series=info.series)

    if user is None:
        volume = decode()
    else:
        volume = decoded_cache(info).load(path, decode, series=info.series,
                                          room=lambda n: has_room(user, n, base))
    return stated_contrast(volume, info.contrast)


def case_viewer_nifti(info: CaseInfo, user: str, build: Callable[[], bytes], base: Path | None = None) -> bytes:
    """The CT viewer's gzipped NIfTI of the case's study: ``build()`` once, then kept in ``decoded/`` while the
    quotas have room."""
    if info.study_path is None:
        return build()
    cache = decoded_cache(info)
    return cache.derived(info.study_path, VIEWER_NIFTI, build, series=info.series,
                         room=lambda n: has_room(user, n, base))


def stated_contrast(volume: Volume, contrast: str) -> Volume:
    """``volume`` with the contrast the user stated on Upload (a copy), unless its file records one itself."""
    if not contrast or volume.meta.get(CONTRAST_META):
        return volume
    return replace(volume, meta=with_record(volume.meta, table_contrast(contrast), STATED_SOURCE))


def _demo_events() -> pd.DataFrame:
    """Two events, for the module's example."""
    return pd.DataFrame({"subject_id": "1", "time": pd.to_datetime(["2020-01-01", "2020-01-15"]),
                         "code": ["DX//A", "LAB//B"], "numeric_value": [float("nan"), 1.5]})
