"""Verification on a Siamese pair scorer: core runtime, enrollment, the web service and its CLI."""
