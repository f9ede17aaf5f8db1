"""Diffusion processes as small pure functions that take the network (see STYLE.md #7)."""
