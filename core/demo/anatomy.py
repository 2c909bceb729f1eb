"""The organs of a real CT found without mask files, for real-anatomy cohorts (``core.demo.real_anatomy``).

All rules run on a median-filtered copy of the CT, split into connected components:

* body: > -500 HU, the largest component, holes filled slice by slice;
* liver: 38-80 HU, opened twice, the largest component on the patient's right, grown back and hole-filled;
* bone (vertebra): > 100 HU, the largest component near the midline and posterior, closed once (not
  hole-filled, so the spinal canal stays out);
* lung bases: < -500 HU inside the body, components in the posterior half that reach the top slice;
* spleen: soft tissue on the patient's left lateral to the stomach (finds only its thin lateral part);
* muscle (the paraspinal muscles): 20-80 HU behind the vertebra's centroid and within 22 % of the body width of
  it, opened once; the largest component and a second one of at least 30 % of its size (left and right).

``save_organ_overlay`` and ``save_subject_overlay`` draw PNGs to check the rules by eye.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from core.errors import InputError

# ../shared/data beside the checkout, or $SHARED_DATA (as the tests use it)
DEFAULT_CT = Path(os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data")) / "ct" / "example_ct_sm.nii.gz"
ORGANS = ("liver", "bone", "lung", "spleen", "muscle")
DEFAULT_ORGANS = ("liver", "bone")
LABELS = {"liver": 1, "bone": 2, "lung": 3, "spleen": 4, "muscle": 5}


@dataclass(frozen=True)
class BaseAnatomy:
    """The real CT the cohort is rendered from, with its organ masks (computed once)."""

    hu: np.ndarray                       # float32 [S, R, C]
    spacing_mm: tuple[float, float, float]
    body: np.ndarray                     # bool [S, R, C]
    masks: dict[str, np.ndarray]         # organ -> bool [S, R, C]
    inscribed_mm: dict[str, float]       # organ -> largest distance from a mask voxel to the boundary

    def labels(self) -> np.ndarray:
        """uint8 label map (``LABELS``; 0 elsewhere)."""
        out = np.zeros(self.hu.shape, dtype=np.uint8)
        for name, mask in self.masks.items():
            out[mask & (out == 0)] = LABELS[name]
        return out


def _largest(mask: np.ndarray, keep: Callable[[np.ndarray], bool] | None = None) -> np.ndarray:
    """The largest connected component of ``mask`` (6-connectivity) for which ``keep(voxels)`` holds."""
    lab, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = ndimage.sum(mask, lab, range(1, n + 1))
    for k in np.argsort(-sizes):
        comp = lab == (k + 1)
        if keep is None or keep(np.argwhere(comp)):
            return comp
    return np.zeros_like(mask, dtype=bool)


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.binary_fill_holes(m) for m in mask])


def find_organs(hu: np.ndarray, spacing_mm: Sequence[float]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Body mask and organ masks (liver, bone, lung, spleen, muscle) of an abdominal CT by HU ranges and components.

    ``hu`` is float ``[slices, rows, cols]`` in the :mod:`core.io.volume`
    convention (slice 0 inferior, rows anterior -> posterior, columns the
    patient's right -> left). The rules are those of the module docstring;
    an organ that is not found gets an empty mask (callers check).
    """
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim != 3 or min(hu.shape) < 3:
        raise InputError("ct", hu.shape, "must be a 3D volume of at least 3 voxels per axis", "pass an abdominal CT volume")
    sm = ndimage.median_filter(hu, size=3)
    body = _fill_slices(_largest(sm > -500.0))
    if body.sum() == 0:
        raise InputError("ct", "no voxel above -500 HU", "shows no body", "pass a CT in Hounsfield units")
    centre = np.argwhere(body).mean(0)
    cols = np.nonzero(body.any(axis=(0, 1)))[0]
    width = float(cols.max() - cols.min() + 1)
    six = ndimage.generate_binary_structure(3, 1)
    soft = (sm > 38.0) & (sm < 80.0) & body

    opened = ndimage.binary_opening(soft, structure=six, iterations=2)
    liver = _largest(opened, lambda v: v[:, 2].mean() < centre[2])
    liver = ndimage.binary_dilation(liver, structure=six, iterations=2) & soft
    liver = _largest(liver)
    liver = _fill_slices(liver)

    bone_raw = (sm > 100.0) & body
    bone = _largest(bone_raw, lambda v: abs(v[:, 2].mean() - centre[2]) < 0.12 * width and v[:, 1].mean() > centre[1])
    bone = ndimage.binary_closing(bone, structure=six, iterations=1) | bone

    top = hu.shape[0] - 1
    air = (sm < -500.0) & body
    lab, _ = ndimage.label(air)
    lung = np.zeros_like(air)
    for k, sl in enumerate(ndimage.find_objects(lab)):
        if sl is None or sl[0].stop - 1 != top:
            continue
        comp = lab == (k + 1)
        if np.argwhere(comp)[:, 1].mean() > centre[1] and comp.sum() >= 50:
            lung |= comp

    opened1 = ndimage.binary_opening(soft, structure=six, iterations=1)
    near_liver = ndimage.binary_dilation(liver, structure=six, iterations=1)
    spleen = _largest(opened1 & ~near_liver,
                      lambda v: v[:, 2].mean() > centre[2] + 0.2 * width and v[:, 1].mean() > centre[1])
    spleen = _fill_slices(spleen) & ~liver
    muscle = _paraspinal(sm, body, bone, width)
    masks = {"liver": liver, "bone": bone & ~liver, "lung": lung, "spleen": spleen & ~bone,
             "muscle": muscle & ~liver & ~bone & ~spleen}
    return body, masks


