"""HTTP blueprints: pair verification (verify.py) and enrollment (subjects.py)."""
