"""A synthetic run directory with the record shapes of every suite, for tests and report previews.

The numbers are made up (seeded noise around per-model levels): use it to see and test the report,
never as results. ``python -m stf_eval.report.synthetic OUT_DIR`` writes one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from .load import write_text

# name -> (plugin, accuracy, nll, ece, ood auroc, robustness factor, mia auc, train seconds, params)
MODELS = {
    "deterministic": ("deterministic", 0.950, 0.20, 0.035, 0.85, 1.00, 0.57, 10.0, 44_426),
    "stf_bnn": ("stf_bnn", 0.955, 0.16, 0.018, 0.89, 1.30, 0.53, 12.0, 832),
    "mc_dropout": ("mc_dropout", 0.952, 0.17, 0.020, 0.88, 1.10, 0.55, 11.0, 44_426),
    "deep_ensemble": ("deep_ensemble", 0.962, 0.13, 0.012, 0.91, 1.15, 0.55, 50.0, 222_130),
    "full_bnn": ("full_bnn", 0.940, 0.19, 0.020, 0.88, 1.20, 0.52, 35.0, 88_852),
    "last_layer_bnn": ("last_layer_bnn", 0.950, 0.18, 0.025, 0.86, 1.05, 0.55, 11.0, 2_580),
    "temperature_scaled": ("temperature_scaled", 0.950, 0.17, 0.012, 0.855, 1.00, 0.56, 10.1, 1),
    "dp_sgd": ("dp_sgd", 0.850, 0.45, 0.050, 0.75, 0.90, 0.505, 60.0, 44_426),
}
STAGES = {"deterministic": ["train"], "stf_bnn": ["pretrain", "svi"], "mc_dropout": ["train"],
          "deep_ensemble": ["member0", "member1", "member2", "member3", "member4"], "full_bnn": ["svi"],
          "last_layer_bnn": ["pretrain", "svi"], "temperature_scaled": ["pretrain", "temperature"],
          "dp_sgd": ["dp_train"]}
STOCHASTIC = {"stf_bnn", "mc_dropout", "deep_ensemble", "full_bnn", "last_layer_bnn"}
OOD_SETS = {"fashion": "near", "kmnist": "near", "noise": "far"}
SHIFTS = ("rotate", "gaussian_noise")
ATTACKS, EPS = ("fgsm", "pgd"), (0.05, 0.1, 0.2)
MIA_ATTACKS = ("loss", "confidence", "lira_offline", "rmia")
CHECKS = ("accuracy_falls_with_eps", "pgd_at_least_fgsm", "transfer_weaker_than_whitebox",
          "gradient_free_weaker_than_whitebox", "nonzero_gradients")
N_TEST = 539


def _svg(title: str, ys: list[float]) -> str:
    pts = " ".join(f"{20 + 260 * i / max(1, len(ys) - 1):.1f},{180 - 160 * y:.1f}" for i, y in enumerate(ys))
    title = title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return ('<?xml version="1.0" encoding="utf-8"?>\n'
            '<svg xmlns="http://www.w3.org/2000/svg" width="300pt" height="200pt" viewBox="0 0 300 200">'
            '<rect x="0" y="0" width="300" height="200" fill="white"/>'
            '<path d="M20 180 H280 M20 180 V20" stroke="black" fill="none"/>'
            '<path d="M20 180 L280 20" stroke="#999" stroke-dasharray="4 3" fill="none"/>'
            f'<polyline points="{pts}" stroke="#1f77b4" stroke-width="2" fill="none"/>'
            f'<text x="150" y="14" font-size="11" text-anchor="middle" font-family="sans-serif">{title}</text>'
            '</svg>\n')


def _clip(v: float, lo: float = 0.0, hi: float = 1.0) -> float:
    return float(min(hi, max(lo, v)))


def cell_records(name: str, plugin: str, seed: int, rng: np.random.Generator, offset: float = 0.0) -> list[dict]:
    _, acc, nll, ece, auroc, rob, mia, secs, params = MODELS.get(plugin, MODELS["deterministic"])
    acc = acc + offset
    noise = lambda s: float(rng.normal(0.0, s))  # noqa: E731
    rows: list[dict] = []

    def rec(suite, metric, value, **kw):
        rows.append({"model": name, "suite": suite, "dataset": "digits", "metric": metric, "value": float(value),
                     "seed": seed, **{k: kw.get(k) for k in ("attack", "eps", "ood_set", "score", "shift",
                                                              "severity", "stage", "ci_low", "ci_high", "n",
                                                              "group", "note")}})

    def with_ci(suite, metric, value, half, **kw):
        rec(suite, metric, value, ci_low=value - half, ci_high=value + half, n=N_TEST, **kw)

    a = _clip(acc + noise(0.003))
    with_ci("calibration", "accuracy", a, 0.018)
    with_ci("calibration", "nll", nll + noise(0.01), 0.03)
    with_ci("calibration", "brier", 2 * (1 - a) * 0.8 + noise(0.003), 0.01)
    for metric, scale in (("ece", 1.0), ("ece_adaptive", 1.1), ("ece_classwise", 0.4), ("mce", 6.0)):
        with_ci("calibration", metric, max(0.001, ece * scale + noise(0.003)), 0.006 * scale)
    for shift in SHIFTS:
        for severity in (1, 2, 3):
            drop = 0.08 * severity / rob
            rec("calibration", "accuracy", _clip(a - drop + noise(0.01)), shift=shift, severity=severity)
            rec("calibration", "nll", nll + 0.5 * drop * 10 + noise(0.02), shift=shift, severity=severity)
            rec("calibration", "ece", ece + drop * 0.5 + noise(0.005), shift=shift, severity=severity)

    for ood_set, group in OOD_SETS.items():
        base = auroc - (0.06 if group == "near" else -0.05)
        for score in ("msp", "entropy", "mutual_information", "energy"):
            if score == "mutual_information" and plugin not in STOCHASTIC:
                continue  # zero for a deterministic predictive: the suite skips it
            au = _clip(base + {"msp": 0.0, "entropy": 0.01, "mutual_information": -0.02,
                               "energy": -0.01}[score] + noise(0.01))
            kw = {"ood_set": ood_set, "score": score, "group": group}
            rec("ood", "auroc", au, **kw)
            rec("ood", "aupr_in", _clip(au + 0.02 + noise(0.01)), **kw)
            rec("ood", "aupr_out", _clip(au - 0.03 + noise(0.01)), **kw)
            rec("ood", "fpr95", _clip(1.6 * (1 - au) + noise(0.02)), **kw)

    rec("adversarial", "clean_accuracy", a, n=200)
    for attack in ATTACKS:
        for eps in EPS:
            strength = (1.4 if attack == "pgd" else 1.0) * eps * 5
            ra = _clip(a * np.exp(-strength / rob) + noise(0.01))
            rec("adversarial", "robust_accuracy", ra, attack=attack, eps=eps, ci_low=_clip(ra - 0.03),
                ci_high=_clip(ra + 0.03), n=200)
    for score in ("msp", "entropy"):
        rec("adversarial", "adv_detection_auroc", _clip(0.7 * rob + noise(0.02)), attack="pgd", eps=0.1,
            score=score)
    for check in CHECKS:
        # made-up failures so the report's pass/fail marks and verdict caveats are exercised
        failed = (plugin == "stf_bnn" and check == "gradient_free_weaker_than_whitebox" and seed == 1) or \
                 (plugin == "full_bnn" and check == "transfer_weaker_than_whitebox")
        rec("adversarial", "sanity_check", 0.0 if failed else 1.0, attack=check,
            note=("gradient-free attack reached 0.41 < white-box 0.44" if failed else "ok"))

    for attack in MIA_ATTACKS:
        strength = {"loss": 0.0, "confidence": 0.005, "lira_offline": 0.02, "rmia": 0.025}[attack]
        auc = _clip(mia + strength + noise(0.004))
        rec("membership", "mia_auc", auc, attack=attack, n=2 * N_TEST)
        rec("membership", "mia_balanced_accuracy", _clip(0.5 + (auc - 0.5) * 0.7), attack=attack)
        rec("membership", "tpr_at_1pct_fpr", _clip(0.01 + (auc - 0.5) * 0.4 + noise(0.002)), attack=attack)
        rec("membership", "tpr_at_0.1pct_fpr", _clip(0.001 + (auc - 0.5) * 0.1 + noise(0.001)), attack=attack)
    rec("membership", "generalization_gap", _clip(2 * (mia - 0.5) * 0.3 + noise(0.003), -1))
    if plugin == "dp_sgd":
        rec("membership", "dp_epsilon", 8.0, note="delta=1e-05, prv accountant")

    dist = params if plugin in ("stf_bnn", "full_bnn", "last_layer_bnn") else 0
    rec("efficiency", "trainable_params", params)
    rec("efficiency", "distribution_params", dist)
    rec("efficiency", "total_params", max(params, 44_426) + (dist // 2 if dist else 0))
    rec("efficiency", "forward_passes_per_prediction", 16 if plugin in STOCHASTIC else 1)
    rec("efficiency", "latency_ms_per_example", (0.4 if plugin in STOCHASTIC else 0.03) * (1 + noise(0.05)),
        n=64)
    stages = STAGES.get(plugin, ["train"])
    parts = [secs / len(stages) * (1 + noise(0.05)) for _ in stages]
    if plugin in ("stf_bnn", "last_layer_bnn"):
        parts = [10.0 * (1 + noise(0.05)), (secs - 10.0) * (1 + noise(0.05))]
    for stage, s in zip(stages, parts):
        rec("efficiency", "train_seconds", s, stage=stage)
        rec("efficiency", "peak_memory_mb", 150 + 10 * len(stages) + noise(3), stage=stage,
            note="cpu_peak_rss_growth")
    rec("efficiency", "train_seconds", sum(parts), stage="total", note=f"sum of {len(stages)} stage(s)")
    return rows


def write_synthetic_run(path: str | Path, *, models: dict[str, str] | None = None, seeds=(0, 1),
                        name: str = "synthetic", rng_seed: int = 0, offset: float = 0.0,
                        device: str = "cpu", layers: dict[str, list[str] | str] | None = None) -> Path:
    """Write a run directory at ``path``; ``models``: entry name -> plugin (default: all eight).

    ``layers``: model -> its ``layers`` parameter (a layer-placement run: kept in the config and as the
    cell's resolved ``variational_layers``, "all" resolved to the LeNet's 1, 4, 8, 10).
    """
    layers = layers or {}
    path = Path(path)
    (path / "figures").mkdir(parents=True, exist_ok=True)
    models = models or {m: spec[0] for m, spec in MODELS.items()}
    rng = np.random.default_rng(rng_seed)
    cells, records, figures, notes = [], [], [], []
    for model, plugin in models.items():
        for seed in seeds:
            rows = cell_records(model, plugin, seed, rng, offset)
            records += rows
            stage_secs = {r["stage"]: r["value"] for r in rows
                          if r["metric"] == "train_seconds" and r["stage"] != "total"}
            cells.append({
                "model": model, "plugin": plugin, "seed": seed, "params": {"test_samples": 16}
                if plugin in STOCHASTIC else {},
                "capabilities": {"stochastic": plugin in STOCHASTIC, "differentiable": True,
                                 "n_samples": 16 if plugin in STOCHASTIC else 1,
                                 "notes": {"variational_layers": ["1", "4", "8", "10"] if layers[model] == "all"
                                           else list(layers[model])} if model in layers else {}},
                "efficiency": {"trainable_params": MODELS.get(plugin, MODELS["deterministic"])[8],
                               "train_seconds": stage_secs, "from_cache": {s: False for s in stage_secs}},
                "suite_seconds": {"calibration": 0.05, "ood": 0.4, "adversarial": 6.0, "membership": 20.0,
                                  "efficiency": 0.9},
                "cell_seconds": 30.0 + sum(stage_secs.values()),
            })
            for suite, fig, ys in (("calibration", "reliability", [0.05, 0.3, 0.55, 0.7, 0.93]),
                                   ("membership", "roc", [0.0, 0.2, 0.45, 0.8, 1.0])):
                rel = f"figures/{suite}--{model}--seed{seed}--{fig}.svg"
                safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in rel[8:])
                rel = "figures/" + safe
                write_text(path / rel, _svg(f"{model} seed {seed}: {fig}", ys))
                figures.append({"model": model, "suite": suite, "seed": seed, "name": fig, "path": rel,
                                "caption": f"{model}: {fig} (synthetic)"})
            notes.append({"model": model, "suite": "adversarial", "seed": seed,
                          "text": "attacks on the deployed predictive (log mean softmax over S samples), "
                                  "PGD 20 steps, random start, 2 re-evaluations"})
            notes.append({"model": model, "suite": "membership", "seed": seed,
                          "text": "4 reference models, offline LiRA with a global variance"})
    config = {
        "name": name, "description": "Synthetic records of every suite (made-up numbers, for the report's tests).",
        "source": "synthetic", "seeds": list(seeds), "device": "auto", "output_dir": str(path), "cache_dir": "",
        "num_threads": 0,
        "data": {"dataset": "digits", "options": {}, "split_seed": 0, "val_fraction": 0.15,
                 "test_fraction": 0.3, "max_train": 0, "max_test": 0},
        "ood": {k: {"dataset": k, "group": g, "size": 500, "options": {}} for k, g in OOD_SETS.items()},
        "net": {"arch": "lenet", "options": {"channels": [8, 16], "hidden": 32}},
        "train": {"epochs": 10, "batch_size": 64, "optimizer": "adam", "lr": 0.003},
        "models": {m: {"plugin": p, **({"layers": layers[m]} if m in layers else {})} for m, p in models.items()},
        "suites": {"calibration": {"plugin": "calibration", "bins": 15, "bootstrap": 200},
                   "ood": {"plugin": "ood", "scores": ["msp", "entropy", "mutual_information", "energy"]},
                   "adversarial": {"plugin": "adversarial", "attacks": list(ATTACKS), "eps": list(EPS),
                                   "pgd_steps": 20, "re_evaluations": 2, "examples": 200},
                   "membership": {"plugin": "membership", "attacks": list(MIA_ATTACKS), "reference_models": 4},
                   "efficiency": {"plugin": "efficiency", "latency_examples": 64}},
    }
    env = {"time_utc": "2025-01-01T00:00:00+00:00", "python": "3.11.2", "platform": "Linux-synthetic",
           "processor": "x86_64", "cpu_threads": 2, "device": device, "cuda": None, "git_commit": "0123456789ab",
           "packages": {"stf-eval": "0.1.0", "torch": "2.14.1"}}
    splits = {"dataset": "digits", "split_seed": 0, "train": list(range(900)), "val": list(range(900, 1000)),
              "test": list(range(1000, 1000 + N_TEST)),
              "ood": {k: {"dataset": k, "group": g, "size": 500} for k, g in OOD_SETS.items()}}
    results = {"name": name, "cells": cells, "figures": figures, "notes": notes, "records": records}
    write_text(path / "config.json", json.dumps(config, indent=1))
    write_text(path / "environment.json", json.dumps(env, indent=1))
    write_text(path / "splits.json", json.dumps(splits))
    write_text(path / "results.json", json.dumps(results, indent=1))
    from ..records import to_frame

    write_text(path / "results.csv", to_frame(records).to_csv(index=False))
    return path


if __name__ == "__main__":
    print(write_synthetic_run(sys.argv[1] if len(sys.argv) > 1 else "runs/synthetic"))
