"""The body box (``core.preprocess.transforms.BodyCrop``, ``image.body_crop``): a study with a wide field of view
gives the encoder the same body as a tight one, and maps come back on the study's own grid, inside the box."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "assets" / "demo_models"


def _padded(hu: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """``hu`` ``[S, R, C]`` inside a wider field of air (-1000 HU): ``rows`` / ``cols`` pixels before and after."""
    s, r, c = hu.shape
    out = np.full((s, r + sum(rows), c + sum(cols)), -1000.0, dtype=np.float32)
    out[:, rows[0]:rows[0] + r, cols[0]:cols[0] + c] = hu
    return out


def test_a_wide_field_of_view_gives_the_encoder_the_same_body() -> None:
    import torch

    from core.preprocess.transforms import BodyCrop, HUWindow, ImageTransforms, ResizeSlices, ResizeVolume

    rng = np.random.default_rng(0)
    tight = np.full((3, 40, 40), -1000.0, dtype=np.float32)
    tight[:, 9:31, 3:37] = rng.normal(40, 30, (3, 22, 34))          # the body, 22 x 34 pixels
    wide = _padded(tight, (17, 9), (5, 31))
    chain = ImageTransforms(HUWindow(-1000, 1000), ResizeSlices(24), crop=BodyCrop())
    plain = ImageTransforms(HUWindow(-1000, 1000), ResizeSlices(24))
    a, b = chain(torch.from_numpy(tight)[None]), chain(torch.from_numpy(wide)[None])
    assert a.shape == b.shape == (1, 3, 24, 24)
    assert torch.allclose(a, b, atol=1e-6)
    # a batch of two different cases: each gets its own box
    other = _padded(tight, (3, 23), (20, 16))                        # the same shape as wide, the body elsewhere
    both = chain(torch.stack([torch.from_numpy(wide), torch.from_numpy(other)]))
    assert torch.allclose(both[0], a[0], atol=1e-6) and torch.allclose(both[1], a[0], atol=1e-6)
    # without the box, the wide study's body covers a smaller part of the encoder's pixels
    body_share = lambda x: float((x > -0.5).float().mean())  # noqa: E731
    assert body_share(plain(torch.from_numpy(wide)[None])) < 0.6 * body_share(b)
    # the box: square, around the body, 5 % of its side added on each side
    top, bottom, left, right = BodyCrop().box(wide)
    assert bottom - top == right - left == int(np.ceil(34 * 1.1))
    assert top <= 17 + 9 and bottom >= 17 + 31 and left <= 5 + 3 and right >= 5 + 37
    # the 3D encoder's chain crops the same box before resizing the volume
    vol = ImageTransforms(HUWindow(-1000, 1000), ResizeVolume((3, 12, 12)), crop=BodyCrop())
    assert torch.allclose(vol(torch.from_numpy(tight)[None]), vol(torch.from_numpy(wide)[None]), atol=1e-6)
    cam = torch.zeros(1, 1, 3, 6, 6)
    cam[0, 0, 1, 3, 3] = 1.0
    back = vol.study_grid(cam, wide.shape, vol.masks(torch.from_numpy(wide)[None]))
    assert back.shape == (1, *wide.shape) and not back[0, :, :17].any() and not back[0, :, :, :5].any()
    # a body that the field of view cuts is not padded with air: its box is the image, as without the step
    cut = tight[:, 9:31, 3:37].copy()
    assert BodyCrop().box(cut) == (0, 22, 0, 34)
    assert torch.equal(chain(torch.from_numpy(cut)[None]), plain(torch.from_numpy(cut)[None]))
    # a study of air only keeps its whole image
    assert BodyCrop().box(np.full((2, 10, 12), -1000.0, dtype=np.float32)) == (0, 10, 0, 12)


def test_the_table_and_stray_voxels_do_not_widen_the_box() -> None:
    from core.preprocess.transforms import BodyCrop

    hu = np.full((4, 80, 80), -1000.0, dtype=np.float32)
    hu[:, 20:50, 20:60] = 30.0        # the body
    hu[:, 70:72, 5:75] = 200.0        # a table below it, not touching it
    hu[0, 2, 2] = 500.0               # a stray bright voxel in the air
    top, bottom, left, right = BodyCrop(margin=0.0).box(hu)
    assert (top, bottom, left, right) == (15, 55, 20, 60)


def test_maps_come_back_inside_the_box_on_the_study_grid() -> None:
    import torch

    from core.preprocess.transforms import BodyCrop, HUWindow, ImageTransforms, ResizeSlices

    hu = np.full((2, 60, 80), -1000.0, dtype=np.float32)
    hu[:, 10:40, 30:70] = 40.0
    chain = ImageTransforms(HUWindow(-1000, 1000), ResizeSlices(16), crop=BodyCrop(margin=0.0))
    consts = chain.masks(torch.from_numpy(hu)[None])
    assert consts is not None and consts.box() == (5, 45, 30, 70)
    grid = torch.zeros(2, 4, 4)
    grid[1, 1, 2] = 1.0                                   # one detector cell: rows 10-20, cols 20-30 of the 40 px box
    out = chain.study_grid(grid, (60, 80), consts)
    assert out.shape == (2, 60, 80) and float(out[0].abs().sum()) == 0.0
    r, c = np.unravel_index(int(out[1].argmax()), (60, 80))
    assert 5 + 10 <= r < 5 + 20 and 30 + 20 <= c < 30 + 30
    assert not out[1, :5].any() and not out[1, 45:].any()   # nothing outside the box
    # per-slice constants keep the case's box
    assert consts.slices(1, 2).box() == consts.box()
    # the voxel gradient through the box reaches only voxels inside it
    x = torch.from_numpy(hu)[None].requires_grad_(True)
    chain(x, consts).sum().backward()
    g = x.grad[0].abs().sum(dim=0)
    assert float(g[10:40, 30:70].sum()) > 0 and float(g[:5].sum()) == 0.0 and float(g[:, :30].sum()) == 0.0


def test_config_writes_the_key_only_when_set() -> None:
    from core.models.config import ImageConfig

    base = {"kind": "2d", "out_dim": 8, "size": 16, "channels": [4], "hu_window": [-1000, 1000]}
    old = ImageConfig.from_dict(base)
    assert not old.body_crop and "body_crop" not in old.to_dict() and old.transforms().crop is None
    new = ImageConfig.from_dict({**base, "body_crop": True})
    assert new.to_dict()["body_crop"] is True and ImageConfig.from_dict(new.to_dict()) == new
    assert [t["name"] for t in new.transforms().describe()][:3] == ["hu_window", "body_crop", "resize_slices"]


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from core.cohort import load_cohort
    from core.demo import write_demo_cohort
    from core.registry import load_model
    from core.sanity import has_lesion

    cohort = load_cohort(write_demo_cohort(tmp_path_factory.mktemp("crop") / "cohort", n=16, seed=7))
    model = load_model(SHIPPED / "image_only", device="cpu")
    cropped = dataclasses.replace(model, config=dataclasses.replace(
        model.config, image=dataclasses.replace(model.config.image, body_crop=True)))
    sid = str(cohort.table[has_lesion(cohort.table)]["subject_id"].iloc[0])
    return {"model": cropped, "inputs": cropped.case_inputs(cohort, sid)}


def test_detector_maps_of_a_padded_study_are_the_tight_study_maps_moved(case: dict) -> None:
    """The same case in a wider field of air: the same risk, and the same detector_ig and Grad-CAM maps, moved by
    the padding, with nothing outside the box (the whole path of ``core.explain`` with the body box)."""
    import torch

    from core.explain import attribute

    model, inputs = case["model"], case["inputs"]
    hu = inputs.image[0].numpy()
    pad_r, pad_c = (11, 23), (30, 6)
    wide = dataclasses.replace(inputs, image=torch.from_numpy(_padded(hu, pad_r, pad_c))[None])
    s, r, c = hu.shape
    with torch.no_grad():
        assert float(model.forward(wide).risk) == pytest.approx(float(model.forward(inputs).risk), abs=1e-5)
    for method, k in (("detector_ig", None), ("gradcam", 3)):
        a = attribute(model, inputs, method, 365.0, k, with_events=False).map
        b = attribute(model, wide, method, 365.0, k, with_events=False).map
        assert b.shape == (s, r + sum(pad_r), c + sum(pad_c)) and np.abs(a).sum() > 0
        inner = b[:, pad_r[0]:pad_r[0] + r, pad_c[0]:pad_c[0] + c]
        assert np.allclose(inner, a, atol=1e-4 * float(np.abs(a).max())), method
        assert float(np.abs(b).sum()) == pytest.approx(float(np.abs(inner).sum()), rel=1e-4), method


def test_train_and_compare_flags_pass_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import core.train
    import core.train.compare
    from core.cli import main as cli_main

    seen: list[object] = []

    def fake(*args: object, **kw: object) -> object:
        seen.append(kw.get("overrides"))
        raise SystemExit(0)

    monkeypatch.setattr(core.train, "train_model", fake)
    monkeypatch.setattr(core.train.compare, "compare_strategies", fake)
    for argv in (["train", "--cohort", str(tmp_path), "--fusion", "image_only", "--out", str(tmp_path / "m"), "--body-crop"],
                 ["train", "--cohort", str(tmp_path), "--fusion", "image_only", "--out", str(tmp_path / "m")],
                 ["compare", "--cohort", str(tmp_path), "--body-crop"]):
        with pytest.raises(SystemExit):
            cli_main(argv)
    assert seen == [{"image": {"body_crop": True}}, None, {"image": {"body_crop": True}}]


@pytest.mark.slow
def test_a_model_trained_with_the_box_predicts_and_explains_with_it(tmp_path: Path) -> None:
    """``image.body_crop``: config.json and the model card carry the step, and prediction and explanation use
    the box (a map on the study's grid, zero outside the box)."""
    import json

    from core.cohort import load_cohort
    from core.demo import write_demo_cohort
    from core.explain import attribute
    from core.registry import load_model
    from core.train import train_model

    cohort_dir = write_demo_cohort(tmp_path / "cohort", n=24, seed=3)
    out = tmp_path / "model"
    tiny = {"dim": 16, "image": {"epochs": 2, "size": 32, "channels": [4, 8, 8], "batch_size": 8, "body_crop": True}}
    metrics = train_model(cohort_dir, "image_only", out, epochs=2, device="cpu", image_encoder_kind="2d", ensemble=1,
                          overrides=tiny)
    assert metrics["test"]["c_index"] is not None
    assert json.loads((out / "config.json").read_text())["image"]["body_crop"] is True
    assert "body_crop" in (out / "MODEL_CARD.md").read_text()
    model, cohort = load_model(out, device="cpu"), load_cohort(cohort_dir)
    sid = cohort.ids()[0]
    inputs = model.case_inputs(cohort, sid)
    box = model.image_masks(inputs.image, inputs.slice_mm).box()
    s, r, c = inputs.image.shape[1:]
    assert box is not None and (box[1] - box[0]) * (box[3] - box[2]) < r * c     # the demo's body leaves air around it
    a = attribute(model, inputs, "gradcam", 365.0, None, with_events=False).map
    assert a.shape == (s, r, c) and np.abs(a[:, box[0]:box[1], box[2]:box[3]]).sum() > 0
    assert not a[:, :box[0]].any() and not a[:, box[1]:].any()
