"""Fast paths (vectorised torch, Triton) computing the reference's numbers."""
