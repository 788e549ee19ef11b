"""PyTorch backend for trigcore: torch.func tangents, JVP-capable attention, networks, training
steps and distribution. The math it runs comes from trigcore, called with torch tensors."""
