"""Aggregator-side tools: bi-directional offers (Boffer) built within DNSP operating envelopes."""
