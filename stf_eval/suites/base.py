"""The suite contract: ``run(model, data, ctx)`` writes records and figures through ``ctx``."""

from __future__ import annotations

from ..data.base import DataBundle
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

    def run(self, model: ModelPlugin, data: DataBundle, ctx) -> None:
        raise NotImplementedError
