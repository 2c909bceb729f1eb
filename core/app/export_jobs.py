"""A case's exports as background jobs (``core.jobs``) for the Export page: the DICOM objects and the map as NIfTI.

Each reads the case's whole-volume map from its store (``core.app.attribution_volume.MapStore``), so a
full-resolution case's export runs in the job's own process (one heavy job at a time) with the CT sent by its decoded
copy's file name (``core.job_pickle``), not in the server's page run.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from core.jobs import JobContext


def _kept_map(store: Any, key: str, amap: Any) -> Any:
    """``amap``, or the map kept in ``store`` (a ``core.app.attribution_volume.MapStore``) under ``key`` when None."""
    from core.errors import InputError

    values = store.cache().get(key) if amap is None else amap
    if values is None:
        raise InputError("map", key[:12], "is no longer kept (trimmed since it was shown)",
                         "show the map in Case review again, then prepare the export")
    return values


def dicom_export_job(ctx: JobContext, volume: Any, store: Any, key: str, amap: Any, risk_at: dict[int, float],
                     modalities: list[str], times: Any, model_dir: str, method: str, folder: str, name: str,
                     study_path: str | None) -> tuple[str, str]:
    """A case's DICOM objects for the Export page (``core.dicom_export``: Parametric Map, Segmentation, SR, and a
    derived CT series for a NIfTI study) zipped to ``folder/name``: ``(zip path, one-line summary)``. The map is
    ``amap``, or read from ``store`` (a ``core.app.attribution_volume.MapStore``) under ``key`` when None, so a
    full-resolution case's export (a gigabyte of working memory, 15-40 s) runs in the job's own process."""
    from core.dicom_export import export_dicom, model_info, source_series_for, zip_folder

    ctx.progress(0.0, "reading the map")
    values = _kept_map(store, key, amap)
    out = Path(folder) / "objects"
    ctx.progress(0.1, "the source series")
    series = source_series_for(volume, out, study_path=Path(study_path) if study_path else None)
    ctx.progress(0.3, "the Parametric Map, Segmentation and SR")
    result = export_dicom(volume, values, risk_at, modalities, model_info(Path(model_dir)), method, out, source=series,
                          times=times)
    ctx.progress(0.9, "zipping")
    archive = zip_folder(out, Path(folder) / name)
    shutil.rmtree(out, ignore_errors=True)  # the zip holds them: one copy on disk, in the user's quota
    parts = [f"{result.n_frames} frames", f"segment of {result.region_voxels} voxels"]
    parts += ["derived CT series included (the study was not DICOM)"] if result.derived_series else []
    return str(archive), "; ".join(parts + list(result.warnings)) + "."


def nifti_map_job(ctx: JobContext, volume: Any, store: Any, key: str, amap: Any, folder: str, name: str) -> str:
    """A case's whole map as NIfTI for the Export page (``core.app.volume_nifti.map_to_nifti``: float32, signed, on
    the study's own axes and affine) written to ``folder/name``; returns its path. The map as for
    :func:`dicom_export_job`; a full-resolution case's (half a gigabyte of copies at 512 x 512 x 150, 5 s) is made in
    the job's own process, not in the server's page run."""
    from core.app.volume_nifti import map_to_nifti

    ctx.progress(0.0, "reading the map")
    values = _kept_map(store, key, amap)
    ctx.progress(0.2, "writing the NIfTI file")
    path = Path(folder) / name
    path.write_bytes(map_to_nifti(volume, values, as_source=True))
    ctx.progress(1.0, "done")
    return str(path)
