"""Helpers shared by the end-to-end tests: clients that behave like real users."""
