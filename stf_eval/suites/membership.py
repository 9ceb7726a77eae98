"""Membership inference: the gap attack, threshold attacks, LiRA and RMIA against the deployed predictive.

Two designs (``design``):

* ``"shared"`` (default; Carlini et al. 2022): R = num_references + 1 models of the model's whole
  recipe are trained once on random halves of the pool (train + test splits), every pool example
  IN for exactly floor(R / 2) of them. Each model in turn is the target and the other R - 1 its
  references, so one run gives R targets' measurements. The models depend on the pool and
  ``reference_seed`` only, not on the cell seed: every cell seed shares them (checkpoint cache).
* ``"target"``: the cell's model is the target (members = train split, non-members = test split);
  references on complementary random halves of the pool, drawn per cell seed.

See docs/membership.md for every choice made here.
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
from ..seeding import derive_seed, numpy_rng, seeded
from ..stats import proportion_interval
from .base import SuitePlugin

LABEL_ONLY_ATTACKS = ("gap",)
THRESHOLD_ATTACKS = ("loss", "confidence", "entropy", "modified_entropy")
REFERENCE_ATTACKS = ("lira_offline", "lira_online", "rmia_offline", "rmia_online")
ATTACKS = LABEL_ONLY_ATTACKS + THRESHOLD_ATTACKS + REFERENCE_ATTACKS
EXPOSURE_ATTACKS = ("lira_online", "lira_offline", "loss")  # the first one scored ranks exposure
POOLED = {"mia_auc": "mia_auc_pooled", "tpr_at_0.1pct_fpr": "tpr_at_0.1pct_fpr_pooled",
          "tpr_at_1pct_fpr": "tpr_at_1pct_fpr_pooled"}
SHARED_MIN_REFERENCES = 3  # 4 models: every example has >= 1 IN and >= 1 OUT reference for every target


@dataclass(frozen=True)
class MembershipParams:
    design: Literal["shared", "target"] = "shared"
    # references per target; "shared" trains num_references + 1 models, "target" num_references
    num_references: int = 4
    # model name -> count overriding the above; 0 = threshold attacks on the cell model only (cost)
    num_references_per_model: dict = field(default_factory=dict)
    models: tuple[str, ...] = ()  # allow-list of model names (the [models.NAME] keys); empty = all
    attacks: tuple[str, ...] = ATTACKS
    lira_variance: Literal["auto", "global", "per_example"] = "auto"
    lira_per_example_min: int = 16  # "auto": per-example variance once every example has this many IN and OUT
    rmia_a: float = 0.3  # offline RMIA: Pr_IN(x) ~ a * Pr_OUT(x) + (1 - a)
    rmia_gamma: float = 1.0  # RMIA likelihood-ratio threshold
    rmia_population: int = 0  # population examples z drawn from the pool (0 = the whole pool)
    pool_size: int = 0  # evaluate on a seeded subset of this many train + test examples (0 = all)
    reference_seed: int = 1000  # seeds of the pool subset, the halves and the reference models
    top_exposed: int = 16  # most exposed training examples listed and drawn per model (0 = none)
    audit_delta: float = 0.0  # delta of the DP audit; 0 = the model's dp_delta, else 1e-5
    audit_confidence: float = 0.95  # Clopper-Pearson confidence of the DP audit

    def min_references(self) -> int:
        return SHARED_MIN_REFERENCES if self.design == "shared" else 2

    def check(self) -> None:
        least = self.min_references()
        require(self.num_references >= least, "num_references",
                f"an integer >= {least} (design = {self.design!r})", self.num_references)
        for name, count in self.num_references_per_model.items():
            ok = isinstance(count, int) and not isinstance(count, bool) and (count == 0 or count >= least)
            require(ok, f"num_references_per_model.{name}",
                    f"0 (threshold attacks only) or an integer >= {least} (design = {self.design!r})", count)
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
        require(self.top_exposed >= 0, "top_exposed", "an integer >= 0", self.top_exposed)
        require(0.0 <= self.audit_delta < 1.0, "audit_delta", "a number in [0, 1) (0 = automatic)",
                self.audit_delta)
        require(0.5 <= self.audit_confidence < 1.0, "audit_confidence", "a number in [0.5, 1)",
                self.audit_confidence)


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
class Pool:
    """The attacked examples: members (train split) first, then non-members (test split)."""

    members: Split
    non_members: Split
    pick_in: np.ndarray  # positions in data.train
    pick_out: np.ndarray  # positions in data.test

    @property
    def split(self) -> Split:
        return Split(torch.cat([self.members.x, self.non_members.x]),
                     torch.cat([self.members.y, self.non_members.y]), np.arange(len(self)))

    @property
    def labels(self) -> np.ndarray:
        return torch.cat([self.members.y, self.non_members.y]).numpy()

    @property
    def is_train(self) -> np.ndarray:
        return np.r_[np.ones(len(self.pick_in), bool), np.zeros(len(self.pick_out), bool)]

    def __len__(self) -> int:
        return len(self.pick_in) + len(self.pick_out)


@dataclass
class ReferencePlan:
    pool: Pool
    in_mask: np.ndarray  # [M, N] pool example in model m's training half
    seeds: list[int]
    shared: bool

    def builds(self) -> list[tuple[Split, int]]:
        split = self.pool.split
        return [(split.subset(np.flatnonzero(m)), s) for m, s in zip(self.in_mask, self.seeds)]


@dataclass
class Target:
    """One attacked model's view of the pool: scores per attack (higher = member) and the truth."""

    is_member: np.ndarray
    scores: dict
    phi: np.ndarray | None = None
    in_use: np.ndarray | None = None  # [R - 1, N] shared design: the IN references used per example
    out_use: np.ndarray | None = None  # [R - 1, N] ... and the OUT ones (rows: the other models in order)


