"""Interop: refflow.testing on real transforms from peer libraries (torch, zuko, nflows)."""
