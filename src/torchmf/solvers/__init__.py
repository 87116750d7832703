"""Solvers: SGD-family training and closed-form alternating least squares."""
