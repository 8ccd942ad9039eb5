"""Calibration: layer inputs captured across diffusion timesteps with forward hooks."""

from qdit.calib.capture import CalibConfig, calibrate, capture
from qdit.calib.stats import Calibration, LayerStats

__all__ = ["CalibConfig", "Calibration", "LayerStats", "calibrate", "capture"]
