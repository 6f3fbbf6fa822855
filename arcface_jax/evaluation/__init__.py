"""Evaluation: verification protocol, embedding extraction, IJB-B/C, identification."""
