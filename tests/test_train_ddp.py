"""Scale-out: the same training under torchrun (2 processes, gloo, DistributedDataParallel)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="session")
def tabular_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from core.demo import write_demo_cohort

    demo = write_demo_cohort(tmp_path_factory.mktemp("ddp_demo") / "cohort", n=300, seed=2, volumes=False)
    out = tmp_path_factory.mktemp("ddp") / "cohort"
    out.mkdir()
    pd.read_csv(demo / "cohort.csv").drop(columns=["study"]).to_csv(out / "cohort.csv", index=False)
    shutil.copy(demo / "features.csv", out / "features.csv")
    return out


@pytest.mark.slow
def test_torchrun_two_processes_same_quality(tabular_cohort: Path, tmp_path: Path) -> None:
    if shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists():
        pytest.skip("torchrun not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = ["--cohort", str(tabular_cohort), "--fusion", "ehr_only", "--device", "cpu", "--epochs", "20", "--json"]
    single = subprocess.run([sys.executable, "-m", "core", "train", *args, "--out", str(tmp_path / "single")],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                          "-m", "core", "train", *args, "--out", str(tmp_path / "ddp")],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    a = json.loads(single.stdout.strip().splitlines()[-1])
    b = json.loads(ddp.stdout.strip().splitlines()[-1])
    assert b["world_size"] == 2 and a["world_size"] == 1
    assert (tmp_path / "ddp" / "model.safetensors").exists() and (tmp_path / "ddp" / "MODEL_CARD.md").exists()
    assert a["c_index"] > 0.55 and b["c_index"] > 0.55
    assert abs(a["c_index"] - b["c_index"]) < 0.04, (a, b)
