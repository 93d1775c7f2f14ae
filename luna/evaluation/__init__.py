"""Scoring without Lightning: LUNA16's FROC and CPM (pure numpy), and the figures of an evaluation."""
