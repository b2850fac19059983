"""Metrics, traces and logs: every stage of the pipeline visible to an SRE."""
