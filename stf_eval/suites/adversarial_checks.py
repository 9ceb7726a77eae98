"""Sanity checks of an adversarial evaluation that can fail (Carlini et al. 2019; Tramer et al. 2020).

Each check is a small pure function of measured numbers that returns a ``Check`` (pass/fail, the
numbers, a one-line note); ``run_checks`` measures those numbers on a running adversarial suite and
records one ``sanity_check`` row per check (1 pass, 0 fail; the check's name in ``attack``). A check
that cannot be run here (no deterministic base, a fixed predictive, Square switched off) is not a
record but a note saying why. Comparisons of two robust accuracies use the 95% Wilson interval of a
proportion over the attacked examples (``stf_eval.stats.proportion_interval``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import attacks
from ..seeding import seeded
from ..stats import proportion_interval

#: fewer Square queries than this barely attack (100 queries left 0.938 of 0.945 correct): not run
MIN_SQUARE_QUERIES = 500
#: step size scale of the reference PGD in converged_in_steps (step = scale * eps / steps; Madry et al.)
REFERENCE_STEP_SCALE = 2.5


@dataclass
class Check:
    name: str
    passed: bool
    note: str
    numbers: dict = field(default_factory=dict)


def interval(acc: float, n: int) -> tuple[float, float]:
    """95% Wilson interval of an accuracy over n examples (k rounded from acc * n), clipped to contain acc
    (at k = 0 or n statsmodels is off by ~1e-17, which would fail a check comparing 0 with 0)."""
    lo, hi = proportion_interval(int(round(acc * n)), n)
    return min(lo, acc), max(hi, acc)


# -- pure decisions ---------------------------------------------------------------------------------
def not_beaten(name: str, configured: float, stronger: float, n: int, what: str) -> Check:
    """A stronger setting of the attack must not find much more: its accuracy stays at or above the
    lower end of the configured attack's interval (convergence in the attack's S, steps, restarts)."""
    lo, hi = interval(configured, n)
    passed = stronger >= lo
    return Check(name, passed, f"{what}: {configured:.3f} [{lo:.3f}, {hi:.3f}] vs stronger {stronger:.3f} "
                 f"on {n} examples (pass if the stronger attack stays >= {lo:.3f})",
                 {"configured": configured, "stronger": stronger, "n": n, "ci_low": lo})


def gradient_ratio(norms: np.ndarray, base_norms: np.ndarray, min_ratio: float) -> Check:
    """Median L1 input-gradient norm of the attacked predictive over its deterministic base's: gradient
    masking (saturated or quantised outputs) shows as a ratio orders of magnitude below 1."""
    finite = bool(np.isfinite(norms).all())
    med, base = float(np.median(norms)), float(np.median(base_norms))
    ratio = med / base if base > 0 else (np.inf if med > 0 else 0.0)
    passed = finite and ratio >= min_ratio
    return Check("gradient_norm_vs_base", passed,
                 f"median input-gradient L1 norm {med:.3g} vs deterministic base {base:.3g}: ratio {ratio:.3g} "
                 f"(pass if >= {min_ratio:g}{'' if finite else '; NON-FINITE gradients'}), {len(norms)} examples",
                 {"median": med, "base_median": base, "ratio": ratio})


def noise_weaker(eps: float, noise_acc: float, pgd_acc: float, n: int) -> Check:
    """Random sign noise at the same eps must leave more examples correct than PGD (or both reach 0)."""
    passed = pgd_acc < noise_acc or noise_acc == 0.0
    return Check("noise_weaker_than_pgd", passed,
                 f"eps {eps:g}, {n} examples: random sign noise {noise_acc:.3f} vs PGD {pgd_acc:.3f} "
                 f"(pass if PGD is lower)", {"eps": eps, "noise": noise_acc, "pgd": pgd_acc, "n": n})


def gradient_free_not_stronger(eps: float, square_acc: float, white_acc: float, m: int, queries: int) -> Check:
    """A gradient-free attack (Square) must not beat the best white-box attack beyond its interval:
    if it does, the gradients mislead the white-box attacks."""
    lo, _ = interval(white_acc, m)
    passed = square_acc >= lo
    return Check("gradient_free_not_stronger", passed,
                 f"eps {eps:g}, {m} examples: Square ({queries} queries) {square_acc:.3f} vs white-box "
                 f"{white_acc:.3f} (pass if Square >= {lo:.3f})",
                 {"eps": eps, "square": square_acc, "white_box": white_acc, "n": m, "queries": queries})


def falls_with_eps(eps: list[float], accs: list[float], n: int | list[int], max_final: float) -> Check:
    """Each attack at a larger eps is run from scratch; its accuracy must not rise above the upper end
    of the previous eps's interval, and must reach ``max_final`` at the largest eps. ``n``: the examples
    behind every accuracy, or behind each one (the large-eps point may use fewer)."""
    ns = list(n) if isinstance(n, (list, tuple)) else [n] * len(accs)
    rises = [e for (e, a), prev, m in zip(zip(eps[1:], accs[1:]), accs[:-1], ns[:-1]) if a > interval(prev, m)[1]]
    passed = not rises and accs[-1] <= max_final
    curve = ", ".join(f"{e:g}: {a:.3f}" + ("" if m == ns[0] else f" (n {m})") for e, a, m in zip(eps, accs, ns))
    return Check("accuracy_falls_with_eps", passed,
                 f"PGD accuracy by eps ({curve}), each eps attacked from scratch; pass if it never rises above "
                 f"the previous interval and ends <= {max_final:g}" + (f"; rises at eps {rises}" if rises else ""),
                 {"eps": list(eps), "accuracy": list(accs), "n": ns})


def sampling_under_attack(spread_eval: float, spread_attack: float, tolerance: float) -> Check:
    """A predictive that is random when evaluated must also be random where the attack queries it
    (eval mode, gradients on); otherwise the attack optimised against a different, fixed model."""
    random_eval, random_attack = spread_eval > tolerance, spread_attack > tolerance
    passed = random_attack or not random_eval
    return Check("sampling_under_attack", passed,
                 f"two calls differ by {spread_eval:.3g} at evaluation and by {spread_attack:.3g} as the attack "
                 f"queries the model (pass unless only the evaluation is random)",
                 {"spread_eval": spread_eval, "spread_attack": spread_attack})


def pgd_at_least_fgsm(eps: list[float], pgd: list[float], fgsm: list[float], n: int) -> Check:
    """PGD (iterative) must not leave more examples correct than FGSM (one step) beyond FGSM's interval."""
    bad = [e for e, g, f in zip(eps, pgd, fgsm) if g > interval(f, n)[1]]
    pairs = ", ".join(f"eps {e:g}: PGD {g:.3f} vs FGSM {f:.3f}" for e, g, f in zip(eps, pgd, fgsm))
    return Check("pgd_at_least_fgsm", not bad, pairs + (f"; PGD weaker at eps {bad}" if bad else ""),
                 {"eps": list(eps), "pgd": list(pgd), "fgsm": list(fgsm), "n": n})


