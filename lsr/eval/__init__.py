"""Evaluation pipelines: BEIR evaluation as one function (what ``lsr eval`` runs) and reports."""
