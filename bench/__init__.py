"""Benchmarks: accuracy, confidence, enrollment, identification and serving figures, printed."""
