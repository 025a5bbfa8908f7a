"""Kernel event sources: kernel wire formats in, observations of lives out."""
