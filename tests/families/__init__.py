"""Registrations of the bijection families, one module each."""
