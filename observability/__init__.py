"""Dashboards, alert rules, runbook and collector config of the exchange (see README.md)."""
