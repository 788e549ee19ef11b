"""JAX backend for trigcore: jax.jvp tangents, attention with a JVP rule, Flax NNX networks,
optax optimisers and jax.sharding. The math it runs comes from trigcore, called with jax arrays."""
