"""Operator tools built on the node (readiness lab, ...); the top layer."""
