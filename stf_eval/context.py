"""What a suite sees while it evaluates one (model, seed) cell.

Predictions are memoised per cell: every suite that asks for the test (or an OOD, or a shifted) set's
logits gets the same tensor, computed once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.base import DataBundle, Split
from .models.base import ModelPlugin
from .paths import inside
from .records import make_record
from .seeding import seeded

log = logging.getLogger("stf_eval")

PNG_DPI = 100  # raster copy of each saved figure: what the report embeds by default (a fraction of the SVG)
PNG_COLORS = 64  # palette of that copy: plots have few colours; about 3.5x smaller than 24-bit PNG


def _save_png(fig, path: Path) -> None:
    """``fig`` as a palette PNG at PNG_DPI (deterministic: no timestamps, median-cut palette)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PNG_DPI, bbox_inches="tight")
    image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    image.quantize(colors=PNG_COLORS, method=Image.Quantize.MEDIANCUT).save(path, format="PNG", optimize=True)


class EvalContext:
    def __init__(self, *, model_name: str, model: ModelPlugin, data: DataBundle, seed: int, run_dir: Path,
                 device: torch.device, build_like: Callable[[DataBundle, int], ModelPlugin] | None = None,
                 save_figures: bool = True, run_models: Sequence[Any] = ()):
        self.model_name = model_name
        # the run's model specs (config.PluginSpec): a suite that builds a comparator (the efficiency
        # suite's full BNN) takes the recipe the run evaluates, not the plugin's defaults
        self.run_models = tuple(run_models)
        self.model = model
        self.data = data
        self.seed = seed
        self.run_dir = Path(run_dir)
        self.device = device
        self.suite = ""
        self.records: list[dict] = []
        self.figures: list[dict] = []
        self.notes: list[dict] = []
        self.wants_figures = save_figures  # suites skip drawing when False (the run's `figures` setting)
        self._build_like = build_like
        self._predictions: dict[str, torch.Tensor] = {}
        self.examples: dict[str, dict[str, np.ndarray]] = {}  # suite -> per-example arrays (examples.py)

    # -- predictions --------------------------------------------------------------------------
    def samples_of(self, key: str, x: torch.Tensor, n_samples: int | None = None) -> torch.Tensor:
        """Logits [S, N, C] of ``x`` under the model, computed once per key for this cell."""
        full_key = f"{key}@S{n_samples}" if n_samples else key
        if full_key not in self._predictions:
            # the draw is named by the cell and the key: the same samples whatever ran before
            with seeded(self.seed, "predict", self.model_name, full_key, device=self.device):
                self._predictions[full_key] = self.model.predict_samples(x, n_samples=n_samples)
        return self._predictions[full_key]

    def samples(self, split: str) -> torch.Tensor:
        """Logits [S, N, C] of a named split: 'train', 'val', 'test' or 'ood:<set name>'."""
        return self.samples_of(split, self.split_inputs(split))

    def split_inputs(self, split: str) -> torch.Tensor:
        if split.startswith("ood:"):
            return self.data.ood[split[4:]].x
        return getattr(self.data, split).x

    @property
    def prediction_keys(self) -> list[str]:
        return list(self._predictions)

    # -- output -------------------------------------------------------------------------------
    def record(self, metric: str, value, dataset: str | None = None, **settings) -> dict:
        row = make_record(self.model_name, self.suite, dataset or self.data.name, metric, value, self.seed,
                          **settings)
        self.records.append(row)
        return row

    def save_examples(self, arrays: dict | None = None, **more) -> None:
        """Keep per-example arrays of the current suite (saved as examples/<suite>--<model>--seed<s>.npz).

        Keys are '/'-separated names (e.g. ``test/log_probs``, ``pgd/0.1/correct``), documented in
        docs/records.md; a key saved twice in one suite is an error (it would silently overwrite).
        """
        store = self.examples.setdefault(self.suite, {})
        for key, value in {**(arrays or {}), **more}.items():
            if key in store:
                raise ValueError(f"per-example array {key!r} saved twice by suite {self.suite!r}")
            store[key] = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)

    def note(self, text: str) -> None:
        """A remark shown in the report under this suite (a protocol detail, a skipped part, a warning)."""
        log.info("%s/%s: %s", self.model_name, self.suite, text)
        self.notes.append({"model": self.model_name, "suite": self.suite, "seed": self.seed, "text": text})

    def save_figure(self, fig, name: str, caption: str = "") -> str:
        """Save a matplotlib figure as SVG under figures/ (and a PNG raster the report embeds by default).

        Returns the SVG's path in the run directory, or "" when this cell saves no figures (then suites
        should not have drawn it: check ``wants_figures`` first).
        """
        import matplotlib.pyplot as plt

        if not self.wants_figures:
            plt.close(fig)
            return ""

        rel = Path("figures") / f"{self.suite}--{self.model_name}--seed{self.seed}--{name}.svg"
        path = inside(self.run_dir, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".svg.tmp")
        fig.savefig(tmp, format="svg", bbox_inches="tight")
        png, png_tmp = path.with_suffix(".png"), path.with_suffix(".png.tmp")
        _save_png(fig, png_tmp)
        plt.close(fig)
        tmp.replace(path)
        png_tmp.replace(png)
        self.figures.append({"model": self.model_name, "suite": self.suite, "seed": self.seed, "name": name,
                             "path": rel.as_posix(), "png": rel.with_suffix(".png").as_posix(),
                             "caption": caption})
        return rel.as_posix()

    # -- protocol needs -----------------------------------------------------------------------
    def build_like(self, train: Split, seed: int) -> ModelPlugin:
        """A model of the same plugin and recipe, trained on ``train`` (membership reference models)."""
        if self._build_like is None:
            raise RuntimeError("this context cannot build reference models")
        return self._build_like(self.data.with_train(train), seed)
