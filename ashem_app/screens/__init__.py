"""Screens: dashboard, transition inspection, confirmation, help."""