def transfer_not_stronger(eps: list[float], transfer: list[float], white: list[float], n: int) -> Check:
    """PGD run on the deterministic base and fed to the model must not beat the white-box attack beyond
    the white-box interval: if it does, the model's own gradients mislead the white-box attack."""
    bad = [e for e, t, w in zip(eps, transfer, white) if t < interval(w, n)[0]]
    pairs = ", ".join(f"eps {e:g}: transfer {t:.3f} vs white-box {w:.3f}" for e, t, w in zip(eps, transfer, white))
    return Check("transfer_not_stronger", not bad, pairs + (f"; transfer stronger at eps {bad}" if bad else ""),
                 {"eps": list(eps), "transfer": list(transfer), "white_box": list(white), "n": n})


# -- measurements ------------------------------------------------------------------------------------
def gradient_norms(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Per-example L1 norm of the input gradient of the NLL under ``module`` (log-probabilities)."""
    grad = attacks.input_gradients(module, x, y)
    return grad.flatten(1).abs().sum(dim=1).double().numpy()


def attack_spread(module: torch.nn.Module, x: torch.Tensor) -> float:
    """Largest probability difference between two calls of ``module`` in eval mode with gradients on."""
    module.eval()
    device = attacks._device_of(module)
    xg = x.to(device).requires_grad_(True)
    a, b = module(xg).exp(), module(xg).exp()
    return float((a - b).abs().max().detach().cpu())


def informative_eps(suite) -> float | None:
    """The sweep eps (> 0) where PGD accuracy is nearest half the clean accuracy (the checks' radius)."""
    eps = [e for e in suite.eps if e > 0 and ("pgd", e) in suite.results]
    if not eps:
        return None
    return min(eps, key=lambda e: abs(suite.results[("pgd", e)].mean - suite.clean_acc / 2))


def run_checks(suite) -> list[Check]:
    """Measure and record every check that applies to the suite's model; note the others."""
    checks, p, ctx = [], suite.params, suite.ctx
    m = min(p.check_examples, len(suite.x))
    eps = informative_eps(suite)

    def skip(name: str, why: str) -> None:
        ctx.note(f"sanity check {name} not run: {why}")

    with seeded(ctx.seed, "sanity", "spread", device=suite.model.device):
        spread_attack = attack_spread(suite.predictive, suite.x[:16])
    checks.append(sampling_under_attack(suite.spread, spread_attack, suite.tolerance))

    if eps is None:
        skip("convergence, noise, gradient-free", "no PGD at an eps > 0 in the sweep")
    else:
        white = suite.results[("pgd", eps)]
        if suite.random:
            s2 = suite.attack_s * p.check_samples_factor
            out = suite.attack("pgd", suite.model.predictive(s2), eps, suite.x[:m], suite.y[:m],
                               purpose=("check", "samples"))
            checks.append(not_beaten("converged_in_samples", float(white.correct[:, :m].mean()), out.mean, m,
                                     f"PGD eps {eps:g}, attack S {suite.attack_s} vs {s2}"))
        else:
            skip("converged_in_samples", "fixed predictive (two calls agree): the attack's S changes nothing")
        strong = dataclasses.replace(suite.settings, steps=p.pgd_steps * p.check_steps_factor,
                                     step_scale=max(p.pgd_step_scale, REFERENCE_STEP_SCALE),
                                     restarts=max(p.check_restarts, p.pgd_restarts), best_iterate=True)
        out = suite.attack("pgd", suite.predictive, eps, suite.x[:m], suite.y[:m], settings=strong,
                           purpose=("check", "steps"))
        checks.append(not_beaten("converged_in_steps", float(white.correct[:, :m].mean()), out.mean, m,
                                 f"PGD eps {eps:g}, {p.pgd_steps} steps x {p.pgd_restarts} restart(s) vs "
                                 f"{strong.steps} steps x {strong.restarts} restarts (step {strong.step_scale:g}*eps/steps), "
                                 f"best iterate kept"))
        noise_eps = max(e for e in suite.eps if ("pgd", e) in suite.results)
        noise = suite.results.get(("noise", noise_eps)) or suite.attack("noise", suite.predictive, noise_eps)
        checks.append(noise_weaker(noise_eps, noise.mean, suite.results[("pgd", noise_eps)].mean, len(suite.y)))
        if p.square_queries >= MIN_SQUARE_QUERIES:
            ms = min(p.square_examples, len(suite.x))
            square = suite.attack("square", suite.predictive, eps, suite.x[:ms], suite.y[:ms],
                                  purpose=("check", "square"))
            best = min(float(suite.results[(a, eps)].correct[:, :ms].mean()) for a in suite.white_box_at(eps))
            ctx.record("robust_accuracy", square.mean, attack="square", eps=eps, n=ms,
                       **_ci(square.mean, ms), note=f"{p.square_queries} queries, first {ms} examples, sanity check")
            checks.append(gradient_free_not_stronger(eps, square.mean, best, ms, p.square_queries))
        else:
            skip("gradient_free_not_stronger", f"square_queries = {p.square_queries}; a gradient-free attack needs a "
                 f"real budget (at least {MIN_SQUARE_QUERIES} queries) to say anything")

    sweep = [e for e in suite.eps if e > 0]
    if sweep and all(("fgsm", e) in suite.results and ("pgd", e) in suite.results for e in sweep):
        checks.append(pgd_at_least_fgsm(sweep, [suite.results[("pgd", e)].mean for e in sweep],
                                        [suite.results[("fgsm", e)].mean for e in sweep], len(suite.y)))
    else:
        skip("pgd_at_least_fgsm", "needs both 'fgsm' and 'pgd' in attacks")
    transfer = [e for e in sweep if ("pgd_transfer", e) in suite.results]
    if transfer:
        checks.append(transfer_not_stronger(
            transfer, [suite.results[("pgd_transfer", e)].mean for e in transfer],
            [min(suite.results[(a, e)].mean for a in suite.white_box_at(e)) for e in transfer], len(suite.y)))
    falls = _falls_with_eps(suite)
    if falls is not None:
        checks.append(falls)

    base = suite.model.deterministic_base()
    if base is None:
        g = gradient_norms_of(suite, suite.predictive, m)
        skip("gradient_norm_vs_base", f"the model has no deterministic base (median input-gradient L1 norm "
             f"{float(np.median(g)):.3g} on {m} examples)")
    else:
        checks.append(gradient_ratio(gradient_norms_of(suite, suite.predictive, m),
                                     gradient_norms_of(suite, attacks.LogSoftmax(base).eval(), m),
                                     p.gradient_ratio_min))
    for c in checks:
        ctx.record("sanity_check", 1.0 if c.passed else 0.0, attack=c.name, note=c.note)
    return checks


def gradient_norms_of(suite, module, m: int) -> np.ndarray:
    with seeded(suite.ctx.seed, "sanity", "gradients", device=suite.model.device):
        return gradient_norms(module, suite.x[:m], suite.y[:m])


def _falls_with_eps(suite) -> Check | None:
    p = suite.params
    eps = sorted(e for e in suite.eps if e > 0 and ("pgd", e) in suite.results)
    large = max(p.large_eps, eps[-1] if eps else 0.0)
    if large <= 0:
        suite.ctx.note("sanity check accuracy_falls_with_eps not run: no eps > 0")
        return None
    outcomes = {e: suite.results[("pgd", e)] for e in eps}
    if large not in outcomes:  # a threshold: one evaluation of the check examples suffices
        m = min(p.check_examples, len(suite.x))
        outcomes[large] = suite.attack("pgd", suite.predictive, large, suite.x[:m], suite.y[:m], reevals=1,
                                       purpose=("check", "large_eps"))
    eps = sorted(outcomes)
    return falls_with_eps([0.0, *eps], [suite.clean_acc, *(outcomes[e].mean for e in eps)],
                          [len(suite.y), *(outcomes[e].correct.shape[1] for e in eps)], p.large_eps_max_accuracy)


def _ci(acc: float, n: int) -> dict:
    lo, hi = interval(acc, n)
    return {"ci_low": min(lo, acc), "ci_high": max(hi, acc)}  # float error at k = 0 or n (1e-17)
