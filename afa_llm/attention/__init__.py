"""Attention: decoder layers, the attention hook, the answer-position probe, the clean pass, focus math, word hiding."""
