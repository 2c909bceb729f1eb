"""``detector_ig`` (core.explain): integrated gradients of the risk over a lesion detector's map.

On the shipped demo ``image_only`` model (its image encoder is the whole-CT lesion detector) and demo subjects
rendered here: the method is offered only where a detector exists, its map sums to the risk change between "no
detection" and the case's detections, it points at the lesions far more often than the voxel gradient does, and
it does not survive re-initialising the weights.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "assets" / "demo_models"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from core.cohort import load_cohort
    from core.demo import write_demo_cohort
    from core.registry import load_model

    # a seed the shipped models were not trained on: new subjects for them
    cohort_dir = write_demo_cohort(tmp_path_factory.mktemp("detig") / "cohort", n=40, seed=7)
    cohort = load_cohort(cohort_dir)
    model = load_model(SHIPPED / "image_only", device="cpu")
    return {"cohort": cohort, "model": model}


def _lesion_rows(cohort: Any, n: int) -> Any:
    from core.sanity import has_lesion

    t = cohort.table
    return t[has_lesion(t)].head(n)


def test_offered_only_for_a_detector_encoder_and_first_there(demo: dict) -> None:
    from core.explain import attribute, methods_for
    from core.registry import load_model

    assert methods_for(demo["model"])[0] == "detector_ig"
    assert set(methods_for(demo["model"])) == {"saliency", "integrated_gradients", "gradcam", "occlusion",
                                               "smoothgrad", "detector_ig"}
    assert "detector_ig" not in methods_for(load_model(SHIPPED / "ehr_only", device="cpu"))
    # a model without a detector: a one-line error that names the field and the methods it can use
    sid = str(_lesion_rows(demo["cohort"], 1)["subject_id"].iloc[0])
    net = demo["model"]
    plain = dataclasses.replace(net, config=dataclasses.replace(
        net.config, image=dataclasses.replace(net.config.image, pool="meanmax")))
    with pytest.raises(InputError, match="method.*detector_ig.*lesion-detector") as err:
        attribute(plain, net.case_inputs(demo["cohort"], sid), "detector_ig", 365.0, None, with_events=False)
    assert "saliency" in str(err.value) and "detector_ig" not in str(err.value).split("use one of")[-1]


def test_map_sums_to_the_risk_change_from_no_detection_and_lies_on_detections(demo: dict) -> None:
    import torch

    from core.explain import DETECTION_LOGIT, attribute, risk_at
    from core.models.net import with_image_tokens

    model, cohort = demo["model"], demo["cohort"]
    sid = str(_lesion_rows(cohort, 1)["subject_id"].iloc[0])
    inputs = model.case_inputs(cohort, sid)
    a = attribute(model, inputs, "detector_ig", 365.0, None, n_steps=64, with_events=False)
    s, r, c = inputs.image.shape[1:]
    assert a.map.shape == (s, r, c) and a.map.dtype == np.float32 and np.isfinite(a.map).all()
    # the same quantity by hand: the risk with the case's detections against the risk with each lowered to the threshold
    enc = model.net.image_encoder
    times = np.asarray(model.times, float)
    with torch.no_grad():
        prepared = model.transforms(inputs.image.float(), model.image_masks(inputs.image.float(), inputs.slice_mm))
        size = prepared.shape[-1]
        logits = enc.detect_logits(prepared.reshape(s, 1, size, size))
        base = model.encoded_batch(dataclasses.replace(inputs, image=None))

        def risk(z: torch.Tensor) -> float:
            tokens = enc.detection_tokens(z, prepared)
            return float(risk_at(model.net(with_image_tokens(base, tokens, s))["survival"], times, 365.0)[0])

        delta = risk(logits) - risk(torch.clamp(logits, max=DETECTION_LOGIT))
    h, w = logits.shape[-2:]
    assert (logits > DETECTION_LOGIT).any() and abs(delta) > 1e-3  # this case has detections that move the risk
    # bilinear upsampling by an integer factor keeps a map's mean (the detector grid is 24 x 24, the slices 96 x 96)
    total = float(a.map.sum()) * (h * w) / (r * c)
    assert total == pytest.approx(delta, rel=0.05)
    # zero wherever the detector sees nothing above its threshold, on whole slices too
    quiet = ~(logits > DETECTION_LOGIT).flatten(1).any(dim=1).numpy()
    assert quiet.any() and not a.map[quiet].any()


def test_points_at_the_lesions_far_more_often_than_the_voxel_gradient(demo: dict) -> None:
    """The pointing game (argmax of the smoothed |map| within the radius + 10 mm of a lesion centre) on the demo
    subjects with a lesion: detector_ig points at a lesion on most of them, saliency on few (docs/BENCHMARKS.md,
    "Attributions through the detector": 0.875 against 0.325 on the 40 test cases of the 800-subject demo)."""
    from core.sanity import pointing_game

    model, cohort = demo["model"], demo["cohort"]
    split = "train"  # 24 subjects; the test split of 40 is too small for 12 lesion cases
    ig = pointing_game(model, cohort, "detector_ig", 365.0, max_cases=12, split=split)
    sal = pointing_game(model, cohort, "saliency", 365.0, max_cases=12, split=split)
    assert ig["n"] == sal["n"] == 12
    assert ig["rate"] >= 0.75 and ig["hits"] >= sal["hits"] + 3, (ig["hits"], sal["hits"])


def test_full_randomisation_destroys_the_map(demo: dict) -> None:
    from core.sanity import cascading_randomization

    model, cohort = demo["model"], demo["cohort"]
    sids = [str(v) for v in _lesion_rows(cohort, 2)["subject_id"]]
    table, _ = cascading_randomization(model, [model.case_inputs(cohort, s) for s in sids], "detector_ig", 365.0)
    assert table["layer"].iloc[1] == "head" and table["spearman"].iloc[-1] < 0.5
    assert table["spearman"].iloc[1] < 0.99  # the head alone already changes which detections matter


def test_the_model_card_keeps_one_sanity_block_per_method(tmp_path: Path) -> None:
    import pandas as pd

    from core.app.case_warnings import sanity_from_card
    from core.sanity import append_to_model_card, model_card_section

    (tmp_path / "MODEL_CARD.md").write_text("# Model\n\n## Intended use\n\nResearch.\n\n## Limitations\n\nMany.\n")

    def table(final: float) -> pd.DataFrame:
        return pd.DataFrame({"step": [0, 1], "layer": ["trained model", "head"], "spearman": [1.0, final]})

    pointing = {"rate": 0.5, "hits": 1, "n": 2, "tolerance_mm": 10.0}
    append_to_model_card(tmp_path, model_card_section(table(0.7), pointing, "saliency"))
    append_to_model_card(tmp_path, model_card_section(table(0.1), {**pointing, "hits": 2, "rate": 1.0}, "detector_ig"))
    append_to_model_card(tmp_path, model_card_section(table(0.3), pointing, "saliency"))  # replaces saliency's block
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert card.count("## Sanity checks") == 1 and card.count("Method `saliency`") == 1
    assert card.index("## Intended use") < card.index("## Limitations") < card.index("## Sanity checks")
    found = sanity_from_card(card)
    assert {m: (r.final_spearman, r.pointing_rate) for m, r in found.items()} == {"saliency": (0.3, 0.5),
                                                                                  "detector_ig": (0.1, 1.0)}
    assert found["saliency"].passed and found["detector_ig"].passed


def test_the_randomization_of_a_foundation_model_says_what_it_leaves_out() -> None:
    """The frozen foundation backbone is never re-initialised: its sanity result says so (card, JSON, text), where
    a final Spearman of 0.41 read like a whole network's."""
    from types import SimpleNamespace

    import pandas as pd

    from core.app.case_warnings import sanity_from_card
    from core.sanity import FROZEN_NOTE, model_card_section, randomization_note

    foundation = SimpleNamespace(config=SimpleNamespace(image=SimpleNamespace(kind="foundation")))
    detector = SimpleNamespace(config=SimpleNamespace(image=SimpleNamespace(kind="2d")))
    assert randomization_note(foundation) == FROZEN_NOTE and randomization_note(detector) is None  # type: ignore[arg-type]
    table = pd.DataFrame({"step": [0, 1], "layer": ["trained model", "head"], "spearman": [1.0, 0.41]})
    card = model_card_section(table, {"rate": 0.5, "hits": 1, "n": 2}, "saliency", FROZEN_NOTE)
    assert "is not re-initialised" in card.splitlines()[2]
    assert sanity_from_card(card)["saliency"].final_spearman == 0.41  # the app still reads the block's table
