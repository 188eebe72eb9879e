"""The staged output folder behind ``geta compress``: renamed into place when complete, an earlier run
replaced as a whole, nothing left behind by a failure; and the checks run before any training."""

from __future__ import annotations

from pathlib import Path

import pytest

from geta.errors import ConfigError
from geta.run import Settings, train_dense
from geta.run.artifacts import staged_folder
from geta.run.harness import check_run


def test_a_completed_block_is_renamed_into_place_with_its_missing_parents(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "a"
    with staged_folder(out) as staging:
        assert staging.parent == out.parent and staging.name.startswith(".a.tmp-") and not out.exists()
        (staging / "report.md").write_text("new")
    assert [p.name for p in out.iterdir()] == ["report.md"]
    assert [p.name for p in out.parent.iterdir()] == ["a"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with staged_folder(empty) as staging:  # an empty folder holds no run: replaced without overwrite
        (staging / "report.md").write_text("new")
    assert [p.name for p in empty.iterdir()] == ["report.md"]


def test_an_earlier_run_is_replaced_whole_only_with_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "a"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "stray.md").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite=True"), staged_folder(out) as staging:
        (staging / "report.md").write_text("new")
    assert [p.name for p in out.iterdir()] == ["sub"]
    with staged_folder(out, overwrite=True) as staging:
        (staging / "report.md").write_text("new")
    assert [p.name for p in out.iterdir()] == ["report.md"]
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_a_failed_block_leaves_the_target_and_its_parents_as_they_were(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), staged_folder(tmp_path / "new" / "a") as staging:
        (staging / "layers.png").write_bytes(b"\x89PNG")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "a"
    out.mkdir()
    (out / "report.md").write_text("old")
    with pytest.raises(RuntimeError), staged_folder(out, overwrite=True):
        raise RuntimeError
    assert (out / "report.md").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a"]


def test_skip_names_are_checked_on_the_model_alone_before_any_data_or_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_args: object) -> None:
        raise AssertionError("trained before the skip names were checked")

    check_run("cnn-digits", Settings(skip=("first", "last", "1*", "7")))
    with pytest.raises(ConfigError, match=r"skip entry 'features\.0' matches no quantizable layer"):
        check_run("cnn-digits", Settings(skip=("features.0",)))
    monkeypatch.setattr("geta.run.harness.train", fail)
    with pytest.raises(ConfigError, match="skip entry 'nope' matches no quantizable layer"):
        train_dense("cnn-digits", Settings(skip=("nope",)))
