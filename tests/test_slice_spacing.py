"""A working slice spacing (``ImageConfig.slice_mm``): the same anatomy at another slice spacing reads the same.

A study whose slices are each repeated (a 6 mm study written at 3 mm) is the same anatomy at another spacing: the
model's slabs average the repeats back, so risk, curve and attention come back identical, on the study's own slices.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from core.errors import InputError
from core.preprocess.slices import SliceSpacing
from core.train.slice_spacing import check_slice_mm, to_working_slices

TINY = {"dim": 16, "batch_size": 16, "patience": 3,
        "image": {"epochs": 2, "size": 32, "channels": [4, 8, 8], "batch_size": 8, "patience": 2, "slice_mm": "auto"}}


def test_slabs_average_thin_slices_and_leave_the_working_spacing_alone() -> None:
    step = SliceSpacing(5.0)
    w = step.matrix(10, 1.0)
    assert tuple(w.shape) == (2, 10) and torch.allclose(w.sum(dim=1), torch.ones(2))
    x = torch.arange(10.0).reshape(1, 10, 1, 1).expand(1, 10, 2, 2)
    assert step(x, 1.0)[0, :, 0, 0].tolist() == [2.0, 7.0]  # the means of slices 0-4 and 5-9
    assert step(x, 4.95) is x  # within the tolerance: the very tensor
    thick = step(torch.ones(1, 3, 1, 1), 10.0)  # thicker slices are repeated
    assert thick.shape[1] == 6 and torch.allclose(thick, torch.ones_like(thick))
    weights = torch.tensor([[0.25, 0.75]])
    spread = step.spread_weights(weights, 10, 1.0)
    assert spread.shape == (1, 10) and float(spread.sum()) == pytest.approx(1.0)
    assert float(spread[0, 9]) == pytest.approx(3 * float(spread[0, 0]))
    with pytest.raises(InputError, match="slice_mm"):
        SliceSpacing(0.0)
    assert check_slice_mm("auto") == "auto" and check_slice_mm(None) is None and check_slice_mm("2.5") == 2.5
    with pytest.raises(InputError, match="slice_mm: got -1"):
        check_slice_mm(-1)


def test_training_cache_goes_to_the_working_spacing() -> None:
    x = torch.arange(8.0).reshape(1, 4, 1, 2).repeat(2, 1, 1, 1).half()
    pre = {"image_preprocessed": x, "image_token_mask": torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0]]),
           "image_present": torch.ones(2), "image_slice_mm": torch.tensor([2.0, 4.0])}
    out = to_working_slices(pre, 4.0)
    assert out["image_preprocessed"].shape[1] == 2  # study 0: 4 slices at 2 mm -> 2 slabs; study 1 as it was
    assert out["image_token_mask"].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert out["image_preprocessed"][0, :, 0, 0].tolist() == [1.0, 5.0]
    assert out["image_preprocessed"][1, :, 0, 0].tolist() == [0.0, 2.0]
    assert to_working_slices(pre, None) is pre


def _repeat_study(src: Path, dst: Path, k: int = 2) -> None:
    """``src`` (NIfTI) written with every slice repeated ``k`` times at 1/k of the slice spacing."""
    img = nib.load(str(src))
    data = np.asarray(img.dataobj)
    axis = int(np.argmax(nib.affines.voxel_sizes(img.affine)))
    affine = img.affine.copy()
    affine[:3, axis] /= k
    affine[:3, 3] -= affine[:3, axis] * (k - 1) / 2  # the first thin slice's centre: the slab starts where it did
    nib.save(nib.Nifti1Image(np.repeat(data, k, axis=axis), affine), str(dst))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A tiny demo cohort in which a third of the studies are written at half the slice spacing, a model trained
    on it with ``slice_mm`` auto, and a copy of the cohort with every study at half the spacing."""
    from core.demo import write_demo_cohort
    from core.train import train_model

    root = tmp_path_factory.mktemp("slices")
    cohort = write_demo_cohort(root / "cohort", n=48, seed=2)
    table = pd.read_csv(cohort / "cohort.csv")
    thin = root / "thin"
    shutil.copytree(cohort, thin)
    for i, study in enumerate(table["study"]):
        _repeat_study(cohort / study, thin / study)
        if i % 3 == 0:  # the training cohort itself mixes spacings
            _repeat_study(cohort / study, root / "tmp.nii.gz")
            shutil.move(root / "tmp.nii.gz", cohort / study)
    model = root / "model"
    train_model(cohort, "image_only", model, epochs=2, device="cpu", overrides=TINY, image_encoder_kind="2d")
    fusion = root / "coattention"
    train_model(cohort, "coattention_ehr", fusion, epochs=2, device="cpu", overrides=TINY, image_encoder_kind="2d",
                ensemble=1)
    return {"cohort": cohort, "thin": thin, "model": model, "fusion": fusion, "table": table}


