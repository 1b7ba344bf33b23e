"""`python -m verifier`: serve, export, keys and subjects commands."""
