"""Figures the suites save are legible where the report shows them (a PNG at 100 dpi, at most 640 px wide)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from matplotlib.text import Text

from stf_eval.context import PNG_DPI
from stf_eval.params import parse_params
from stf_eval.suites.ood import OodDetection

SHOWN_PX = 640 - 14  # figure.medium max-width minus its padding and border (report.css)
MIN_PX = 9.0  # as tests/test_browser.py requires of the report's own figures


def smallest_shown_text_px(fig) -> float:
    """Smallest font of any visible text, in CSS px, once the figure is shown at most SHOWN_PX wide."""
    natural_px = fig.get_size_inches()[0] * PNG_DPI
    scale = min(1.0, SHOWN_PX / natural_px)
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    return min(sizes) * PNG_DPI / 72 * scale


def test_ood_histograms_are_legible_with_one_legend():
    rng = np.random.default_rng(0)
    scores = ["msp", "entropy", "mutual_information", "energy"]
    sets = {"rotated_digits": "near", "uniform_noise": "far", "photo_crops": "far"}
    score_in = {s: rng.normal(1, 1, 500) for s in scores}
    score_out = {n: {s: rng.normal(0, 1, 300) for s in scores} for n in sets}
    per_set = {n: {s: {"auroc": 0.8} for s in scores} for n in sets}
    data = SimpleNamespace(ood={n: SimpleNamespace(group=g) for n, g in sets.items()})
    saved = []
    ctx = SimpleNamespace(model_name="stf_bnn", wants_figures=True, save_figure=lambda fig, name, caption="": saved.append(fig))
    suite = OodDetection(parse_params(OodDetection.Params, {}, "ood"), "ood")
    suite._figure(ctx, scores, score_in, score_out, per_set, data)
    (fig,) = saved
    assert smallest_shown_text_px(fig) >= MIN_PX
    assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in fig.axes)  # one legend per figure
    lines = [p for ax in fig.axes for p in ax.patches if p.get_fill() is False]
    styles = {(tuple(np.round(p.get_edgecolor(), 3)), str(p.get_linestyle())) for p in lines}
    assert len(styles) == len(sets)  # each OOD set its own colour and line style
