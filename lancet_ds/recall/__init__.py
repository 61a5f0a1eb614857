"""Streaming TF-IDF recall of candidate training samples for the influence queries."""
