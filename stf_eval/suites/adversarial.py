"""Adversarial robustness: FGSM / PGD / AutoAttack (torchattacks) over an eps sweep, checks, detection AUROC.

Protocol (docs/adversarial.md):
* a fixed, seeded subset of the test split is attacked (``n_examples``, ``subset_seed``);
* the attacked module is the deployed predictive, log of the mean softmax over S samples; a random
  predictive (two calls differ) gets ``attack_samples`` fresh samples per call, sampling on (EOT as
  a Monte-Carlo average over S samples per step); a fixed one (deterministic net, ensemble) is
  attacked whole;
* every eps is attacked from scratch; every attack's randomness is seeded from (cell seed, attack,
  eps, what is attacked) on the model's device;
* adversarial examples of a random predictive are re-evaluated ``reevaluations`` times with fresh
  samples at the evaluation S; ``robust_accuracy`` is the mean with a binomial interval over the
  examples, ``robust_accuracy_std`` the std over re-evaluations; ``attack = "union"`` is the
  per-example worst case over every attack run at that eps;
* sanity checks that can fail (adversarial_checks.py) are records with metric ``sanity_check``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .. import attacks
from ..metrics.predictive import energy, entropy, mean_probs, mutual_information
from ..params import require
from ..registry import SUITES
from ..seeding import seeded
from . import adversarial_checks as checks
from .base import SuitePlugin

Score = Literal["msp", "entropy", "mutual_information", "energy"]
#: probabilities of two calls differing by more than this: the predictive samples (float noise is ~1e-7)
SPREAD_TOLERANCE = 1e-6


@dataclass(frozen=True)
class AdversarialParams:
    attacks: tuple[Literal["fgsm", "pgd", "autoattack"], ...] = ("fgsm", "pgd")
    eps: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)  # L-inf radii in pixel units ([0, 1] images)
    n_examples: int = 500  # seeded subset of the test split; 0 = all of it
    subset_seed: int = 0
    pgd_steps: int = 20
    pgd_step_scale: float = 2.5  # step size = pgd_step_scale * eps / pgd_steps
    pgd_restarts: int = 1
    pgd_random_start: bool = True
    attack_samples: int = 8  # S of the attacked predictive (random predictives)
    reevaluations: int = 5  # R fresh evaluations of each adversarial set (random predictives)
    batch_size: int = 0  # examples per attack batch; 0 = sized from the attack's S by the model
    autoattack_version: Literal["auto", "standard", "rand", "plus"] = "auto"  # auto: rand if random, else standard
    autoattack_eps: tuple[float, ...] = ()  # eps AutoAttack runs at; empty = every sweep eps
    noise_baseline: bool = True  # random sign noise at every eps (an attack row, and a sanity check)
    detection_scores: tuple[Score, ...] = ("msp", "entropy", "mutual_information", "energy")
    sanity_checks: bool = True
    sanity_check_seeds: tuple[int, ...] = ()  # cell seeds whose cells run the checks; empty = every seed
    check_examples: int = 100  # first subset examples the convergence and gradient checks use
    check_samples_factor: int = 4  # converged_in_samples: attack S x this
    check_steps_factor: int = 5  # converged_in_steps: PGD steps x this ...
    check_restarts: int = 2  # ... with this many restarts, best iterate kept
    gradient_ratio_min: float = 0.01  # gradient_norm_vs_base passes at a median-norm ratio >= this
    large_eps: float = 0.5  # extra PGD radius for accuracy_falls_with_eps (0: largest sweep eps)
    large_eps_max_accuracy: float = 0.1  # that check needs PGD accuracy there at most this
    transfer_check: bool = True
    square_queries: int = 1000  # gradient-free check (Square); below 500 the check is not run
    square_examples: int = 50
    example_pairs: int = 6  # clean/adversarial pairs in the figure; 0 = no figure

    def check(self) -> None:
        require(len(self.attacks) > 0, "attacks", "at least one of 'fgsm', 'pgd', 'autoattack'", self.attacks)
        require(len(self.eps) > 0 and all(0.0 <= e <= 1.0 for e in self.eps), "eps",
                "a non-empty list of numbers in [0, 1]", list(self.eps))
        require(all(e in self.eps for e in self.autoattack_eps), "autoattack_eps", "eps taken from 'eps'",
                list(self.autoattack_eps))
        for key in ("pgd_steps", "pgd_restarts", "attack_samples", "reevaluations", "check_examples",
                    "check_samples_factor", "check_steps_factor", "check_restarts", "square_examples"):
            require(getattr(self, key) >= 1, key, "an integer >= 1", getattr(self, key))
        for key in ("n_examples", "batch_size", "square_queries", "example_pairs"):
            require(getattr(self, key) >= 0, key, "0 or a positive integer", getattr(self, key))
        require(self.pgd_step_scale > 0, "pgd_step_scale", "a positive number", self.pgd_step_scale)
        require(self.gradient_ratio_min >= 0, "gradient_ratio_min", "a number >= 0", self.gradient_ratio_min)
        require(0.0 <= self.large_eps <= 1.0, "large_eps", "a number in [0, 1]", self.large_eps)
        require(0.0 <= self.large_eps_max_accuracy <= 1.0, "large_eps_max_accuracy", "a number in [0, 1]",
                self.large_eps_max_accuracy)


@dataclass
class Outcome:
    """One attack at one eps: the adversarial inputs and the predictions of each re-evaluation."""

    x_adv: torch.Tensor
    pred: np.ndarray  # [R, n] predicted class
    correct: np.ndarray  # [R, n] bool
    logits: torch.Tensor  # [S, n, C] of the first re-evaluation

    @property
    def accuracies(self) -> np.ndarray:
        return self.correct.mean(axis=1)

    @property
    def mean(self) -> float:
        return float(self.accuracies.mean())

    @property
    def std(self) -> float:
        return float(self.accuracies.std(ddof=1)) if len(self.accuracies) > 1 else 0.0


@SUITES.register("adversarial")
class Adversarial(SuitePlugin):
    """FGSM/PGD/AutoAttack robust accuracy over eps on the deployed predictive, checks, detection AUROC."""

    Params = AdversarialParams
    metrics = ("clean_accuracy", "robust_accuracy", "robust_accuracy_std", "adv_detection_auroc",
               "sanity_check")
    tiny = {"eps": [0.0, 0.1, 0.3], "n_examples": 48, "pgd_steps": 5, "attack_samples": 2,
            "reevaluations": 2, "large_eps": 0.0, "square_queries": 500, "square_examples": 16,
            "check_examples": 32, "check_samples_factor": 2, "check_steps_factor": 2, "example_pairs": 3}
    tolerance = SPREAD_TOLERANCE

    def skip_reason(self, model, data):
        if not model.capabilities().differentiable:
            return "the model is not differentiable (gradient attacks do not apply)"
        return None

    # -- the run ------------------------------------------------------------------------------
    def run(self, model, data, ctx) -> None:
        p = self.params
        self.model, self.ctx = model, ctx
        self.idx = self._subset(len(data.test))
        self.x, self.y = data.test.x[self.idx], data.test.y[self.idx]
        self.clean_logits = ctx.samples("test")[:, torch.as_tensor(self.idx)]
        self.clean_pred = mean_probs(self.clean_logits).argmax(1)
        self.clean_acc = float((self.clean_pred == self.y.numpy()).mean())
        # A random predictive (two calls differ) is attacked with EOT at attack_samples and re-evaluated
        # R times; a fixed one (deterministic net, ensemble members) is attacked whole, at its own S.
        with seeded(ctx.seed, "adversarial", "spread", device=model.device):
            self.spread = attacks.output_spread(model.predictive(model.n_samples), self.x[:16])
        self.random = self.spread > SPREAD_TOLERANCE
        self.reevals = p.reevaluations if self.random else 1
        self.attack_s = p.attack_samples if self.random else model.n_samples
        self.predictive = model.predictive(self.attack_s)
        version = p.autoattack_version if p.autoattack_version != "auto" else ("rand" if self.random else "standard")
        self.settings = attacks.AttackSettings(
            steps=p.pgd_steps, step_scale=p.pgd_step_scale, random_start=p.pgd_random_start,
            restarts=p.pgd_restarts, batch_size=p.batch_size or model.prediction_batch_size(self.attack_s, gradient=True),
            n_classes=data.num_classes, seed=ctx.seed, autoattack_version=version,
            square_queries=p.square_queries)
        n = len(self.idx)
        ctx.record("clean_accuracy", self.clean_acc, n=n, **checks._ci(self.clean_acc, n))
        ctx.note(f"{n} seeded test examples (subset_seed {p.subset_seed}); attacked predictive S = "
                 f"{self.attack_s}, evaluation S = {model.n_samples}, re-evaluations R = {self.reevals}; "
                 f"PGD {p.pgd_steps} steps, step {p.pgd_step_scale:g}*eps/steps, {p.pgd_restarts} restart(s); "
                 f"{self.settings.batch_size} examples per attack batch; every eps attacked from scratch")
        if "autoattack" in p.attacks:
            ctx.note(f"AutoAttack version '{version}' ("
                     + ("APGD-CE and APGD-DLR with EOT over 20 calls of the S-sample predictive: the predictive is random"
                        if version == "rand" else "APGD-CE, APGD-T, FAB-T, Square") + ")")

        self.eps = sorted(set(p.eps))
        self._n_attacks = 0
        self.results: dict[tuple[str, float], Outcome] = {}
        for name in p.attacks:
            for eps in self.eps:
                if name == "autoattack" and p.autoattack_eps and eps not in p.autoattack_eps:
                    continue
                self.results[(name, eps)] = out = self.attack(name, self.predictive, eps)
                self._record_accuracy(name, eps, out)
                self._record_detection(name, eps, out)
        if p.noise_baseline:
            for eps in (e for e in self.eps if e > 0):
                self.results[("noise", eps)] = out = self.attack("noise", self.predictive, eps)
                self._record_accuracy("noise", eps, out)
        if p.transfer_check:
            self._transfer()
        self._record_union()
        if p.sanity_checks and (not p.sanity_check_seeds or ctx.seed in p.sanity_check_seeds):
            checks.run_checks(self)
        elif p.sanity_checks:
            seeds = ", ".join(str(s) for s in p.sanity_check_seeds)
            ctx.note(f"sanity checks not run in this cell: they run in the cells of seed(s) {seeds} "
                     f"(sanity_check_seeds); the attacks and robust accuracies above are complete")
        self._save_examples()
        self._figures()

    def _subset(self, n_test: int) -> np.ndarray:
        n = self.params.n_examples or n_test
        if n >= n_test:
            return np.arange(n_test)
        rng = np.random.default_rng(self.params.subset_seed)
        return np.sort(rng.choice(n_test, size=n, replace=False))

    def white_box_at(self, eps: float) -> list[str]:
        return [a for a in attacks.WHITE_BOX if (a, eps) in self.results]

    def attack(self, name: str, module, eps: float, x=None, y=None, reevals=None, settings=None,
               purpose: tuple = ()) -> Outcome:
        """Attack x (default: the subset) at ``eps`` from scratch; evaluate R times at the evaluation S."""
        x = self.x if x is None else x
        y = self.y if y is None else y
        x_adv = attacks.run(name, module, x, y, eps, settings or self.settings,
                            purpose=(self.ctx.suite, self.ctx.model_name, len(x), *purpose))
        self._n_attacks += 1  # keys stay unique in the cell's prediction memo, also across suite instances
        key = f"{self.ctx.suite}:{name}@{eps:g}:{self._n_attacks}"
        return self._evaluate(key, x_adv, y, reevals or self.reevals)

    def _evaluate(self, key: str, x_adv: torch.Tensor, y: torch.Tensor, reevals: int) -> Outcome:
        """R fresh evaluations at the evaluation S, through the context (one forward pass per key)."""
        preds, first = [], None
        for r in range(reevals):
            logits = self.ctx.samples_of(f"adversarial:{key}:r{r}", x_adv)
            first = logits if first is None else first
            preds.append(mean_probs(logits).argmax(1))
        pred = np.stack(preds)
        return Outcome(x_adv=x_adv, pred=pred, correct=pred == y.numpy()[None], logits=first)

    def _record_accuracy(self, name: str, eps: float, out: Outcome) -> None:
        n, r = out.correct.shape[1], len(out.accuracies)
        self.ctx.record("robust_accuracy", out.mean, attack=name, eps=eps, n=n, **checks._ci(out.mean, n),
                        note=f"mean of R={r} evaluations, std {out.std:.4f}; 95% Wilson interval over the {n} "
                             f"examples")
        self.ctx.record("robust_accuracy_std", out.std, attack=name, eps=eps, n=n)

    def _record_union(self) -> None:
        """Worst case per example: robust only if it survives every attack run at that eps, every evaluation."""
        self.union = {}
        for eps in self.eps:
            names = [a for a in (*self.params.attacks, "pgd_transfer", "noise") if (a, eps) in self.results]
            if not names:
                continue
            survived = np.all([self.results[(a, eps)].correct.all(axis=0) for a in names], axis=0)
            self.union[eps] = survived
            acc, n = float(survived.mean()), len(survived)
            self.ctx.record("robust_accuracy", acc, attack="union", eps=eps, n=n, **checks._ci(acc, n),
                            note=f"per-example worst case over {', '.join(names)} (every re-evaluation)")

    def _record_detection(self, name: str, eps: float, out: Outcome) -> None:
        """AUROC of uncertainty between correctly classified clean inputs and *successful* adversarials
        (clean prediction correct, adversarial prediction wrong in the first re-evaluation)."""
        if eps <= 0:
            return  # adversarial = clean inputs; nothing to detect
        from sklearn.metrics import roc_auc_score

        y = self.y.numpy()
        clean_ok = self.clean_pred == y
        success = clean_ok & (out.pred[0] != y)
        k = int(success.sum())
        if k == 0 or not clean_ok.any():
            self.ctx.note(f"adv_detection_auroc for {name} at eps {eps:g} not computed: "
                          f"{k} successful adversarial examples")
            return
        labels = np.r_[np.zeros(int(clean_ok.sum())), np.ones(k)]  # adversarial = positive
        for score in self.params.detection_scores:
            if score == "mutual_information" and self.model.n_samples == 1:
                continue  # identically 0 for one sample: the AUROC would be 0.5 by construction
            values = np.r_[_uncertainty(score, self.clean_logits[:, clean_ok]),
                           _uncertainty(score, out.logits[:, success])]
            self.ctx.record("adv_detection_auroc", roc_auc_score(labels, values), attack=name, eps=eps,
                            score=score, n=k, note=f"{k} successful adversarial vs {int(clean_ok.sum())} "
                                                   f"correctly classified clean examples")

    def _transfer(self) -> None:
        """PGD on the model's deterministic base, fed to the model (``pgd_transfer``), at every eps > 0."""
        base = self.model.deterministic_base()
        if base is None or [id(net) for net in self.model.networks()] == [id(base)]:
            self.ctx.note("pgd_transfer not run: the model has no deterministic base, or it is the attacked "
                          "network itself")
            return
        surrogate = attacks.LogSoftmax(base).eval()
        settings = dataclasses.replace(self.settings, batch_size=self.model.prediction_batch_size(1))
        for eps in (e for e in self.eps if e > 0):
            self.results[("pgd_transfer", eps)] = out = self.attack("pgd", surrogate, eps, settings=settings,
                                                                    purpose=("transfer",))
            self._record_accuracy("pgd_transfer", eps, out)

    def _save_examples(self) -> None:
        arrays = {"index": self.idx.astype(np.int32), "label": self.y.numpy().astype(np.int16),
                  "clean/pred": self.clean_pred.astype(np.int16)}
        for (name, eps), out in self.results.items():
            arrays[f"{name}/{eps:g}/pred"] = out.pred.astype(np.int16)
            arrays[f"{name}/{eps:g}/correct"] = out.correct
        for eps, survived in self.union.items():
            arrays[f"union/{eps:g}/correct"] = survived
        self.ctx.save_examples(arrays)

    # -- figures ------------------------------------------------------------------------------
    def _figures(self) -> None:
        if not self.ctx.wants_figures:
            return
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.6))
        for name in [*self.params.attacks, "pgd_transfer", "noise"]:
            eps = [e for e in self.eps if e > 0 and (name, e) in self.results]
            if not eps:
                continue
            outs = [self.results[(name, e)] for e in eps]
            ax.errorbar([0.0] + eps, [self.clean_acc] + [o.mean for o in outs], yerr=[0.0] + [o.std for o in outs],
                        marker="o", capsize=3, label=name, linestyle="-" if name in self.params.attacks else "--")
        union = sorted(e for e in self.union if e > 0)
        if union:
            ax.plot([0.0, *union], [self.clean_acc, *(float(self.union[e].mean()) for e in union)], color="black",
                    marker="s", linestyle=":", label="union (worst case)")
        ax.set_xlabel("eps (L-inf, pixel units)")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(self.ctx.model_name)
        self.ctx.save_figure(fig, "robust_accuracy_vs_eps",
                             f"Robust accuracy against eps, mean +- std over {self.reevals} evaluation(s); "
                             f"eps 0 is clean accuracy.")
        self._example_figure()

    def _example_figure(self) -> None:
        import matplotlib.pyplot as plt

        k = min(self.params.example_pairs, len(self.x))
        attack = "pgd" if "pgd" in self.params.attacks else self.params.attacks[0]
        eps_list = [e for e in self.eps if e > 0]
        if k == 0 or not eps_list:
            return
        eps = eps_list[(len(eps_list) - 1) // 2]
        out = self.results[(attack, eps)]
        clean_pred = mean_probs(self.clean_logits[:, :k]).argmax(1)
        adv_pred = mean_probs(out.logits[:, :k]).argmax(1)
        fig, axes = plt.subplots(2, k, figsize=(1.3 * k, 3.2), squeeze=False)
        for i in range(k):
            for row, (img, pred) in enumerate(((self.x[i], clean_pred[i]), (out.x_adv[i], adv_pred[i]))):
                ax = axes[row][i]
                pic = img.permute(1, 2, 0).numpy()
                ax.imshow(pic[..., 0] if pic.shape[-1] == 1 else pic, cmap="gray", vmin=0, vmax=1)
                label = f"label {int(self.y[i])}\npred {pred}" if row == 0 else f"pred {pred}"
                ax.set_title(label, fontsize=8, color="black" if pred == int(self.y[i]) else "red")
                ax.set_xticks([])
                ax.set_yticks([])
        axes[0][0].set_ylabel("clean", fontsize=8)
        axes[1][0].set_ylabel(f"{attack} {eps:g}", fontsize=8)
        self.ctx.save_figure(fig, "examples",
                             f"Clean (top) and {attack} eps {eps:g} (bottom) inputs with predicted labels "
                             f"(red: wrong).")


def _uncertainty(score: str, logits: torch.Tensor) -> np.ndarray:
    """An uncertainty score per example, higher = more likely adversarial (OOD-score conventions)."""
    if score == "msp":
        return -mean_probs(logits).max(axis=1)
    if score == "entropy":
        return entropy(mean_probs(logits))
    if score == "mutual_information":
        return mutual_information(logits)
    if score == "energy":
        return -energy(logits)
    raise ValueError(f"unknown score {score!r}")

