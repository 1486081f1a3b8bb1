"""Evaluation: metrics, protocols, attacks, reports."""
