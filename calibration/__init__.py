"""Calibration: turn held-out genuine/impostor distances into a threshold, a confidence map
and honest metrics (counts beside every rate). The score-level core is pure numpy."""
