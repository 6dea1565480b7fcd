"""Regression sets: cases per template, run against a draft and the live version side by side."""
