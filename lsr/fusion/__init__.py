"""Fusion: score normalisers, fusion methods and weight tuning (runs or result arrays in, one ranking out)."""
