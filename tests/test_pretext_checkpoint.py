"""The lesion pretext's progress kept on disk (``core.train.pretext_checkpoint``): a pretext stopped part-way resumes
from its last kept step and ends with the same weights, bit for bit, as one that was never stopped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.train.pretext_checkpoint import discard
from core.train.pretext_lesions import BREAK_STEPS, LesionPrior, pretrain_detector
from tests.test_pretext_lesions import _detector, _tissue

STEPS = 2 * BREAK_STEPS + 30


class Stopped(Exception):
    """A server restart, as the job sees it: raised where the pretext lets other jobs run."""


def _run(x: torch.Tensor, checkpoint: Path | None, *, steps: int = STEPS, stop_at_break: int = 0) -> tuple[dict, dict]:
    """A pretext on a fresh detector (the same initial weights every time); ``stop_at_break``: stopped at that break
    (every ``BREAK_STEPS`` steps). Returns its info and its final weights."""
    torch.manual_seed(0)
    enc = _detector(32)
    breaks = []

    def between() -> None:
        breaks.append(1)
        if len(breaks) == stop_at_break:
            raise Stopped

    info = pretrain_detector(enc, x, torch.ones(20, 2), np.arange(14), np.arange(14, 20), steps=steps, batch=8,
                             lr=3e-3, prior=LesionPrior(radius_px=(1.5, 5.0), contrast_hu=(60.0, 600.0)), seed=3,
                             between=between, checkpoint=checkpoint)
    return info, {k: v.detach().clone() for k, v in enc.state_dict().items()}


def test_a_stopped_pretext_resumes_from_its_last_kept_step_to_the_same_weights(tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same arithmetic in every run
    try:
        x = _tissue(40, 32, 1).reshape(20, 2, 32, 32)
        plain, weights = _run(x, None)
        kept = tmp_path / "pretext_abc.safetensors"
        with pytest.raises(Stopped):
            _run(x, kept, stop_at_break=2)  # stopped at step 200: kept there first
        assert kept.is_file()
        resumed, again = _run(x, kept)
        assert resumed["resumed_at"] == 2 * BREAK_STEPS and "resumed_at" not in plain
        assert weights.keys() == again.keys() and all(torch.equal(weights[k], again[k]) for k in weights)
        for key in ("loss_first_50", "loss_last_50", "synthetic_val_auc"):
            assert resumed[key] == plain[key], key
        # kept at its end too: a training stopped after the pretext reads the trained detector without a step
        done, same = _run(x, kept)
        assert done["resumed_at"] == STEPS and all(torch.equal(weights[k], same[k]) for k in weights)
        # a kept state of another run (here: another number of steps) is set aside, and the pretext starts afresh
        other, _ = _run(x, kept, steps=STEPS + 10)
        assert "resumed_at" not in other and (tmp_path / "pretext_abc.safetensors.unfit").is_file()
        assert "does not fit this run (kept for 230 steps" in capsys.readouterr().err
        discard(kept)
        assert list(tmp_path.iterdir()) == []
    finally:
        torch.set_num_threads(before)
