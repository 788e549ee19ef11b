"""Scale-out with `jax.sharding`: one mesh over the devices (with several processes, over
every process's devices: `initialize`), the batch split along its "data" axis, parameters
replicated (data-parallel) or sharded along their first axis (for the large presets: each
device holds 1/n of every weight, optimiser moment and EMA). The training step is one jitted
program over global arrays, so XLA inserts the communication and the results equal a single
device's up to the order of floating-point sums.

>>> context = setup("cpu")
>>> context.size >= 1, context.main
(True, True)
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import jax
import numpy as np
from jax.experimental import multihost_utils
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


def cluster_detected() -> bool:
    """Whether this process is one of several that a cluster launched, in a way JAX detects
    itself (`jax.distributed.initialize()` with no arguments): a SLURM job step of several
    tasks, a Cloud TPU VM (a host of a slice, which JAX finds from the VM's metadata; on GKE,
    TPU_WORKER_HOSTNAMES), or Open MPI's mpirun of several processes."""
    from jax._src import cloud_tpu_init  # set when jax is imported: JAX's own test for a TPU VM

    env = os.environ
    tasks = env.get("SLURM_STEP_NUM_TASKS") or (env.get("SLURM_NTASKS") if "SLURM_STEP_ID" in env else None)
    return (
        int(tasks or 1) > 1
        or getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False)
        or "," in env.get("TPU_WORKER_HOSTNAMES", "")
        or int(env.get("OMPI_COMM_WORLD_SIZE", 1)) > 1
    )


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    heartbeat_timeout: int = 100,
) -> None:
    """Join a run of several processes (`jax.distributed`) before any computation, where this
    is one: with a coordinator HOST:PORT (process 0 serves it), the number of
    processes and this one's id in [0, N), or with none of them where the cluster is detected
    (`cluster_detected`). CPU devices exchange data over gloo. A process that stops sending
    heartbeats for `heartbeat_timeout` seconds makes every other one exit with an error."""
    given = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    if any(v is not None for v in given.values()) and num_processes != 1:
        missing = [flag for flag, value in given.items() if value is None]
        if missing:
            raise ValueError(
                f"several processes need {', '.join(given)} together; missing {', '.join(missing)}"
            )
        if not (isinstance(num_processes, int) and num_processes >= 1 and 0 <= process_id < num_processes):
            raise ValueError(f"--process-id must be in [0, {num_processes}), got {process_id}")
        host, _, port = str(coordinator).rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
    elif num_processes == 1 or not cluster_detected():
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator, num_processes, process_id, heartbeat_timeout_seconds=heartbeat_timeout
    )


def end_process(code: int) -> NoReturn:
    """End the process with `code`. With several processes each ends at once, its output
    flushed, skipping `jax.distributed`'s shutdown barrier: a process that ends by an error while
    the others wait in a collective would otherwise wait there for the shutdown timeout (300 s),
    alive and so not detected; ended, it stops sending heartbeats and the others stop after the
    heartbeat timeout (`initialize`)."""
    if jax.process_count() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def share(value: Any) -> Any:
    """Process 0's `value` (anything picklable), on every process."""
    if jax.process_count() == 1:
        return value
    data = np.frombuffer(pickle.dumps(value), np.uint8) if jax.process_index() == 0 else np.zeros(0, np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.int64(len(data))))
    buffer = np.zeros(size, np.uint8)
    buffer[: len(data)] = data
    return pickle.loads(np.asarray(multihost_utils.broadcast_one_to_all(buffer)).tobytes())


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


def load_batch(context: Context, index: np.ndarray, get: Callable[[np.ndarray], np.ndarray]) -> jax.Array:
    """The global batch of rows `get(index)`, split along its first axis over the devices; each
    process loads only the rows of its own devices (`index` must split evenly over them)."""
    if len(index) % context.size:
        raise ValueError(f"a batch of {len(index)} does not split over {context.size} devices")
    row = get(index[:1])
    return jax.make_array_from_callback(
        (len(index), *row.shape[1:]), batch_sharding(context), lambda rows: get(index[rows[0]])
    )


def replicated(context: Context, tree: Any) -> Any:
    """A pytree with a whole copy on each device (e.g. a frozen teacher), from arrays that every
    process holds whole."""
    return jax.device_put(to_host(tree), NamedSharding(context.mesh, PartitionSpec()))


def to_host(tree: Any) -> Any:
    """A pytree's arrays whole, as numpy, on every process (sharded ones gathered: with several
    processes every process must call this at the same point)."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    return jax.tree.map(
        lambda a: (
            np.asarray(a)
            if getattr(a, "is_fully_addressable", True) or a.is_fully_replicated
            else np.asarray(multihost_utils.process_allgather(a, tiled=True))
        ),
        tree,
    )


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


def barrier(name: str) -> None:
    """Wait until every process gets here (with several processes; `name` tells the points apart)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def local(tree: Any) -> Any:
    """A pytree on this process's own default device: with several processes, what the main
    process evaluates alone (a program over every process's devices needs all of them); with
    one, the tree unchanged. Every process must call it at the same point."""
    if jax.process_count() == 1:
        return tree
    return jax.tree.map(jax.numpy.asarray, to_host(tree))
