"""stf-eval: robustness, calibration, OOD and privacy evaluation of uncertainty-aware deep learning."""

__version__ = "0.1.0"
