"""A tab's review kept on disk under an opaque token (core.app.kept_reviews): only plain settings, only for its user."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from core.app import kept_reviews
from core.app import workspace as workspaces


def test_a_review_is_read_back_by_its_user_only(tmp_path: Path) -> None:
    token = kept_reviews.new_token()
    state = {"case": ("cohort:20261129-003000", "P-0042"), "model_name": "coattention_image (your cohort, 29 Nov)",
             "horizon_days": 730, "axial_slice": 41, "opacity": 0.35, "show_saliency": True, "window": "liver"}
    kept_reviews.save("alice", token, state, base=tmp_path)
    assert kept_reviews.load("alice", token, base=tmp_path) == state
    assert kept_reviews.load("bob", token, base=tmp_path) is None  # another user's address opens nothing
    path = workspaces.user_root("alice", tmp_path) / kept_reviews.REVIEWS / f"{token}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # the file names neither the patient's id nor anything but the token
    assert token in path.name and "P-0042" not in str(path)


def test_only_known_settings_of_their_kind_are_kept(tmp_path: Path) -> None:
    token = kept_reviews.new_token()
    state = {"case": ["demo", "demo0003"], "axial_slice": -1, "coronal_row": True, "opacity": float("nan"),
             "window": "x" * 1000, "method": "saliency", "password": "hunter2", "show_outcome": "yes"}
    kept_reviews.save("alice", token, state, base=tmp_path)
    assert kept_reviews.load("alice", token, base=tmp_path) == {"case": ("demo", "demo0003"), "method": "saliency"}
    # a file edited on disk is checked again when read
    path = workspaces.user_root("alice", tmp_path) / kept_reviews.REVIEWS / f"{token}.json"
    path.write_text('{"case": ["demo"], "horizon_days": 365, "model_name": 7}')
    assert kept_reviews.load("alice", token, base=tmp_path) == {"horizon_days": 365}
    path.write_text('{"case": ["demo", "de')  # cut short
    assert kept_reviews.load("alice", token, base=tmp_path) is None


@pytest.mark.parametrize("token", ["", "../../etc/passwd", "A" * 32, "0" * 31, None, 12])
def test_what_is_not_a_token_opens_nothing_and_cannot_be_written(tmp_path: Path, token: object) -> None:
    assert kept_reviews.load("alice", token, base=tmp_path) is None
    with pytest.raises(ValueError, match="review token"):
        kept_reviews.save("alice", token, {}, base=tmp_path)  # type: ignore[arg-type]


def test_a_user_keeps_the_newest_reviews_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kept_reviews, "MAX_KEPT", 3)
    tokens = [kept_reviews.new_token() for _ in range(5)]
    for i, token in enumerate(tokens):
        kept_reviews.save("alice", token, {"axial_slice": i}, base=tmp_path)
        path = workspaces.user_root("alice", tmp_path) / kept_reviews.REVIEWS / f"{token}.json"
        os.utime(path, (1_000_000 + i, 1_000_000 + i))  # written one after another, whatever the clock's resolution
    kept_reviews.save("alice", tokens[4], {"axial_slice": 4}, base=tmp_path)
    found = [kept_reviews.load("alice", t, base=tmp_path) for t in tokens]
    assert found == [None, None, {"axial_slice": 2}, {"axial_slice": 3}, {"axial_slice": 4}]
    # a review opened (a bookmark in use) counts as recent: the next one written pushes out another
    for i, token in enumerate(tokens[2:]):
        path = workspaces.user_root("alice", tmp_path) / kept_reviews.REVIEWS / f"{token}.json"
        os.utime(path, (2_000_000 + i, 2_000_000 + i))
    kept_reviews.load("alice", tokens[2], base=tmp_path)
    kept_reviews.save("alice", kept_reviews.new_token(), {"axial_slice": 5}, base=tmp_path)
    assert [kept_reviews.load("alice", t, base=tmp_path) is not None for t in tokens[2:]] == [True, False, True]


def test_a_sessions_case_numbers_are_kept_as_rows(tmp_path: Path) -> None:
    token = kept_reviews.new_token()
    numbers = {("demo", "demo0042"): 1, ("cohort:20261129-003000", "P 7"): 2}
    kept_reviews.save("alice", token, {"case_numbers": numbers}, base=tmp_path)
    assert kept_reviews.load("alice", token, base=tmp_path) == {
        "case_numbers": [["demo", "demo0042", 1], ["cohort:20261129-003000", "P 7", 2]]}
    assert kept_reviews.clean({"case_numbers": [["demo", "d1", -1]]}) == {}


def test_a_worst_ordered_list_is_kept_only_whole() -> None:
    worst = {"model": "concat", "what": "test split", "cases": [("demo", "demo0275"), ("demo", "demo0981")],
             "notes": {"demo0275": "censored at day 561, risk rank 16", "demo0981": "event at day 28, risk rank 222"}}
    assert kept_reviews.clean({"_worst_list": worst}) == {"_worst_list": {**worst, "cases": [["demo", "demo0275"],
                                                                                          ["demo", "demo0981"]]}}
    for broken in ({**worst, "cases": []}, {**worst, "notes": {"demo0275": 7}}, {**worst, "extra": 1},
                   {**worst, "cases": [("demo",)]}, {**worst, "cases": [("demo", f"d{i}") for i in range(51)]}):
        assert kept_reviews.clean({"_worst_list": broken}) == {}
