"""Token operations: one custom op per reduction step, its reference maths, plugin contracts and kernels."""