@dataclass
class References:
    in_mask: np.ndarray  # [M, N] pool example in model m's training half
    phi: np.ndarray  # [M, N] logit-scaled true-class confidence of the predictive mean
    p_true: np.ndarray  # [M, N] true-class probability of the predictive mean
    log_probs: np.ndarray  # [M, N, C] log of the predictive mean (the shared design's targets)
    seeds: list[int]
    wall_seconds: float  # spent here: training or loading, and predicting the pool
    train_seconds: float  # training time of the references as measured when they were trained
    from_cache: int  # references whose every stage came from the checkpoint cache
    out_mask: np.ndarray | None = None  # [M, N] OUT references in use (None: every one not IN)

    def without(self, r: int, rng: np.random.Generator) -> References:
        """Target r's references: the other models, with the same number of IN (and of OUT) references
        for every example (mia.equal_count_references)."""
        keep = np.arange(len(self.seeds)) != r
        counts_in = self.in_mask.sum(0)
        n_in = int(counts_in.min()) - 1  # an example the target trained on has one IN model fewer
        n_out = len(self.seeds) - int(counts_in.max()) - 1
        in_use, out_use = mia.equal_count_references(self.in_mask[keep], n_in, n_out, rng)
        return References(in_use, self.phi[keep], self.p_true[keep], self.log_probs[keep],
                          [s for s, k in zip(self.seeds, keep) if k], 0.0, 0.0, 0, out_use)

    @property
    def out_use(self) -> np.ndarray:
        return ~self.in_mask if self.out_mask is None else self.out_mask