def test_auto_spacing_is_recorded_and_named(mixed: dict[str, object]) -> None:
    model = Path(mixed["model"])  # type: ignore[arg-type]
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["image"]["slice_mm"] == 6.0  # the median of the training studies (two thirds at 6 mm)
    card = (model / "MODEL_CARD.md").read_text()
    assert "slice_spacing" in card and "slabs near 6 mm" in card


def test_the_same_anatomy_at_half_the_spacing_reads_the_same(mixed: dict[str, object]) -> None:
    from core.cohort import load_cohort
    from core.explain import attribute
    from core.registry import load_model

    model = load_model(Path(mixed["model"]))  # type: ignore[arg-type]
    table = mixed["table"]
    cohort, thin = load_cohort(Path(mixed["cohort"]), for_training=False), load_cohort(Path(mixed["thin"]), for_training=False)  # type: ignore[arg-type]
    sid = str(table["subject_id"].iloc[1])  # type: ignore[index]  # stored at 6 mm in the training cohort
    a, b = model.case_inputs(cohort, sid), model.case_inputs(thin, sid)
    assert a.slice_mm == 6.0 and b.slice_mm == 3.0 and b.image.shape[1] == 2 * a.image.shape[1]  # type: ignore[union-attr]
    pa, pb = model.predict_case(a), model.predict_case(b)
    np.testing.assert_allclose(pb.survival, pa.survival, atol=1e-6)
    assert pb.risk_at[365] == pytest.approx(pa.risk_at[365], abs=1e-6)
    assert pb.slice_weights is not None and pb.slice_weights.shape == (b.image.shape[1],)  # type: ignore[union-attr]
    np.testing.assert_allclose(pb.slice_weights[0::2] + pb.slice_weights[1::2], pa.slice_weights, atol=1e-6)  # type: ignore[index]
    # gradients on the study's own slices: each of a slab's two thin slices gets half the thick slice's
    ma = attribute(model, a, "saliency", 365.0, with_events=False).map
    mb = attribute(model, b, "saliency", 365.0, with_events=False).map
    assert mb.shape == tuple(int(v) for v in b.image.shape[1:])  # type: ignore[union-attr]
    np.testing.assert_allclose(mb[0::2], ma / 2, rtol=1e-3, atol=1e-6 * float(np.abs(ma).max()))
    np.testing.assert_allclose(mb[1::2], ma / 2, rtol=1e-3, atol=1e-6 * float(np.abs(ma).max()))
    # the viewer's whole map: slice by slice where each token is one slice, else the one whole-volume call
    from core.app.attribution_volume import whole_map

    np.testing.assert_allclose(whole_map(model, b, "saliency", 365.0, per_slice=True), mb, rtol=1e-5, atol=1e-9)
    lazy = whole_map(model, a, "saliency", 365.0, per_slice=True)
    assert lazy.shape == ma.shape and np.isfinite(lazy).all() and float(np.abs(lazy).max()) > 0


