"""Scale-out with `jax.sharding`: one mesh over the devices, the batch split along its "data"
axis, parameters replicated (data-parallel) or sharded along their first axis (for the large
presets: each device holds 1/n of every weight, optimiser moment and EMA). The training step is
one jitted program over global arrays, so XLA inserts the communication and the results equal a
single device's up to the order of floating-point sums.

>>> context = setup("cpu")
>>> context.size >= 1, context.main
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


@dataclass(frozen=True)
class Context:
    mesh: Mesh  # the devices, along one axis "data"
    shard: bool = False  # parameters sharded along their first axis (else replicated)

    @property
    def size(self) -> int:
        return self.mesh.devices.size

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints (the first of a multi-process run)."""
        return jax.process_index() == 0


def setup(device: str = "auto", shard: bool = False) -> Context:
    """A mesh over the devices: "auto" (the default backend's, e.g. every GPU), "cpu", "gpu"
    or "gpu:N" (one). On the CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N gives N."""
    kind, _, index = device.partition(":")
    try:
        devices = jax.devices() if kind == "auto" else jax.devices(kind)
    except RuntimeError as error:
        raise ValueError(f"--device {device}: no such JAX devices ({error})") from None
    if index:
        if not index.isdigit() or int(index) >= len(devices):
            raise ValueError(f"--device {device}: expected {kind}:N with N < {len(devices)}")
        devices = [devices[int(index)]]
    return Context(Mesh(np.array(devices), ("data",)), shard)


def batch_sharding(context: Context) -> NamedSharding:
    """Arrays split along their first (batch) axis over the devices."""
    return NamedSharding(context.mesh, PartitionSpec("data"))


def param_sharding(context: Context, shape: tuple[int, ...]) -> NamedSharding:
    """A parameter's placement: its first axis split over the devices when sharding and it
    divides evenly, else a whole copy on each."""
    if context.shard and len(shape) >= 1 and shape[0] % context.size == 0:
        return NamedSharding(context.mesh, PartitionSpec("data"))
    return NamedSharding(context.mesh, PartitionSpec())


def place_params(context: Context, tree: Any) -> Any:
    """A pytree of parameters (or moments, averages) placed as `param_sharding` says."""
    return jax.tree.map(lambda a: jax.device_put(a, param_sharding(context, a.shape)), tree)


def place_batch(context: Context, a: np.ndarray) -> jax.Array:
    """A batch placed across the devices (its size must divide by their number)."""
    if a.shape[0] % context.size:
        raise ValueError(f"a batch of {a.shape[0]} does not split over {context.size} devices")
    return jax.device_put(a, batch_sharding(context))


def replicated(context: Context, tree: Any) -> Any:
    """A pytree with a whole copy on each device (e.g. a frozen teacher)."""
    return jax.device_put(tree, NamedSharding(context.mesh, PartitionSpec()))


def mesh_of(tree: Any) -> Mesh | None:
    """The mesh a pytree's arrays are placed on (the first leaf placed on one), or None when
    none is (arrays on the default device, as loaded from a checkpoint)."""
    for leaf in jax.tree.leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding):
            return sharding.mesh
    return None


def split_rows(mesh: Mesh | None, a: np.ndarray) -> jax.Array:
    """A host array split along its first axis over the mesh's "data" axis (as a whole on the
    default device without a mesh), its rows padded with zeros to a multiple of the mesh's size:
    drop the padding from what comes back (`gather_rows`)."""
    if mesh is None:
        return jax.numpy.asarray(a)
    pad = -len(a) % mesh.devices.size
    if pad:
        a = np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)])
    return jax.device_put(a, NamedSharding(mesh, PartitionSpec("data")))


def gather_rows(x: jax.Array, num: int) -> np.ndarray:
    """The first `num` rows of an array split over devices (`split_rows`), on the host."""
    return np.asarray(x)[:num]
