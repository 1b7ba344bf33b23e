"""Enrollment: subjects and their templates (store, keys), quality checks, the gallery for 1:N search."""
