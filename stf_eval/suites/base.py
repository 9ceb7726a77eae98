"""The suite contract: ``run(model, data, ctx)`` writes records and figures through ``ctx``."""

from __future__ import annotations

from ..data.base import DataBundle, Split
from ..models.base import ModelPlugin
from ..params import NoParams


class SuitePlugin:
    Params = NoParams
    #: metric names this suite emits, for documentation and the report (see stf_eval/metrics/names.py)
    metrics: tuple[str, ...] = ()
    #: parameter overrides that make this suite cheap enough for the test matrix (tests/test_matrix.py)
    tiny: dict = {}

    def __init__(self, params=None, name: str | None = None):
        self.params = params if params is not None else self.Params()
        self.name = name or getattr(self, "registered_name", type(self).__name__)

    def skip_reason(self, model: ModelPlugin, data: DataBundle) -> str | None:
        """Why this suite cannot apply to ``model`` (None when it applies). The runner records it."""
        return None

    def reference_builds(self, model_name: str, data: DataBundle, seed: int) -> list[tuple[Split, int]]:
        """Extra trainings of ``model_name``'s spec this suite needs for cell ``seed``: (training split, seed).

        The plan trains them before evaluation; the suite obtains each with ``ctx.build_like(split, seed)``
        (then a cache hit). Default: none.
        """
        return []

    def compared_specs(self, model_spec, run_models) -> dict:
        """The run's other model specs whose recipes this suite's results in ``model_spec``'s cells
        depend on, {key: spec.as_dict()}; they join those cells' resume key. Default: none."""
        return {}

    def run(self, model: ModelPlugin, data: DataBundle, ctx) -> None:
        raise NotImplementedError