@SUITES.register("membership")
class Membership(SuitePlugin):
    """Gap, threshold attacks, LiRA and RMIA; R shared models as targets in turn, or the cell model."""

    Params = MembershipParams
    #: names of models supplied already trained (Capabilities.retrainable False): no reference models
    fixed_models: frozenset = frozenset()
    metrics = ("mia_auc", "mia_balanced_accuracy", "tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr", "mia_auc_pooled",
               "tpr_at_0.1pct_fpr_pooled", "tpr_at_1pct_fpr_pooled", "dp_audit_epsilon_lb",
               "generalization_gap", "dp_epsilon", "mia_reference_seconds")
    # 4 shared models on halves of 240 examples: every model's whole recipe, retrained cheaply
    tiny = {"num_references": 3, "pool_size": 240, "top_exposed": 4}

    MIN_HALF_PER_CLASS = 2  # each reference's half must hold at least this many examples per class

    def num_references(self, model_name: str) -> int:
        return int(self.params.num_references_per_model.get(model_name, self.params.num_references))

    def uses_references(self, model_name: str) -> bool:
        wanted = any(a in REFERENCE_ATTACKS for a in self.params.attacks)
        return wanted and self.num_references(model_name) > 0 and model_name not in self.fixed_models

    def shared(self, model_name: str) -> bool:
        """Whether ``model_name`` is attacked with the shared design (else: the cell model is the target)."""
        return self.params.design == "shared" and self.uses_references(model_name)

    def _excluded(self, name: str, data) -> str | None:
        if self.params.models and name not in self.params.models:
            return (f"{name!r} is not in suites.{self.name}.models (reference models retrain the whole "
                    f"recipe; the allow-list keeps the run's cost in hand)")
        pool = sum(self.pool_counts(data))
        need = 2 * self.MIN_HALF_PER_CLASS * data.num_classes
        if self.uses_references(name) and pool < need:
            return (f"the pool train + test has {pool} examples; reference models on random halves need at "
                    f"least {need} ({self.MIN_HALF_PER_CLASS} per class per half)")
        return None

    def skip_reason(self, model, data) -> str | None:
        return self._excluded(model.ctx.spec.name, data)

    def pool_counts(self, data) -> tuple[int, int]:
        """Members and non-members evaluated: all, or ``pool_size`` of them in the train : test ratio."""
        n_in, n_out = len(data.train), len(data.test)
        size = self.params.pool_size
        if not size or size >= n_in + n_out:
            return n_in, n_out
        keep_in = min(n_in, max(1, round(size * n_in / (n_in + n_out))))
        return keep_in, min(n_out, size - keep_in)

    def pool(self, data, seed: int, shared: bool) -> Pool:
        """The pool: seeded by ``reference_seed`` alone (shared design) or with the cell seed (target)."""
        p = self.params
        n_in, n_out = self.pool_counts(data)
        rng = (numpy_rng(p.reference_seed, "membership-pool") if shared
               else np.random.default_rng([p.reference_seed, seed, 2]))
        pick_in = np.sort(rng.choice(len(data.train), n_in, replace=False))
        pick_out = np.sort(rng.choice(len(data.test), n_out, replace=False))
        return Pool(data.train.subset(pick_in), data.test.subset(pick_out), pick_in, pick_out)

    def plan(self, model_name: str, data, seed: int) -> ReferencePlan:
        """The reference models of one cell: the pool, each model's training half and seed."""
        p = self.params
        shared = self.shared(model_name)
        pool = self.pool(data, seed, shared)
        if shared:
            n_models = self.num_references(model_name) + 1
            # Carlini et al.'s assignment: each example IN for exactly floor(R / 2) models
            in_mask = mia.balanced_memberships(len(pool), n_models, numpy_rng(p.reference_seed, "membership-halves"))
            seeds = [derive_seed(p.reference_seed, "membership-reference", r) for r in range(n_models)]
        else:
            n_refs = self.num_references(model_name)
            # the draws depend on the cell seed only, so every model of a run gets the same halves (and
            # models sharing a pretrained base share the references' bases through the cache)
            in_mask = complementary_halves(len(pool), n_refs, np.random.default_rng([p.reference_seed, seed]))
            seeds = [p.reference_seed + 1000 * seed + r for r in range(n_refs)]
        return ReferencePlan(pool, in_mask, seeds, shared)

    def reference_builds(self, model_name: str, data, seed: int) -> list[tuple[Split, int]]:
        """The trainings this suite asks of ``model_name`` for cell ``seed`` (the plan runs them first)."""
        if self._excluded(model_name, data) or not self.uses_references(model_name):
            return []
        # the pool and its halves depend on the data, the reference count and (target design only) the
        # cell seed, never on the model: build the splits once and hand every model the same objects
        # (their fingerprints are then hashed once; planning a CIFAR run calls this for every cell)
        shared = self.shared(model_name)
        key = (id(data), self.num_references(model_name), shared, None if shared else seed)
        memo = self.__dict__.setdefault("_builds_memo", {})
        if key not in memo:
            memo[key] = (data, self.plan(model_name, data, seed).builds())  # data kept: its id stays unique
        return memo[key][1]

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

        attacks = [a for a in p.attacks]
        wants_refs = any(a in REFERENCE_ATTACKS for a in attacks)
        if not getattr(model.capabilities(), "retrainable", True):
            # supplied already trained: no recipe to repeat on pool halves, so no reference models
            self.fixed_models = {*self.fixed_models, ctx.model_name}
            if wants_refs:
                ctx.note(f"LiRA and RMIA not run for {ctx.model_name}: it was supplied already trained, so its "
                         f"reference models (the same recipe on random halves of the pool) cannot be built; "
                         f"the label-only and threshold attacks only")
        elif wants_refs and not self.uses_references(ctx.model_name):
            ctx.note(f"LiRA and RMIA not run for {ctx.model_name}: num_references_per_model sets 0 reference "
                     f"models (to save their cost); the label-only and threshold attacks on the cell's own "
                     f"model only")
        plan = self.plan(ctx.model_name, data, ctx.seed)
        pool = plan.pool
        labels = pool.labels
        refs = self._references(plan, ctx) if self.uses_references(ctx.model_name) else None
        if plan.shared:
            targets = []
            for r in range(len(plan.seeds)):
                others = refs.without(r, numpy_rng(p.reference_seed, "membership-reference-subsample", r))
                scores = self._label_and_threshold_scores(refs.log_probs[r], labels)
                scores.update(self._reference_scores(refs.log_probs[r], labels, others, ctx, quiet=r > 0))
                targets.append(Target(refs.in_mask[r], scores, refs.phi[r], others.in_mask, others.out_use))
        else:
            log_probs = log_mean_probs(torch.cat([train_logits[:, pool.pick_in], test_logits[:, pool.pick_out]],
                                                 dim=1))
            scores = self._label_and_threshold_scores(log_probs, labels)
            if refs is not None:
                scores.update(self._reference_scores(log_probs, labels, refs, ctx, quiet=False))
            targets = [Target(pool.is_train, scores, mia.logit_confidence(log_probs, labels))]
        order = [a for a in attacks if a in targets[0].scores]
        self._record(order, targets, ctx)
        self._audit(order, targets, pool, notes, ctx)
        exposed = self._exposure(order, targets, pool, ctx)
        self._save_examples(order, targets, pool, refs, plan, exposed, ctx)
        self._plot(order, targets, ctx)
        n_in, n_out = int(targets[0].is_member.sum()), int((~targets[0].is_member).sum())
        whole = len(pool) == len(data.train) + len(data.test)
        subset = "" if whole else f" (a seeded subset: pool_size = {p.pool_size})"
        if plan.shared:
            ctx.note(f"shared design: {len(targets)} models of {ctx.model_name}'s recipe on random halves of the "
                     f"pool train + test ({len(pool)} examples{subset}), each in turn the target and the other "
                     f"{len(targets) - 1} its references; each target has about {n_in} members and {n_out} "
                     f"non-members. The models do not depend on the cell seed: every cell seed repeats these "
                     f"measurements (the interval is over targets, not seeds); the cell's own model is not "
                     f"attacked")
        else:
            ctx.note(f"target design: members = train ({n_in}), non-members = test ({n_out}){subset}; ROC "
                     f"metrics pick thresholds on the evaluated examples themselves")

    def _label_and_threshold_scores(self, log_probs, labels) -> dict[str, np.ndarray]:
        return {"gap": mia.gap_score(log_probs, labels), "loss": mia.loss_score(log_probs, labels),
                "confidence": mia.confidence_score(log_probs), "entropy": mia.entropy_score(log_probs),
                "modified_entropy": mia.modified_entropy_score(log_probs, labels)}

    def _reference_scores(self, log_probs, labels, refs: References, ctx, quiet: bool) -> dict[str, np.ndarray]:
        out = self._lira_scores(log_probs, labels, refs, ctx, quiet)
        out.update(self._rmia_scores(log_probs, labels, refs, ctx, quiet))
        return out

    # -- records ----------------------------------------------------------------------------------
    def _record(self, order: list[str], targets: list[Target], ctx) -> None:
        """Per attack: each metric per target (one target: as is; several: mean and t interval over
        targets), and the ROC of every (target, example) pair pooled."""
        n_targets = len(targets)
        fewest_out = min(int((~t.is_member).sum()) for t in targets)
        for attack in order:
            per = [mia.summarize(t.scores[attack], t.is_member) for t in targets]
            for metric in ("mia_auc", "mia_balanced_accuracy", *mia.FPR_POINTS):
                values = [s[metric] for s in per]
                if n_targets == 1:
                    n_in, n_out = int(targets[0].is_member.sum()), int((~targets[0].is_member).sum())
                    self._record_one(ctx, metric, values[0], attack, n_in, n_out)
                    continue
                mean, low, high = mia.interval_over_targets(values)
                note = f"mean over {n_targets} targets, 95% t interval over targets"
                if metric in mia.FPR_POINTS:
                    status, allowed, needed = mia.fpr_resolution(fewest_out, mia.FPR_POINTS[metric])
                    note += "; " + _resolution_text(status, allowed, needed, fewest_out, "per target")
                    if status == "undefined":
                        mean = low = high = None
                ctx.record(metric, mean, attack=attack, n=n_targets, ci_low=low, ci_high=high, note=note)
            if n_targets > 1:
                scores = np.concatenate([t.scores[attack] for t in targets])
                truth = np.concatenate([t.is_member for t in targets])
                pooled = mia.summarize(scores, truth)
                n_in, n_out = int(truth.sum()), int((~truth).sum())
                for metric, name in POOLED.items():
                    self._record_one(ctx, name, pooled[metric], attack, n_in, n_out,
                                     extra=f"{n_targets} targets' scores pooled into one ROC")

    def _record_one(self, ctx, metric: str, value: float, attack: str, n_in: int, n_out: int,
                    extra: str = "") -> None:
        base = metric.removesuffix("_pooled")
        if base == "mia_auc":
            low, high = mia.auc_interval(value, n_in, n_out)
            note = "; ".join(x for x in (extra, "Hanley-McNeil 95% interval") if x)
            ctx.record(metric, value, attack=attack, n=n_in + n_out, ci_low=low, ci_high=high, note=note)
            return
        if base in mia.FPR_POINTS:
            status, allowed, needed = mia.fpr_resolution(n_out, mia.FPR_POINTS[base])
            note = "; ".join(x for x in (extra, _resolution_text(status, allowed, needed, n_out, ""),
                                         "Clopper-Pearson interval over members at the chosen threshold") if x)
            if status == "undefined":
                ctx.record(metric, None, attack=attack, n=n_in, note=note)
                return
            low, high = proportion_interval(int(round(value * n_in)), n_in, method="exact")
            ctx.record(metric, value, attack=attack, n=n_in, ci_low=low, ci_high=high, note=note)
            return
        ctx.record(metric, value, attack=attack, n=n_in + n_out, note=extra or None)

    # -- DP audit ---------------------------------------------------------------------------------
    def _audit(self, order: list[str], targets: list[Target], pool: Pool, notes: dict, ctx) -> None:
        """Empirical epsilon lower bound (Jagielski et al. 2020): attack and threshold chosen on a seeded
        half of the pool's examples, Clopper-Pearson bound computed on the other half."""
        p = self.params
        delta = p.audit_delta or float(notes.get("dp_delta", 0.0)) or 1e-5
        select = numpy_rng(p.reference_seed, "membership-audit-split").random(len(pool)) < 0.5
        truth = np.concatenate([t.is_member for t in targets])
        chosen = np.tile(select, len(targets))
        results = {a: mia.dp_audit(np.concatenate([t.scores[a] for t in targets]), truth, chosen, delta,
                                   p.audit_confidence) for a in order}
        best = max(order, key=lambda a: (results[a]["selection_bound"], -order.index(a)))
        r = results[best]
        theory = f"; DP-SGD's accounted epsilon: {notes['dp_epsilon']:.3g}" if "dp_epsilon" in notes else ""
        ctx.record("dp_audit_epsilon_lb", r["eps_lb"], attack=best, n=r["n_members"] + r["n_non_members"],
                   note=(f"delta={delta:.3g}, {p.audit_confidence:.0%} Clopper-Pearson, form {r['form']}; "
                         f"attack and threshold ({r['threshold']:.4g}) chosen on a seeded half of the examples "
                         f"(bound there {r['selection_bound']:.3g}), counted on the other half: "
                         f"TP {r['tp']}/{r['n_members']}, FP {r['fp']}/{r['n_non_members']}{theory}"))

    # -- per-example vulnerability ----------------------------------------------------------------
    def _exposure(self, order: list[str], targets: list[Target], pool: Pool, ctx) -> dict | None:
        p = self.params
        attack = next((a for a in EXPOSURE_ATTACKS if a in order), None)
        if attack is None:
            return None
        scores = np.stack([t.scores[attack] for t in targets])
        in_mask = np.stack([t.is_member for t in targets])
        value = mia.exposure(scores, in_mask)
        top = mia.top_exposed(value, p.top_exposed)
        out = {"attack": attack, "score": value, "top": top}
        if not len(top):
            return out
        split = np.where(pool.is_train, "train", "test")
        index = np.r_[pool.pick_in, pool.pick_out]
        labels = pool.labels
        listed = ", ".join(f"{split[i]}[{index[i]}] (label {labels[i]}, {value[i]:.3g})" for i in top)
        ctx.note(f"most exposed training examples by {attack} (mean score over the targets that trained on "
                 f"them; split[position in split]): {listed}")
        self._plot_exposed(pool, top, value, split, index, attack, ctx)
        return out

    def _plot_exposed(self, pool: Pool, top, value, split, index, attack: str, ctx) -> None:
        if not ctx.wants_figures:
            return
        from matplotlib.figure import Figure

        x = pool.split.x[torch.as_tensor(top)].detach().cpu().numpy()
        cols = min(8, len(top))
        rows = int(np.ceil(len(top) / cols))
        fig = Figure(figsize=(1.3 * cols, 1.5 * rows))
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        labels = pool.labels
        for ax, img, i in zip(axes, x, top):
            if img.shape[0] == 1:
                ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(np.clip(img.transpose(1, 2, 0), 0, 1))
            ax.set_title(f"{split[i]}[{index[i]}] y={labels[i]}\n{value[i]:.3g}", fontsize=6)
        for ax in axes:
            ax.set_axis_off()
        ctx.save_figure(fig, "exposed", f"The {len(top)} training examples {ctx.model_name} exposes most: highest "
                                        f"mean {attack} score over the targets that trained on them "
                                        f"(split[position], label, score).")

    # -- reference models -----------------------------------------------------------------------
    def _references(self, plan: ReferencePlan, ctx) -> References:
        p = self.params
        pool = plan.pool
        split, labels = pool.split, pool.labels
        n_models = len(plan.seeds)
        phi = np.empty((n_models, len(pool)))
        p_true = np.empty((n_models, len(pool)))
        log_probs = None
        start, trained, cached = time.perf_counter(), 0.0, 0
        builds = list(enumerate(plan.builds()))
        # Two passes: a model whose pool predictions another process (a parallel cell of the same pool)
        # is computing right now is skipped at first and read from the cache at the end, so parallel
        # cells share the work instead of repeating it. The values do not depend on who computes them.
        results = {}
        for blocking in (False, True):
            for r, (half, seed) in builds:
                if r in results:
                    continue
                # the shared models' predictions are drawn from (reference_seed, model, r): the same for
                # every cell seed; the target design's from the cell seed, as before
                draw = ((p.reference_seed, "membership-reference-predict", ctx.model_name, r) if plan.shared
                        else (ctx.seed, "reference-predict", ctx.model_name, seed))
                got = self._pool_log_probs(half, seed, split, draw, ctx, blocking=blocking)
                if got is not None:
                    results[r] = got
        for r, _ in builds:
            lp, seconds, from_cache = results[r]
            if log_probs is None:
                log_probs = np.empty((n_models, *lp.shape))
            log_probs[r] = lp
            phi[r] = mia.logit_confidence(lp, labels)
            p_true[r] = np.exp(mia.true_class_log_prob(lp, labels))
            trained += seconds
            cached += int(from_cache)
        refs = References(plan.in_mask, phi, p_true, log_probs, plan.seeds, time.perf_counter() - start,
                          trained, cached)
        self._save_draws(refs, plan, ctx)
        per_target = n_models - 1 if plan.shared else n_models
        ctx.record("mia_reference_seconds", refs.wall_seconds, n=per_target,
                   note=f"{n_models} models trained or loaded; n = references per target")
        ins = plan.in_mask.sum(0)
        design = (f"{n_models} shared models (each example IN for {int(ins.min())} of them; each target has "
                  f"{per_target} references)" if plan.shared else
                  f"{n_models} reference models on complementary random halves (each example IN for "
                  f"{int(ins.min())}+ and OUT for {int((~plan.in_mask).sum(0).min())}+ of them)")
        ctx.note(f"{design}, seeds {plan.seeds[0]}..{plan.seeds[-1]}, pool of {len(pool)} examples: "
                 f"{refs.wall_seconds:.1f} s wall here, training or loading and querying them ({cached} of "
                 f"{n_models} wholly from the checkpoint cache, model or pool predictions; their training "
                 f"stages took {trained:.1f} s when trained)")
        return refs

    def _pool_log_probs(self, half: Split, seed: int, pool: Split, draw: tuple, ctx, blocking: bool = True):
        """log of model (half, seed)'s predictive mean on the pool -> (log_probs, training seconds, cached).

        The result is kept in the checkpoint cache under a key naming the recipe, the training half,
        the seed, the pool and the draw, so later cell seeds (shared design) and later runs read it
        instead of loading the model and predicting again; the values are those computed first,
        exactly (float64). It is computed under the key's lock; with ``blocking`` False, None when
        another process holds it."""
        from ..cache import cache_key
        from ..params import as_dict

        build = getattr(getattr(ctx, "model", None), "ctx", None)
        store = getattr(build, "cache", None)
        if store is None or store.root is None:
            return self._pool_log_probs_locked(half, seed, pool, draw, ctx, None, None)
        key = cache_key({"kind": "membership-pool-log-probs", "model": build.spec.as_dict(),
                         "net": as_dict(build.net), "train": as_dict(build.train), "data": half.fingerprint,
                         "seed": seed, "pool": pool.fingerprint, "draw": [str(d) for d in draw],
                         "device": torch.device(ctx.device).type})
        if blocking:
            with store.lock(key):
                return self._pool_log_probs_locked(half, seed, pool, draw, ctx, store, key)
        with store.try_lock(key) as held:
            return self._pool_log_probs_locked(half, seed, pool, draw, ctx, store, key) if held else None

    def _pool_log_probs_locked(self, half: Split, seed: int, pool: Split, draw: tuple, ctx, store, key):
        if key is not None:
            holder = torch.nn.Module()
            holder.register_buffer("log_probs", torch.empty(len(pool), ctx.data.num_classes, dtype=torch.float64))
            meta = store.load(key, holder)
            if meta is not None:
                return holder.log_probs.numpy(), float(meta.get("train_seconds", 0.0)), True
        ref = ctx.build_like(half, seed)
        with seeded(*draw, device=ctx.device):
            lp = log_mean_probs(ref.predict_samples(pool.x))
        seconds = float(sum(ref.train_seconds.values()))
        from_cache = bool(ref.from_cache) and all(ref.from_cache.values())
        if key is not None:
            holder.log_probs.copy_(torch.as_tensor(lp, dtype=torch.float64))
            store.save(key, holder, {"kind": "membership-pool-log-probs", "seed": seed},
                       {"train_seconds": seconds, "seconds": 0.0})
        return np.asarray(lp, dtype=np.float64), seconds, from_cache

    def _save_draws(self, refs: References, plan: ReferencePlan, ctx) -> None:
        def source(split: Split):
            return [int(i) for i in split.indices] if split.indices is not None else None

        pool = plan.pool
        record = {"pool": {"order": "members (train split) then non-members (test split)",
                           "train_indices": source(pool.members), "test_indices": source(pool.non_members)},
                  "design": ("shared: each example IN for floor(R/2) of R models, chosen per example"
                             if plan.shared else
                             "target: complementary random halves (reference 2k and 2k+1 split one permutation)"),
                  "rng": ([self.params.reference_seed, "membership-halves"] if plan.shared
                          else [self.params.reference_seed, ctx.seed]),
                  "references": [{"seed": s, "members": np.flatnonzero(m).tolist()}
                                 for s, m in zip(refs.seeds, refs.in_mask)]}
        rel = f"figures/{ctx.suite}--{ctx.model_name}--seed{ctx.seed}--references.json"
        atomic_write_text(ctx.run_dir / rel, json.dumps(record))
        ctx.note(f"reference draws saved in {rel}")

    def _save_examples(self, order, targets: list[Target], pool: Pool, refs: References | None,
                       plan: ReferencePlan, exposed: dict | None, ctx) -> None:
        arrays = {"pool/split": np.r_[np.zeros(len(pool.pick_in)), np.ones(len(pool.pick_out))].astype(np.uint8),
                  "pool/index": np.r_[pool.pick_in, pool.pick_out].astype(np.int32),
                  "pool/label": pool.labels.astype(np.int16)}
        if refs is not None:
            arrays["references/in_mask"] = refs.in_mask.astype(bool)
            arrays["references/phi"] = refs.phi.astype(np.float32)
        if plan.shared:
            for r, t in enumerate(targets):
                arrays[f"target{r}/is_member"] = t.is_member.astype(bool)
                arrays[f"target{r}/phi"] = t.phi.astype(np.float32)
                arrays[f"target{r}/references/in_use"] = t.in_use.astype(bool)
                arrays[f"target{r}/references/out_use"] = t.out_use.astype(bool)
                arrays.update({f"target{r}/score/{a}": t.scores[a].astype(np.float32) for a in order})
        else:
            t = targets[0]
            arrays["is_member"] = t.is_member.astype(bool)
            arrays["target/phi"] = t.phi.astype(np.float32)
            arrays.update({f"score/{a}": t.scores[a].astype(np.float32) for a in order})
        if exposed is not None:
            arrays["exposure/score"] = exposed["score"].astype(np.float32)
            arrays["exposure/top"] = exposed["top"].astype(np.int32)
        ctx.save_examples(arrays)

    # -- LiRA and RMIA ----------------------------------------------------------------------------
    def _lira_scores(self, log_probs, labels, refs: References, ctx, quiet: bool) -> dict[str, np.ndarray]:
        p = self.params
        counts_in, counts_out = refs.in_mask.sum(0), refs.out_use.sum(0)
        fewest = int(min(counts_in.min(), counts_out.min()))
        rule = p.lira_variance
        if rule == "auto":
            rule = "per_example" if fewest >= p.lira_per_example_min else "global"
        elif rule == "per_example" and fewest < 2:
            if not quiet:
                ctx.note(f"LiRA: per-example variance needs >= 2 IN and OUT references per example, found "
                         f"{fewest}; using the global variance")
            rule = "global"
        fit = mia.fit_lira(refs.phi, refs.in_mask, variance=rule, out_mask=refs.out_use)
        phi = mia.logit_confidence(log_probs, labels)
        out = {"lira_offline": mia.lira_offline(phi, fit)}
        if fit.min_in >= 1:
            out["lira_online"] = mia.lira_online(phi, fit)
        elif not quiet:
            ctx.note("LiRA online skipped: some examples have no IN reference; offline LiRA reported")
        if not quiet:
            ctx.note(f"LiRA on phi = log(p/(1-p)) of the true class, {rule.replace('_', '-')} variance "
                     f"({fewest} IN/OUT references per example at least; per-example needs "
                     f"{p.lira_per_example_min})")
        return out

    def _rmia_scores(self, log_probs, labels, refs: References, ctx, quiet: bool) -> dict[str, np.ndarray]:
        p = self.params
        n = len(labels)
        p_target = np.exp(mia.true_class_log_prob(log_probs, labels))
        z = np.arange(n)
        if 0 < p.rmia_population < n:
            z = np.sort(np.random.default_rng([p.reference_seed, ctx.seed, 1]).choice(n, p.rmia_population,
                                                                                       replace=False))
        out = {}
        for name, offline in (("rmia_offline", True), ("rmia_online", False)):
            marginal = mia.rmia_marginal(refs.p_true, refs.in_mask, offline=offline, a=p.rmia_a,
                                         out_mask=refs.out_use)
            out[name] = mia.rmia_scores(p_target, marginal, p_target[z], marginal[z], gamma=p.rmia_gamma)
        if not quiet:
            ctx.note(f"RMIA: {len(z)} population examples z from the pool, gamma = {p.rmia_gamma:g}, offline "
                     f"a = {p.rmia_a:g} (not tuned)")
        return out

    # -- figure -----------------------------------------------------------------------------------
    def _plot(self, order: list[str], targets: list[Target], ctx) -> None:
        if not ctx.wants_figures:
            return
        from matplotlib.figure import Figure

        truth = np.concatenate([t.is_member for t in targets])
        n_in, n_out = int(truth.sum()), int((~truth).sum())
        fig = Figure(figsize=(5.2, 4.4))
        ax = fig.subplots()
        lo = 1.0 / n_out
        # draw each step-shaped ROC on a log-spaced FPR grid: thousands of raw points made 240 KB SVGs
        grid = np.geomspace(lo / 2, 1.0, 400)
        for attack in order:
            fpr, tpr = mia.roc(np.concatenate([t.scores[attack] for t in targets]), truth)
            style = "-" if attack in REFERENCE_ATTACKS else ":" if attack in LABEL_ONLY_ATTACKS else "--"
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
        pooled = f"{len(targets)} targets pooled: " if len(targets) > 1 else ""
        ctx.save_figure(fig, "roc", f"Log-log ROC of every attack on {ctx.model_name} ({pooled}{n_in} members, "
                                    f"{n_out} non-members); dotted: gap (label-only), dashed: threshold attacks, "
                                    f"solid: reference attacks.")


def _resolution_text(status: str, allowed: int, needed: int, n_out: int, where: str) -> str:
    where = f" {where}" if where else ""
    if status == "undefined":
        return (f"{n_out} non-members{where}: no false positive fits below this FPR, so the point is not "
                f"resolved (needs >= {needed} non-members)")
    if status == "coarse":
        return (f"{n_out} non-members{where}: the threshold may pass {allowed} of them, coarse (>= {needed} "
                f"needed for 10)")
    return f"{n_out} non-members{where}: the threshold may pass {allowed} of them"


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.softmax(-1).mean(0).argmax(1) == labels).double().mean())
