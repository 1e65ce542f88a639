"""Scores, computed here once and shared by every chapter: detection matching and AP, box quality,
classification, calibration, bootstrap intervals and the KPI grid.
"""
