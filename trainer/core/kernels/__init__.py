"""Hand-written kernels held by the graph as CUSTOM nodes (see core/custom.py), each with its gradient."""
