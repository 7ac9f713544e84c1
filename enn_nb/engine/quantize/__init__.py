"""Quantized exports: one ``quantize`` setting, each runtime's own quantizer, honest labels, measured accuracy.

- :mod:`~enn_nb.engine.quantize.modes`: the modes (``fp16``, ``int8-weights``, ``int8``), which backend
  supports which (``Backend.quantize_modes``), the accuracy budget.
- :mod:`~enn_nb.engine.quantize.calibration`: the user's calibration/evaluation data, checked; drawn inputs
  when none is given (labelled).
- :mod:`~enn_nb.engine.quantize.quantizers`: onnxruntime.quantization, torchao PT2E + XNNPACKQuantizer,
  ai_edge_quantizer, coremltools.optimize.
- :mod:`~enn_nb.engine.quantize.readback`: what the artifact really holds, read from the file.
- :mod:`~enn_nb.engine.quantize.accuracy`: errors against the float model, and the budget.
- :mod:`~enn_nb.engine.quantize.run`: a quantized plan through the engine (data, child, status).
"""

from __future__ import annotations

from enn_nb.engine.quantize.calibration import save_inputs
from enn_nb.engine.quantize.modes import DEFAULT_RMSE_REL, MODE_MEANING, MODES, supported_modes

__all__ = ["DEFAULT_RMSE_REL", "MODES", "MODE_MEANING", "save_inputs", "supported_modes"]
