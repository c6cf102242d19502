"""Benchmark corpora: the stdlib-docstring text the exporter calibrates on (onnxembed/export/calibration.py)."""

from onnxembed.exporter.calibration import paragraphs, sentences

__all__ = ["paragraphs", "sentences"]
