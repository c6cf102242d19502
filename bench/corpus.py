"""Benchmark corpora: the same stdlib-docstring text the exporter calibrates on (see onnxembed/export/calibration.py)."""

from onnxembed.export.calibration import paragraphs, sentences

__all__ = ["paragraphs", "sentences"]