def test_a_model_without_a_working_spacing_reads_each_study_as_it_is(mixed: dict[str, object]) -> None:
    """Models saved without ``slice_mm`` (the shipped ones before it) keep one token per study slice."""
    from core.models.config import ImageConfig

    cfg = json.loads((Path(mixed["model"]) / "config.json").read_text())["image"]  # type: ignore[arg-type]
    chain = ImageConfig.from_dict({k: v for k, v in cfg.items() if k != "slice_mm"}).transforms()
    assert chain is not None and chain.slices is None  # type: ignore[union-attr]
    hu = torch.zeros(1, 8, 16, 16)
    assert tuple(chain(hu).shape[:2]) == (1, 8)
    with_slices = ImageConfig.from_dict(cfg).transforms()
    with pytest.raises(InputError, match="slice spacing: got unknown"):
        with_slices(hu)  # type: ignore[misc]
    assert tuple(with_slices(hu, with_slices.masks(hu, 3.0)).shape[:2]) == (1, 4)  # type: ignore[union-attr, misc]


def test_thinner_slices_than_training_are_not_out_of_distribution(mixed: dict[str, object], tmp_path: Path) -> None:
    """Slices thinner than the working spacing are read as slabs at it: no slice-spacing warning; thicker ones
    (repeated into slabs: less detail than training) keep it."""
    from core.io.study import load_study
    from core.predict import image_read
    from core.registry import load_model

    model = load_model(Path(mixed["model"]))  # type: ignore[arg-type]
    study = Path(mixed["cohort"]) / str(mixed["table"]["study"].iloc[1])  # type: ignore[index]  # at 6 mm
    _repeat_study(study, tmp_path / "thin.nii.gz", k=4)  # 1.5 mm: outside the training range of 3-6 mm
    thin = load_study(tmp_path / "thin.nii.gz")
    assert thin.spacing_mm[0] == pytest.approx(1.5)
    assert not any("slice spacing" in w for w in image_read(model, thin).warnings)
    img = nib.load(str(study))
    thick_affine = img.affine.copy()
    axis = int(np.argmax(nib.affines.voxel_sizes(img.affine)))
    thick_affine[:3, axis] *= 3  # 18 mm apart
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), thick_affine), str(tmp_path / "thick.nii.gz"))
    assert any("slice spacing 18" in w for w in image_read(model, load_study(tmp_path / "thick.nii.gz")).warnings)


def test_events_attend_to_the_study_slices(mixed: dict[str, object]) -> None:
    """The co-attention map over image tokens (events attending to slabs) comes back over the study's slices."""
    from core.cohort import load_cohort
    from core.registry import load_model

    model = load_model(Path(mixed["fusion"]))  # type: ignore[arg-type]
    sid = str(mixed["table"]["subject_id"].iloc[1])  # type: ignore[index]
    a = model.predict_case(model.case_inputs(load_cohort(Path(mixed["cohort"]), for_training=False), sid))  # type: ignore[arg-type]
    b = model.predict_case(model.case_inputs(load_cohort(Path(mixed["thin"]), for_training=False), sid))  # type: ignore[arg-type]
    att_a, att_b = a.attention["ehr<-img"], b.attention["ehr<-img"]
    assert att_b.shape[:-1] == att_a.shape[:-1] and att_b.shape[-1] == 2 * att_a.shape[-1]
    np.testing.assert_allclose(att_b[..., 0::2] + att_b[..., 1::2], att_a, atol=1e-5)
    assert b.risk_at[365] == pytest.approx(a.risk_at[365], abs=1e-6)


def test_command_line_setting(mixed: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--slice-mm auto|off|MM`` reaches the training settings; a bad value is a one-line error before training."""
    from core.cli import main as cli_main
    from core.models import image_overrides

    assert image_overrides(False, None) is None
    assert image_overrides(False, "off") == {"image": {"slice_mm": None}}
    assert image_overrides(True, "2.5") == {"image": {"body_crop": True, "slice_mm": "2.5"}}
    code = cli_main(["train", "--cohort", str(mixed["cohort"]), "--fusion", "image_only", "--out", str(tmp_path / "m"),
                     "--image-encoder-kind", "2d", "--slice-mm", "thin"])
    assert code == 2 and not (tmp_path / "m").exists()
    assert capsys.readouterr().err.strip() == ("error: --slice-mm: got thin, is not a spacing; fix: use auto, off or a "
                                               "number of mm such as 5")
