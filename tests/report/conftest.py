"""Fixtures of the report tests (defined in report_fixtures.py so test modules can import its helpers)."""

from report_fixtures import chromium, fake_run  # noqa: F401  (pytest fixtures)
