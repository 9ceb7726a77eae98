"""The smoke suite on a CUDA GPU agrees with the CPU run within sampling noise (marked ``cuda``:
skipped without a GPU; benchmarks/gpu_check.sh runs it).

Same seeds, different numerics: weights trained on the GPU differ from the CPU's in float rounding
(and TF32 / cuDNN algorithms), so results are compared as estimates, not bit for bit: accuracy within
four standard errors of a difference of two proportions plus a small training allowance, AUROC and
NLL within loose bounds. The cache keys differ by device, so the GPU run trains its own weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SMOKE = Path(__file__).resolve().parent.parent / "suites" / "smoke.toml"


def _run(device: str, out: Path, cache: Path):
    import pandas as pd

    from stf_eval.config import load_config
    from stf_eval.runner import run

    cfg = load_config(SMOKE, overrides=[f'device="{device}"', f'cache_dir="{cache}"'])
    run_dir = run(cfg, out_dir=str(out / device.replace(":", "")), render=False)
    return pd.read_csv(run_dir / "results.csv"), run_dir


def test_smoke_on_the_gpu_matches_the_cpu_run(tmp_path):
    import json

    cpu, _ = _run("cpu", tmp_path, tmp_path / "cache")
    gpu, gpu_dir = _run("cuda", tmp_path, tmp_path / "cache")
    env = json.loads((gpu_dir / "environment.json").read_text())
    assert env["numerics"]["device"] == "cuda" and env["device"].startswith("cuda")

    acc_cpu = cpu[(cpu.suite == "calibration") & (cpu.metric == "accuracy") & cpu["shift"].isna()]
    acc_gpu = gpu[(gpu.suite == "calibration") & (gpu.metric == "accuracy") & gpu["shift"].isna()]
    assert len(acc_cpu) == len(acc_gpu) > 0
    for (_, a), (_, b) in zip(acc_cpu.sort_values("model").iterrows(), acc_gpu.sort_values("model").iterrows()):
        assert a.model == b.model
        n = a.n if a.n == a.n and a.n else 500
        p = (a.value + b.value) / 2
        se = math.sqrt(2 * p * (1 - p) / n)
        assert abs(a.value - b.value) <= 4 * se + 0.03, (a.model, a.value, b.value)
    auc_cpu = cpu[(cpu.suite == "ood") & (cpu.metric == "auroc")].set_index(["model", "ood_set", "score"]).value
    auc_gpu = gpu[(gpu.suite == "ood") & (gpu.metric == "auroc")].set_index(["model", "ood_set", "score"]).value
    common = auc_cpu.index.intersection(auc_gpu.index)
    assert len(common) > 0
    assert (auc_cpu[common] - auc_gpu[common]).abs().max() <= 0.08
    # training figures are the GPU's own: measured with the CUDA allocator, never CPU figures
    mem = gpu[(gpu.suite == "efficiency") & (gpu.metric == "peak_memory_mb") & (gpu.stage != "total")]
    assert len(mem) > 0 and mem.note.str.startswith("cuda_max_allocated").all()
