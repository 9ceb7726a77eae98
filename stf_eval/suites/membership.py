"""Membership inference: threshold attacks, LiRA and RMIA against the deployed predictive.

Members are the target's training split, non-members the held-out test split (same distribution).
Reference models repeat the target's whole recipe (``ctx.build_like``) on random halves of the pool
train + test, drawn as complementary pairs so every pool example is IN for half of the references
and OUT for the other half. They are built once per cell and shared by LiRA and RMIA. See
docs/membership.md for every choice made here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from ..cache import atomic_write_text
from ..data.base import Split
from ..metrics import membership as mia
from ..metrics.predictive import log_mean_probs
from ..params import require
from ..registry import SUITES
from ..seeding import seeded
from .base import SuitePlugin

THRESHOLD_ATTACKS = ("loss", "confidence", "entropy", "modified_entropy")
REFERENCE_ATTACKS = ("lira_offline", "lira_online", "rmia_offline", "rmia_online")
ATTACKS = THRESHOLD_ATTACKS + REFERENCE_ATTACKS


@dataclass(frozen=True)
class MembershipParams:
    num_references: int = 4  # reference models per cell (16+ for a serious LiRA; 2 is the minimum)
    # model name -> count overriding the above; 0 = threshold attacks only for that model (cost)
    num_references_per_model: dict = field(default_factory=dict)
    models: tuple[str, ...] = ()  # allow-list of model names (the [models.NAME] keys); empty = all
    attacks: tuple[str, ...] = ATTACKS
    lira_variance: Literal["auto", "global", "per_example"] = "auto"
    lira_per_example_min: int = 16  # "auto": per-example variance once every example has this many IN and OUT
    rmia_a: float = 0.3  # offline RMIA: Pr_IN(x) ~ a * Pr_OUT(x) + (1 - a)
    rmia_gamma: float = 1.0  # RMIA likelihood-ratio threshold
    rmia_population: int = 0  # population examples z drawn from the pool (0 = the whole pool)
    pool_size: int = 0  # evaluate on a seeded subset of this many train + test examples (0 = all)
    reference_seed: int = 1000  # reference r of cell seed s is trained with seed reference_seed + 1000 s + r

    def check(self) -> None:
        require(self.num_references >= 2, "num_references", "an integer >= 2", self.num_references)
        for name, count in self.num_references_per_model.items():
            ok = isinstance(count, int) and not isinstance(count, bool) and (count == 0 or count >= 2)
            require(ok, f"num_references_per_model.{name}", "0 (threshold attacks only) or an integer >= 2",
                    count)
        bad = [a for a in self.attacks if a not in ATTACKS]
        require(not bad and len(self.attacks) > 0, "attacks", f"a non-empty list drawn from {list(ATTACKS)}",
                list(self.attacks))
        require(self.lira_per_example_min >= 2, "lira_per_example_min", "an integer >= 2",
                self.lira_per_example_min)
        require(0.0 <= self.rmia_a <= 1.0, "rmia_a", "a number in [0, 1]", self.rmia_a)
        require(self.rmia_gamma > 0, "rmia_gamma", "a positive number", self.rmia_gamma)
        require(self.rmia_population >= 0, "rmia_population", "0 (whole pool) or a positive integer",
                self.rmia_population)
        require(self.pool_size == 0 or self.pool_size >= 4, "pool_size", "0 (all) or an integer >= 4",
                self.pool_size)


def complementary_halves(n: int, n_refs: int, rng: np.random.Generator) -> np.ndarray:
    """in_mask [n_refs, n]: reference 2k takes a random half of the pool, reference 2k + 1 the rest."""
    mask = np.zeros((n_refs, n), dtype=bool)
    for k in range(0, n_refs, 2):
        perm = rng.permutation(n)
        mask[k, perm[: n // 2]] = True
        if k + 1 < n_refs:
            mask[k + 1, perm[n // 2:]] = True
    return mask


@dataclass
class References:
    in_mask: np.ndarray  # [R, N] pool example in reference r's training half
    phi: np.ndarray  # [R, N] logit-scaled true-class confidence of the predictive mean
    p_true: np.ndarray  # [R, N] true-class probability of the predictive mean
    seeds: list[int]
    wall_seconds: float  # spent here: training or loading, and predicting the pool
    train_seconds: float  # training time of the references as measured when they were trained
    from_cache: int  # references whose every stage came from the checkpoint cache


@SUITES.register("membership")
class Membership(SuitePlugin):
    """Threshold attacks (loss, confidence, entropy, modified entropy), LiRA and RMIA; train vs test."""

    Params = MembershipParams
    metrics = ("mia_auc", "mia_balanced_accuracy", "tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr",
               "generalization_gap", "dp_epsilon", "mia_reference_seconds")
    # reference models on halves of 240 examples: every model's whole recipe, retrained cheaply
    tiny = {"num_references": 2, "pool_size": 240}

    MIN_HALF_PER_CLASS = 2  # each reference's half must hold at least this many examples per class

    def num_references(self, model_name: str) -> int:
        return int(self.params.num_references_per_model.get(model_name, self.params.num_references))

    def uses_references(self, model_name: str) -> bool:
        wanted = any(a in REFERENCE_ATTACKS for a in self.params.attacks)
        return wanted and self.num_references(model_name) > 0

    def skip_reason(self, model, data) -> str | None:
        name = model.ctx.spec.name
        if self.params.models and name not in self.params.models:
            return (f"{name!r} is not in suites.{self.name}.models (reference models retrain the whole "
                    f"recipe; the allow-list keeps the run's cost in hand)")
        pool = sum(self.pool_counts(data))
        need = 2 * self.MIN_HALF_PER_CLASS * data.num_classes
        retrainable = getattr(model.capabilities(), "retrainable", True)
        if self.uses_references(name) and retrainable and pool < need:
            return (f"the pool train + test has {pool} examples; reference models on random halves need at "
                    f"least {need} ({self.MIN_HALF_PER_CLASS} per class per half)")
        return None

    def pool_counts(self, data) -> tuple[int, int]:
        """Members and non-members evaluated: all, or ``pool_size`` of them in the train : test ratio."""
        n_in, n_out = len(data.train), len(data.test)
        size = self.params.pool_size
        if not size or size >= n_in + n_out:
            return n_in, n_out
        keep_in = min(n_in, max(1, round(size * n_in / (n_in + n_out))))
        return keep_in, min(n_out, size - keep_in)

    # -- the run --------------------------------------------------------------------------------
    def run(self, model, data, ctx) -> None:
        p = self.params
        train_logits, test_logits = ctx.samples("train"), ctx.samples("test")
        gap = _accuracy(train_logits, data.train.y) - _accuracy(test_logits, data.test.y)
        ctx.record("generalization_gap", gap, n=len(data.train) + len(data.test))
        notes = model.capabilities().notes
        if "dp_epsilon" in notes:
            delta = notes.get("dp_delta", float("nan"))
            ctx.record("dp_epsilon", notes["dp_epsilon"], note=f"delta={delta:.3g}")

        n_in, n_out = self.pool_counts(data)
        rng = np.random.default_rng([p.reference_seed, ctx.seed, 2])
        pick_in = np.sort(rng.choice(len(data.train), n_in, replace=False))
        pick_out = np.sort(rng.choice(len(data.test), n_out, replace=False))
        members, non_members = data.train.subset(pick_in), data.test.subset(pick_out)
        is_member = np.r_[np.ones(n_in, dtype=bool), np.zeros(n_out, dtype=bool)]
        labels = torch.cat([members.y, non_members.y]).numpy()
        log_probs = log_mean_probs(torch.cat([train_logits[:, pick_in], test_logits[:, pick_out]], dim=1))

        scores = self._threshold_scores(log_probs, labels)
        retrainable = getattr(model.capabilities(), "retrainable", True)
        if not retrainable and any(a in REFERENCE_ATTACKS for a in p.attacks):
            ctx.note(f"LiRA and RMIA not run for {ctx.model_name}: it was supplied already trained, so its "
                     f"reference models (the same recipe on random halves of the pool) cannot be built; "
                     f"threshold attacks only")
        elif not self.uses_references(ctx.model_name) and any(a in REFERENCE_ATTACKS for a in p.attacks):
            ctx.note(f"LiRA and RMIA not run for {ctx.model_name}: num_references_per_model sets 0 reference "
                     f"models (to save their cost); threshold attacks only")
        elif any(a in REFERENCE_ATTACKS for a in p.attacks):
            refs = self._references(members, non_members, ctx)
            scores.update(self._lira_scores(log_probs, labels, refs, ctx))
            scores.update(self._rmia_scores(log_probs, labels, refs, ctx))
        curves = {}
        for attack in (a for a in p.attacks if a in scores):
            for metric, value in mia.summarize(scores[attack], is_member).items():
                low, high = mia.auc_interval(value, n_in, n_out) if metric == "mia_auc" else (None, None)
                ctx.record(metric, value, attack=attack, n=len(labels), ci_low=low, ci_high=high)
            curves[attack] = mia.roc(scores[attack], is_member)
        self._plot(curves, n_in, n_out, ctx)
        whole = n_in + n_out == len(data.train) + len(data.test)
        subset = "" if whole else f" (a seeded subset: pool_size = {p.pool_size})"
        ctx.note(f"members = train ({n_in}), non-members = test ({n_out}){subset}; at 0.1% FPR the threshold "
                 f"rests on {0.001 * n_out:.1f} non-member(s) and at 1% on {0.01 * n_out:.0f}, so "
                 f"TPR@0.1%FPR is coarse; ROC metrics pick thresholds on the evaluated examples themselves")

    def _threshold_scores(self, log_probs, labels) -> dict[str, np.ndarray]:
        return {"loss": mia.loss_score(log_probs, labels), "confidence": mia.confidence_score(log_probs),
                "entropy": mia.entropy_score(log_probs),
                "modified_entropy": mia.modified_entropy_score(log_probs, labels)}

    # -- reference models -----------------------------------------------------------------------
    def _references(self, members: Split, non_members: Split, ctx) -> References:
        p = self.params
        n_refs = self.num_references(ctx.model_name)
        labels = torch.cat([members.y, non_members.y]).numpy()
        pool = Split(torch.cat([members.x, non_members.x]), torch.cat([members.y, non_members.y]),
                     np.arange(len(labels)))
        # the draws depend on the cell seed only, so every model of a run gets the same halves (and
        # models sharing a pretrained base share the references' bases through the cache)
        in_mask = complementary_halves(len(pool), n_refs, np.random.default_rng([p.reference_seed, ctx.seed]))
        seeds = [p.reference_seed + 1000 * ctx.seed + r for r in range(n_refs)]
        phi = np.empty((n_refs, len(pool)))
        p_true = np.empty((n_refs, len(pool)))
        start, trained, cached = time.perf_counter(), 0.0, 0
        for r in range(n_refs):
            ref = ctx.build_like(pool.subset(np.flatnonzero(in_mask[r])), seeds[r])
            with seeded(ctx.seed, "reference-predict", ctx.model_name, seeds[r], device=ctx.device):
                lp = log_mean_probs(ref.predict_samples(pool.x))
            phi[r] = mia.logit_confidence(lp, labels)
            p_true[r] = np.exp(mia.true_class_log_prob(lp, labels))
            trained += sum(ref.train_seconds.values())
            cached += int(bool(ref.from_cache) and all(ref.from_cache.values()))
            del ref
        refs = References(in_mask, phi, p_true, seeds, time.perf_counter() - start, trained, cached)
        self._save_draws(refs, members, non_members, ctx)
        ctx.record("mia_reference_seconds", refs.wall_seconds, n=n_refs)
        ctx.note(f"{n_refs} reference models (seeds {seeds[0]}..{seeds[-1]}) on complementary random halves "
                 f"of the pool train + test ({len(pool)} examples; each example IN for "
                 f"{int(in_mask.sum(0).min())}+ and OUT for {int((~in_mask).sum(0).min())}+ of them): "
                 f"{refs.wall_seconds:.1f} s wall here, training or loading and querying them ({cached} of "
                 f"{n_refs} wholly from the checkpoint cache; their training stages took {trained:.1f} s "
                 f"when trained)")
        return refs

    def _save_draws(self, refs: References, members: Split, non_members: Split, ctx) -> None:
        def source(split: Split):
            return [int(i) for i in split.indices] if split.indices is not None else None

        record = {"pool": {"order": "members (train split) then non-members (test split)",
                           "train_indices": source(members), "test_indices": source(non_members)},
                  "design": "complementary random halves (reference 2k and 2k+1 split one permutation)",
                  "rng": [self.params.reference_seed, ctx.seed],
                  "references": [{"seed": s, "members": np.flatnonzero(m).tolist()}
                                 for s, m in zip(refs.seeds, refs.in_mask)]}
        rel = f"figures/{ctx.suite}--{ctx.model_name}--seed{ctx.seed}--references.json"
        atomic_write_text(ctx.run_dir / rel, json.dumps(record))
        ctx.note(f"reference draws saved in {rel}")

    # -- LiRA and RMIA ----------------------------------------------------------------------------
    def _lira_scores(self, log_probs, labels, refs: References, ctx) -> dict[str, np.ndarray]:
        p = self.params
        counts_in, counts_out = refs.in_mask.sum(0), (~refs.in_mask).sum(0)
        fewest = int(min(counts_in.min(), counts_out.min()))
        rule = p.lira_variance
        if rule == "auto":
            rule = "per_example" if fewest >= p.lira_per_example_min else "global"
        elif rule == "per_example" and fewest < 2:
            ctx.note(f"LiRA: per-example variance needs >= 2 IN and OUT references per example, found "
                     f"{fewest}; using the global variance")
            rule = "global"
        fit = mia.fit_lira(refs.phi, refs.in_mask, variance=rule)
        phi = mia.logit_confidence(log_probs, labels)
        out = {"lira_offline": mia.lira_offline(phi, fit)}
        if fit.min_in >= 1:
            out["lira_online"] = mia.lira_online(phi, fit)
        else:
            ctx.note("LiRA online skipped: some examples have no IN reference; offline LiRA reported")
        ctx.note(f"LiRA on phi = log(p/(1-p)) of the true class, {rule.replace('_', '-')} variance "
                 f"({fewest} IN/OUT references per example at least; per-example needs "
                 f"{p.lira_per_example_min})")
        return out

    def _rmia_scores(self, log_probs, labels, refs: References, ctx) -> dict[str, np.ndarray]:
        p = self.params
        n = len(labels)
        p_target = np.exp(mia.true_class_log_prob(log_probs, labels))
        z = np.arange(n)
        if 0 < p.rmia_population < n:
            z = np.sort(np.random.default_rng([p.reference_seed, ctx.seed, 1]).choice(n, p.rmia_population,
                                                                                       replace=False))
        out = {}
        for name, offline in (("rmia_offline", True), ("rmia_online", False)):
            marginal = mia.rmia_marginal(refs.p_true, refs.in_mask, offline=offline, a=p.rmia_a)
            out[name] = mia.rmia_scores(p_target, marginal, p_target[z], marginal[z], gamma=p.rmia_gamma)
        ctx.note(f"RMIA: {len(z)} population examples z from the pool, gamma = {p.rmia_gamma:g}, offline a = "
                 f"{p.rmia_a:g} (not tuned)")
        return out

    # -- figure -----------------------------------------------------------------------------------
    def _plot(self, curves: dict, n_in: int, n_out: int, ctx) -> None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5.2, 4.4))
        ax = fig.subplots()
        lo = 1.0 / n_out
        # draw each step-shaped ROC on a log-spaced FPR grid: thousands of raw points made 240 KB SVGs
        grid = np.geomspace(lo / 2, 1.0, 400)
        for attack, (fpr, tpr) in curves.items():
            style = "-" if attack in REFERENCE_ATTACKS else "--"
            at = np.clip(np.searchsorted(fpr, grid, side="right") - 1, 0, len(tpr) - 1)
            ax.plot(grid, np.maximum(tpr[at], 1e-5), style, lw=1.3, label=attack, drawstyle="steps-post")
        ax.plot([lo, 1], [lo, 1], ":", color="grey", lw=1, label="chance")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo / 2, 1)
        ax.set_ylim(min(lo, 1.0 / n_in) / 2, 1)
        ax.set_xlabel("false-positive rate (non-members flagged)")
        ax.set_ylabel("true-positive rate (members found)")
        ax.set_title(f"membership inference: {ctx.model_name}")
        ax.legend(fontsize=7, loc="lower right")
        ctx.save_figure(fig, "roc", f"Log-log ROC of every attack on {ctx.model_name} ({n_in} members, "
                                    f"{n_out} non-members); dashed: threshold attacks, solid: reference "
                                    f"attacks.")


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.softmax(-1).mean(0).argmax(1) == labels).double().mean())