def _paraspinal(sm: np.ndarray, body: np.ndarray, bone: np.ndarray, width: float) -> np.ndarray:
    """The paraspinal muscles: soft tissue (20-80 HU) behind the vertebra and near it, opened once; the largest
    component and a second one (the other side) of at least 30 % of its size. Empty without a vertebra."""
    if not bone.any():
        return np.zeros_like(body)
    spine = np.argwhere(bone).mean(0)
    rows = np.arange(sm.shape[1])[None, :, None]
    cols = np.arange(sm.shape[2])[None, None, :]
    behind = (rows > spine[1]) & (np.abs(cols - spine[2]) < 0.22 * width)
    soft = (sm > 20.0) & (sm < 80.0) & body & behind & ~ndimage.binary_dilation(bone, iterations=1)
    soft = ndimage.binary_opening(soft, structure=ndimage.generate_binary_structure(3, 1), iterations=1)
    lab, n = ndimage.label(soft)
    if n == 0:
        return soft
    sizes = ndimage.sum(soft, lab, range(1, n + 1))
    order = np.argsort(-sizes)[:2]
    return np.isin(lab, [int(k) + 1 for k in order if sizes[k] >= 0.3 * sizes[order[0]]])


@functools.lru_cache(maxsize=4)
def _load_base(path: str, mtime_ns: int) -> BaseAnatomy:
    from core.io.study import load_study

    vol = load_study(path)
    hu = np.ascontiguousarray(vol.hu, dtype=np.float32)
    spacing = tuple(float(s) for s in vol.spacing_mm)
    body, masks = find_organs(hu, spacing)
    inscribed = {}
    for name, mask in masks.items():
        inscribed[name] = float(ndimage.distance_transform_edt(mask, sampling=spacing).max()) if mask.any() else 0.0
    for a in (hu, body, *masks.values()):
        a.setflags(write=False)
    return BaseAnatomy(hu=hu, spacing_mm=spacing, body=body, masks=masks, inscribed_mm=inscribed)  # type: ignore[arg-type]


