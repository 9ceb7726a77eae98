"""Adversarial robustness: FGSM / PGD (torchattacks) over an eps sweep, sanity checks, detection AUROC.

Protocol (docs/adversarial.md):
* a fixed, seeded subset of the test split is attacked (``n_examples``, ``subset_seed``);
* the attacked module is the deployed predictive, log of the mean softmax over S samples; a random
  predictive (two calls differ) gets ``attack_samples`` fresh samples per call, sampling on
  (expectation over transformation); a fixed one (deterministic net, ensemble) is attacked whole;
* adversarial examples of a random predictive are re-evaluated ``reevaluations`` times with fresh
  samples at the evaluation S; ``robust_accuracy`` is the mean, ``robust_accuracy_std`` the std;
* sanity checks after Carlini et al. (2019) are records with metric ``sanity_check`` (1 pass, 0 fail).
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
from .base import SuitePlugin

Score = Literal["msp", "entropy", "mutual_information", "energy"]
#: share of examples whose input gradient must be non-zero for the gradients_nonzero check
MIN_NONZERO_GRADIENT_SHARE = 0.9
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
    batch_size: int = 512  # inputs per attack forward pass, counting the S samples (examples = this // S)
    reuse_smaller_eps: bool = True  # PGD/AutoAttack attack only what survived the next smaller eps
    autoattack_version: Literal["standard", "rand", "plus"] = "standard"
    detection_scores: tuple[Score, ...] = ("msp", "entropy", "mutual_information", "energy")
    sanity_checks: bool = True
    large_eps: float = 0.5  # extra PGD radius for accuracy_falls_at_large_eps (0: largest sweep eps)
    large_eps_max_accuracy: float = 0.1  # that check passes when PGD accuracy there is at most this
    sanity_tolerance: float = 0.03  # slack (plus twice the re-evaluation std) in comparisons of attacks
    transfer_check: bool = True
    square_queries: int = 100  # gradient-free (Square) check; 0 = off
    square_examples: int = 100
    example_pairs: int = 6  # clean/adversarial pairs in the figure; 0 = no figure

    def check(self) -> None:
        require(len(self.attacks) > 0, "attacks", "at least one of 'fgsm', 'pgd', 'autoattack'", self.attacks)
        require(len(self.eps) > 0 and all(0.0 <= e <= 1.0 for e in self.eps), "eps",
                "a non-empty list of numbers in [0, 1]", list(self.eps))
        require(self.n_examples >= 0, "n_examples", "0 (all) or a positive integer", self.n_examples)
        require(self.pgd_steps >= 1, "pgd_steps", "an integer >= 1", self.pgd_steps)
        require(self.pgd_step_scale > 0, "pgd_step_scale", "a positive number", self.pgd_step_scale)
        require(self.pgd_restarts >= 1, "pgd_restarts", "an integer >= 1", self.pgd_restarts)
        require(self.attack_samples >= 1, "attack_samples", "an integer >= 1", self.attack_samples)
        require(self.reevaluations >= 1, "reevaluations", "an integer >= 1", self.reevaluations)
        require(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        require(0.0 <= self.large_eps <= 1.0, "large_eps", "a number in [0, 1]", self.large_eps)
        require(0.0 <= self.large_eps_max_accuracy <= 1.0, "large_eps_max_accuracy", "a number in [0, 1]",
                self.large_eps_max_accuracy)
        require(0.0 <= self.sanity_tolerance <= 1.0, "sanity_tolerance", "a number in [0, 1]",
                self.sanity_tolerance)
        require(self.square_queries >= 0, "square_queries", "0 (off) or a positive integer", self.square_queries)
        require(self.square_examples >= 1, "square_examples", "an integer >= 1", self.square_examples)
        require(self.example_pairs >= 0, "example_pairs", "an integer >= 0", self.example_pairs)


@dataclass
class Outcome:
    """One attack at one eps: the adversarial inputs and the correctness of each re-evaluation."""

    x_adv: torch.Tensor
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
    """FGSM/PGD robust accuracy over eps on the deployed predictive (EOT), sanity checks, detection AUROC."""

    Params = AdversarialParams
    metrics = ("clean_accuracy", "robust_accuracy", "robust_accuracy_std", "adv_detection_auroc",
               "sanity_check")
    tiny = {"eps": [0.0, 0.1, 0.3], "n_examples": 48, "pgd_steps": 5, "attack_samples": 2,
            "reevaluations": 2, "large_eps": 0.0, "square_queries": 20, "square_examples": 16,
            "example_pairs": 3}

    def skip_reason(self, model, data):
        if not model.capabilities().differentiable:
            return "the model is not differentiable (gradient attacks do not apply)"
        return None

    # -- the run ------------------------------------------------------------------------------
    def run(self, model, data, ctx) -> None:
        p = self.params
        self.model, self.ctx = model, ctx
        idx = self._subset(len(data.test))
        self.x, self.y = data.test.x[idx], data.test.y[idx]
        self.clean_logits = ctx.samples("test")[:, torch.as_tensor(idx)]
        self.clean_acc = float((mean_probs(self.clean_logits).argmax(1) == self.y.numpy()).mean())
        # A random predictive (two calls differ) is attacked with EOT at attack_samples and re-evaluated
        # R times; a fixed one (deterministic net, ensemble members) is attacked whole, at its own S.
        self.spread = attacks.output_spread(model.predictive(model.n_samples), self.x[:16])
        self.random = self.spread > SPREAD_TOLERANCE
        self.reevals = p.reevaluations if self.random else 1
        self.attack_s = p.attack_samples if self.random else model.n_samples
        self.predictive = model.predictive(self.attack_s)
        self.settings = attacks.AttackSettings(
            steps=p.pgd_steps, step_scale=p.pgd_step_scale, random_start=p.pgd_random_start,
            restarts=p.pgd_restarts, batch_size=max(1, p.batch_size // self.attack_s),
            n_classes=data.num_classes, seed=ctx.seed, autoattack_version=p.autoattack_version,
            square_queries=p.square_queries)
        n = len(idx)
        ctx.record("clean_accuracy", self.clean_acc, n=n)
        ctx.note(f"{n} seeded test examples (subset_seed {p.subset_seed}); attacked predictive S = "
                 f"{self.attack_s}, evaluation S = {model.n_samples}, re-evaluations R = {self.reevals}; "
                 f"PGD {p.pgd_steps} steps, step {p.pgd_step_scale:g}*eps/steps, {p.pgd_restarts} restart(s)")

        self.eps = sorted(set(p.eps))
        self._n_attacks = 0
        self.results: dict[tuple[str, float], Outcome] = {}
        for name in p.attacks:
            previous = None
            for eps in self.eps:
                out = self._attack(name, self.predictive, eps, start_from=self._reusable(name, previous))
                self.results[(name, eps)] = previous = out
                self._record_accuracy(name, eps, out, n)
                self._record_detection(name, eps, out)
        if p.sanity_checks:
            self._sanity_checks()
        self._figures()

    def _subset(self, n_test: int) -> np.ndarray:
        n = self.params.n_examples or n_test
        if n >= n_test:
            return np.arange(n_test)
        rng = np.random.default_rng(self.params.subset_seed)
        return np.sort(rng.choice(n_test, size=n, replace=False))

    def _reusable(self, name: str, previous: Outcome | None) -> Outcome | None:
        return previous if self.params.reuse_smaller_eps and name in ("pgd", "autoattack") else None

    def _attack(self, name: str, module, eps: float, x=None, y=None, reevals=None, settings=None,
                start_from: Outcome | None = None) -> Outcome:
        """Attack (all of, or the survivors of ``start_from`` among) x at ``eps``; evaluate R times.

        An adversarial example found at a smaller eps lies inside the larger eps-ball, so examples
        that ``start_from`` fooled in every evaluation keep it and are not attacked again.
        """
        x = self.x if x is None else x
        y = self.y if y is None else y
        settings = settings or self.settings
        if start_from is None:
            x_adv = attacks.run(name, module, x, y, eps, settings)
        else:
            x_adv = start_from.x_adv.clone()
            todo = torch.as_tensor(start_from.correct.any(axis=0))
            if todo.any():
                x_adv[todo] = attacks.run(name, module, x[todo], y[todo], eps, settings)
        self._n_attacks += 1  # keys stay unique in the cell's prediction memo, also across suite instances
        key = f"{self.ctx.suite}:{name}@{eps:g}:{self._n_attacks}"
        return self._evaluate(key, x_adv, y, reevals or self.reevals)

    def _evaluate(self, key: str, x_adv: torch.Tensor, y: torch.Tensor, reevals: int) -> Outcome:
        """R fresh evaluations at the evaluation S, through the context (one forward pass per key)."""
        correct, first = [], None
        for r in range(reevals):
            logits = self.ctx.samples_of(f"adversarial:{key}:r{r}", x_adv)
            first = logits if first is None else first
            correct.append(mean_probs(logits).argmax(1) == y.numpy())
        return Outcome(x_adv=x_adv, correct=np.stack(correct), logits=first)

    def _record_accuracy(self, name: str, eps: float, out: Outcome, n: int) -> None:
        r = len(out.accuracies)
        if r > 1 or not self.random:
            note = f"mean of R={r} evaluations, std {out.std:.4f}"
            self.ctx.record("robust_accuracy", out.mean, attack=name, eps=eps, n=n, note=note)
            self.ctx.record("robust_accuracy_std", out.std, attack=name, eps=eps, n=n)
        else:  # a check's single evaluation of a random predictive: no spread to report
            self.ctx.record("robust_accuracy", out.mean, attack=name, eps=eps, n=n,
                            note="one evaluation (sanity check)")

    def _record_detection(self, name: str, eps: float, out: Outcome) -> None:
        if eps <= 0:
            return  # adversarial = clean inputs; nothing to detect
        from sklearn.metrics import roc_auc_score

        labels = np.r_[np.zeros(len(self.y)), np.ones(len(self.y))]  # adversarial = positive
        for score in self.params.detection_scores:
            if score == "mutual_information" and self.model.n_samples == 1:
                continue  # identically 0 for one sample: the AUROC would be 0.5 by construction
            values = np.r_[_uncertainty(score, self.clean_logits), _uncertainty(score, out.logits)]
            self.ctx.record("adv_detection_auroc", roc_auc_score(labels, values), attack=name, eps=eps,
                            score=score, n=len(labels))

    # -- sanity checks ------------------------------------------------------------------------
    def _check(self, name: str, passed: bool, note: str) -> None:
        self.ctx.record("sanity_check", 1.0 if passed else 0.0, attack=name, note=note)

    def _strongest(self, eps: float) -> Outcome:
        """The white-box outcome with the lowest mean accuracy at ``eps``."""
        return min((self.results[(a, eps)] for a in self.params.attacks), key=lambda o: o.mean)

    def _slack(self, *outcomes: Outcome) -> float:
        return self.params.sanity_tolerance + 2 * max(o.std for o in outcomes)

    def _sanity_checks(self) -> None:
        p = self.params
        self._check_large_eps()
        if "fgsm" in p.attacks and "pgd" in p.attacks:
            bad = []
            for eps in self.eps:
                f, g = self.results[("fgsm", eps)], self.results[("pgd", eps)]
                if g.mean > f.mean + self._slack(f, g):
                    bad.append(eps)
            pairs = ", ".join(f"eps {e:g}: PGD {self.results[('pgd', e)].mean:.3f} vs FGSM "
                              f"{self.results[('fgsm', e)].mean:.3f}" for e in self.eps)
            self._check("pgd_at_least_fgsm", not bad, pairs + (f"; fails at eps {bad}" if bad else ""))
        else:
            self.ctx.note("sanity check pgd_at_least_fgsm skipped: needs both 'fgsm' and 'pgd' in attacks")
        if p.transfer_check:
            self._check_transfer()
        self._check_gradients()
        self._check_eot()
        if p.square_queries > 0:
            self._check_gradient_free()

    def _check_large_eps(self) -> None:
        p = self.params
        large = max(p.large_eps, self.eps[-1])
        if ("pgd", large) in self.results:
            out = self.results[("pgd", large)]
        else:  # one evaluation suffices for a threshold check
            out = self._attack("pgd", self.predictive, large, reevals=1,
                               start_from=self._reusable("pgd", self.results.get(("pgd", self.eps[-1]))))
        passed = out.mean <= p.large_eps_max_accuracy
        self._check("accuracy_falls_at_large_eps", passed,
                    f"PGD accuracy {out.mean:.3f} at eps {large:g} (pass if <= {p.large_eps_max_accuracy:g})")

    def _check_transfer(self) -> None:
        base = self.model.deterministic_base()
        if base is None:
            self.ctx.note("sanity check transfer_not_stronger skipped: the model has no deterministic base")
            return
        if [id(net) for net in self.model.networks()] == [id(base)]:
            self.ctx.note("sanity check transfer_not_stronger skipped: the deterministic base is the "
                          "attacked network itself")
            return
        surrogate = attacks.LogSoftmax(base).eval()
        settings = dataclasses.replace(self.settings, batch_size=self.params.batch_size)
        bad, parts = [], []
        for eps in (e for e in self.eps if e > 0):
            transfer = self._attack("pgd", surrogate, eps, reevals=1, settings=settings)
            white = self._strongest(eps)
            self.results[("pgd_transfer", eps)] = transfer
            self._record_accuracy("pgd_transfer", eps, transfer, len(self.y))
            parts.append(f"eps {eps:g}: transfer {transfer.mean:.3f} vs white-box {white.mean:.3f}")
            if transfer.mean < white.mean - self._slack(transfer, white):
                bad.append(eps)
        if parts:
            self._check("transfer_not_stronger", not bad,
                        "; ".join(parts) + (f"; transfer stronger at eps {bad}" if bad else ""))

    def _check_gradients(self) -> None:
        n = min(len(self.x), 100)
        grad = attacks.input_gradients(self.predictive, self.x[:n], self.y[:n])
        finite = bool(torch.isfinite(grad).all())
        norms = grad.flatten(1).abs().sum(dim=1)
        share = float((norms > 0).float().mean())
        passed = finite and share >= MIN_NONZERO_GRADIENT_SHARE
        self._check("gradients_nonzero", passed,
                    f"{'finite' if finite else 'NON-FINITE'} input gradients; non-zero for {share:.0%} of "
                    f"{n} examples (pass if >= {MIN_NONZERO_GRADIENT_SHARE:.0%}); median L1 norm "
                    f"{float(norms.median()):.3g}")

    def _check_eot(self) -> None:
        if self.random:
            self._check("eot_in_use", self.attack_s > 1,
                        f"random predictive: two eval-mode calls differ by up to {self.spread:.3g} in "
                        f"probability (sampling stays on); attacked with EOT over S = {self.attack_s} "
                        f"samples per step (must be > 1)")
            return
        if not self.model.stochastic:
            self._check("eot_in_use", True, "deterministic model: EOT not needed (two calls of the "
                        "predictive agree)")
            return
        probe = self.x[:16]
        if attacks.output_spread(self.predictive, probe, dropout_on=True) > SPREAD_TOLERANCE:
            self._check("eot_in_use", False, "declared stochastic, but its dropout layers stop sampling "
                        "in eval(), which attack libraries call: the attack saw a deterministic model")
        elif attacks.sample_spread(self.model, probe) > SPREAD_TOLERANCE:
            self._check("eot_in_use", True, f"fixed samples (e.g. ensemble members): the whole deployed "
                        f"predictive (S = {self.attack_s}) is attacked; EOT not needed")
        else:
            self._check("eot_in_use", False, "declared stochastic, but two calls agree and its samples "
                        "are identical: sampling is switched off")

    def _check_gradient_free(self) -> None:
        eps_list = [e for e in self.eps if e > 0]
        if not eps_list:
            return
        eps = eps_list[(len(eps_list) - 1) // 2]  # a middle radius: at the largest both usually reach ~0
        m = min(self.params.square_examples, len(self.x))
        square = self._attack("square", self.predictive, eps, self.x[:m], self.y[:m], reevals=1)
        white = self._strongest(eps)
        white_acc = float(white.correct[:, :m].mean())
        white_std = float(white.correct[:, :m].mean(axis=1).std(ddof=1)) if len(white.correct) > 1 else 0.0
        self.ctx.record("robust_accuracy", square.mean, attack="square", eps=eps, n=m,
                        note=f"{self.params.square_queries} queries, first {m} examples of the subset, "
                             f"one evaluation")
        slack = self.params.sanity_tolerance + 2 * white_std
        passed = square.mean >= white_acc - slack
        self._check("gradient_free_not_stronger", passed,
                    f"eps {eps:g}, {m} examples: Square ({self.params.square_queries} queries) "
                    f"{square.mean:.3f} vs white-box {white_acc:.3f}")

    # -- figures ------------------------------------------------------------------------------
    def _figures(self) -> None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.6))
        for name in list(self.params.attacks) + ["pgd_transfer"]:
            eps = [e for e in self.eps if e > 0 and (name, e) in self.results]
            if not eps:
                continue
            outs = [self.results[(name, e)] for e in eps]
            ax.errorbar([0.0] + eps, [self.clean_acc] + [o.mean for o in outs], yerr=[0.0] + [o.std for o in outs],
                        marker="o", capsize=3, label=name, linestyle="--" if name == "pgd_transfer" else "-")
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

