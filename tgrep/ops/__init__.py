"""Differentiable functional ops (input validation + autograd + backend dispatch)."""