def load_base_anatomy(ct_path: Path | str) -> BaseAnatomy:
    """Load the base CT with :func:`core.io.study.load_study` and find its organs (cached per file version)."""
    path = Path(ct_path)
    if not path.is_file():
        raise InputError("ct", str(path), "is not a file", "pass the real abdominal CT, e.g. ../shared/data/ct/example_ct_sm.nii.gz")
    return _load_base(str(path.resolve()), path.stat().st_mtime_ns)


def check_organs(organs: Iterable[str] | str, base: BaseAnatomy | None = None) -> tuple[str, ...]:
    """Normalise ``organs`` ("liver,bone" or a sequence); each must be known and, with ``base``, found there."""
    names = [o.strip().lower() for o in (organs.split(",") if isinstance(organs, str) else organs) if o.strip()]
    if not names or len(set(names)) != len(names):
        raise InputError("organs", organs, "must name at least one organ, each once", f"pass e.g. --organs {','.join(DEFAULT_ORGANS)}")
    unknown = [o for o in names if o not in ORGANS]
    if unknown:
        raise InputError("organs", ",".join(unknown), f"unknown organ (known: {', '.join(ORGANS)})",
                         f"pass a comma-separated subset of {','.join(ORGANS)}")
    if base is not None:
        small = [o for o in names if base.inscribed_mm.get(o, 0.0) < 4.0]
        if small:
            raise InputError("organs", ",".join(small), "not found in this CT (no mask voxel 4 mm from its boundary)",
                             f"drop it from --organs or pass a CT that shows it; found: "
                             f"{', '.join(f'{k} {v:.0f} mm' for k, v in base.inscribed_mm.items())}")
    return tuple(names)




def save_organ_overlay(ct_path: Path | str, out_png: Path | str, slices: Sequence[int] | None = None) -> Path:
    """PNG of a few axial slices of the base CT with the organ masks outlined (a visual check of :func:`find_organs`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = load_base_anatomy(ct_path)
    s = base.hu.shape[0]
    picks = list(slices) if slices is not None else [round(f * (s - 1)) for f in (0.1, 0.3, 0.5, 0.7, 0.85, 0.97)]
    colours = {"liver": "tab:red", "bone": "yellow", "lung": "cyan", "spleen": "tab:green", "muscle": "tab:orange"}
    fig, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3.4))
    for ax, k in zip(np.atleast_1d(axes), picks):
        ax.imshow(base.hu[k], cmap="gray", vmin=-200, vmax=300)
        for name, mask in base.masks.items():
            if mask[k].any():
                ax.contour(mask[k].astype(float), levels=[0.5], colors=colours[name], linewidths=1.0)
        ax.set_title(f"slice {k}", fontsize=9)
        ax.axis("off")
    handles = [plt.Line2D([0], [0], color=c, label=n) for n, c in colours.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return out_png


def save_subject_overlay(study: Path | str, lesion: tuple[int, int, int], out_png: Path | str) -> Path:
    """PNG of the axial, coronal and sagittal planes of a written study through a lesion centre."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from core.io.study import load_study

    vol = load_study(study)
    s, r, c = lesion
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    sp = vol.spacing_mm
    axes[0].imshow(vol.hu[s], cmap="gray", vmin=-200, vmax=300, aspect=sp[1] / sp[2])
    axes[0].plot([c], [r], "r+")
    axes[1].imshow(vol.hu[:, r, :], cmap="gray", vmin=-200, vmax=300, origin="lower", aspect=sp[0] / sp[2])
    axes[1].plot([c], [s], "r+")
    axes[2].imshow(vol.hu[:, :, c], cmap="gray", vmin=-200, vmax=300, origin="lower", aspect=sp[0] / sp[1])
    axes[2].plot([r], [s], "r+")
    for ax, t in zip(axes, ("axial", "coronal", "sagittal")):
        ax.set_title(t, fontsize=9)
        ax.axis("off")
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return out_png


