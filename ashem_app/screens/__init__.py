"""Screens: dashboard, transition inspection, comparison, confirmation, help."""
