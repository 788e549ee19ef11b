"""What a JAX run does besides its command line (`training/jax_run.py`): building and
restoring the configured networks, one phase's `loop.Trainer` with its jitted step
(`make_step`), sampling and the whole run (`run_training`), with the names of
`backends.torch.trainer`. Shared with PyTorch: the loop (`training.loop`), the objectives, the
run folder and the evaluation (`training.runs`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from training import data, loop, objectives, run_folder, runs
from training.config import PHASES, PhaseConfig, RunConfig
from training.objectives import OBJECTIVES
from trigcore import lr, samplers

from . import autodiff, distributed, optim, steps
from .layers import AdaptiveWeight, load_state_dict, named, state_dict, with_arrays

# --- networks and their state as numpy -------------------------------------------------------


def build_network(
    config: RunConfig,
    sample_shape: tuple[int, ...],
    guidance: bool = False,
    phase: PhaseConfig | None = None,
    seed: int = 0,
) -> nnx.Module:
    """The configured network for samples of `sample_shape`, with `phase`'s dropout; distilled
    students with CFG take the guidance scale as an input (G.2)."""
    network, rngs = config.network, nnx.Rngs(seed)
    options = dict(network.options)
    if phase is not None:
        options["dropout"] = phase.dropout
        if network.kind != "mlp":
            options["dropout_res"] = phase.dropout_res or sample_shape[-1]
    if network.kind == "mlp":
        from backends.jax.mlp import MLP

        dim = math.prod(sample_shape)
        return MLP(dim=dim, label_dim=network.label_dim, guidance=guidance, **options, rngs=rngs)
    channels, resolution = sample_shape[0], sample_shape[1]
    if network.kind == "edm2":
        from backends.jax.edm2 import PRESETS as SIZES
        from backends.jax.edm2 import EDM2UNet

        options = {**SIZES[network.preset], **options}
        return EDM2UNet(resolution, channels, network.label_dim, guidance=guidance, **options, rngs=rngs)
    if network.kind == "ddpmpp":
        from backends.jax.ddpmpp import DDPMpp

        return DDPMpp(resolution, channels, network.label_dim, guidance=guidance, **options, rngs=rngs)
    raise ValueError(f"network kind must be 'edm2', 'ddpmpp' or 'mlp', got {network.kind!r}")


def arrays_of(prefix: str, params: nnx.State) -> dict[str, np.ndarray]:
    """Parameters as numpy under "<prefix>/<name>", the names of PyTorch's state_dict (sharded
    arrays gathered whole)."""
    return {f"{prefix}/{name}": value for name, value in distributed.to_host(named(params)).items()}


def load_arrays(params: nnx.State, arrays: dict[str, np.ndarray], prefix: str) -> nnx.State:
    """`params` with every array replaced by "<prefix>/<name>" from a checkpoint."""
    start = len(prefix) + 1
    try:
        return with_arrays(params, {k[start:]: v for k, v in arrays.items() if k.startswith(prefix + "/")})
    except ValueError as error:
        raise ValueError(f"checkpoint does not fit the network ({prefix}): {error}") from None


# --- one training phase ----------------------------------------------------------------------


class JaxTrainer:
    """`loop.Trainer` for JAX. The global batch is split over the mesh's devices and into
    `micro_batches` parts, each with its own random key; the gradient is their mean. One random
    key per step drives every draw, and each step is one jitted program (`make_step`)."""

    optim = optim

    def __init__(
        self,
        name: str,
        config: RunConfig,
        train_set: data.Dataset,
        context: distributed.Context,
        teacher: nnx.Module | None,
        arrays: dict[str, np.ndarray] | None,
    ) -> None:
        phase = getattr(config, name)
        if phase.batch % (context.size * config.micro_batches):
            raise ValueError(
                f"{name} batch {phase.batch} does not split into {context.size} devices × "
                f"{config.micro_batches} micro-batches"
            )
        self.name, self.config, self.phase, self.context, self.teacher = name, config, phase, context, teacher
        self.train_set, self.main = train_set, context.main
        self.shards, self.streams = config.micro_batches, "micro-batches"
        self.seed = config.seed + PHASES.index(name)
        guided = objectives.takes_guidance(config, name)
        network = build_network(config, train_set.sample_shape, guided, phase, self.seed)
        if objectives.starts_from_teacher(name, phase):  # G.2: CMs start from the teacher's EMA
            load_state_dict(network, state_dict(teacher), strict=False)
        self.graphdef, params = nnx.split(network, nnx.Param)
        if arrays is not None:  # resuming: the weights first
            params = load_arrays(params, arrays, "model")
        self.params = self.place(params)

    def place(self, tree: Any) -> Any:
        return distributed.place_params(self.context, tree)

    def weights(self) -> nnx.State:
        return self.params

    def start(self) -> None:
        config, phase, context = self.config, self.phase, self.context
        self.tx = optim.make_optimizer(phase.optimizer, phase.lr, phase.betas, phase.eps)
        # what the jitted step carries (`make_step`): θ (and w_ψ, F_φ), optimiser states, loss scales
        state: dict = {"trainable": {"model": self.params}}
        vsd = None
        if OBJECTIVES[self.name].avsd:
            vsd = _VSD.build(config, phase, self.train_set, self.teacher, self.seed)
        if vsd is not None:  # w_ψ trains with θ (App. C.2); F_φ has its own optimiser state
            state["trainable"]["vsd_weight"] = distributed.replicated(context, vsd.weight)
            state["fake"] = self.place(vsd.fake)
            state["fake_opt"] = self.place(self.tx.init({"fake": state["fake"]}))
        state["opt"] = self.place(self.tx.init(state["trainable"]))  # the moments placed as their parameters
        self.scales = ["scale", *(["fake_scale"] if vsd else [])] if config.precision == "float16" else []
        state |= {key: optim.loss_scale_state() for key in self.scales}
        self.state, self.vsd, self.key = state, vsd, jax.random.key(self.seed)
        teacher = self.teacher
        teacher_graphdef, teacher_params = nnx.split(teacher) if teacher is not None else (None, None)
        self.teacher_params = None if teacher is None else distributed.replicated(context, teacher_params)
        self.step_fn = make_step(self.name, config, phase, self.graphdef, teacher_graphdef, self.tx, vsd)
        takes = OBJECTIVES[self.name].derivative  # how its loss takes dF/dt, if it does
        self.derivative = objectives.loss_settings(self.name, config).derivative if takes else "none"

    def restore(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        state = self.state
        state["opt"] = _load_optimizer(state["opt"], arrays, meta["optimizer"], "optimizer")
        if self.vsd is not None:
            weight = load_arrays(state["trainable"]["vsd_weight"], arrays, "vsd_weight")
            state["trainable"]["vsd_weight"] = distributed.replicated(self.context, weight)
            state["fake"] = self.place(load_arrays(state["fake"], arrays, "fake"))
            state["fake_opt"] = _load_optimizer(
                state["fake_opt"], arrays, meta["fake_optimizer"], "fake_optimizer"
            )
        for name in self.scales:
            saved = meta[name]
            state[name] = {"scale": jnp.float32(saved["scale"]), "good_steps": jnp.int32(saved["good_steps"])}
        self.key = jax.random.wrap_key_data(jnp.asarray(arrays["rng/key"]))

    def step(self, step: int, index: np.ndarray) -> tuple[bool, dict]:
        phase = self.phase
        rate = jnp.float32(lr.edm2_lr(step, phase.lr, phase.lr_decay, phase.lr_rampup))
        batch = _batch(self.train_set, index, self.context)
        self.key, step_key = jax.random.split(self.key)
        with autodiff.forward_mode(self.derivative):  # JAX refuses forward mode at the first call
            self.state, metrics, finite = self.step_fn(
                self.state, self.teacher_params, batch, step_key, step, rate
            )
        self.params = self.state["trainable"]["model"]
        return bool(finite), metrics

    def reduce(self, metrics: dict) -> dict[str, float]:
        return {key: float(value) for key, value in metrics.items()}

    def arrays(self) -> dict[str, np.ndarray]:
        state = self.state
        arrays = arrays_of("model", self.params) | _optimizer_arrays(state["opt"], "optimizer")
        arrays["rng/key"] = np.asarray(jax.random.key_data(self.key))
        if self.vsd is not None:
            arrays |= arrays_of("fake", state["fake"]) | arrays_of(
                "vsd_weight", state["trainable"]["vsd_weight"]
            )
            arrays |= _optimizer_arrays(state["fake_opt"], "fake_optimizer")
        return arrays

    def meta(self) -> dict:
        meta = {"optimizer": _optimizer_meta(self.state["opt"])}
        if self.vsd is not None:
            meta["fake_optimizer"] = _optimizer_meta(self.state["fake_opt"])
        for name in self.scales:
            meta[name] = {k: v.item() for k, v in self.state[name].items()}
        return meta

    arrays_of = staticmethod(arrays_of)

    def load_arrays(self, weights: nnx.State, arrays: dict[str, np.ndarray], prefix: str) -> nnx.State:
        return self.place(load_arrays(weights, arrays, prefix))

    def posthoc(self, folder: Path, name: str, sigma_rel: float) -> nnx.State:
        return posthoc_params(folder, name, sigma_rel, self.params)

    def handed(self, weights: nnx.State | None) -> nnx.Module:
        """With several processes, whole on each (`distributed.local`)."""
        return nnx.merge(self.graphdef, distributed.local(self.params if weights is None else weights))

    def barrier(self, label: str) -> None:
        distributed.barrier(label)


def train_phase(
    name: str,
    config: RunConfig,
    train_set: data.Dataset,
    run: run_folder.Run,
    context: distributed.Context,
    teacher: nnx.Module | None = None,
) -> nnx.Module:
    """Train one phase with checkpoints, resuming from its latest one (`loop.train_phase`);
    returns the network it hands on."""

    def make(arrays: dict | None) -> JaxTrainer:
        return JaxTrainer(name, config, train_set, context, teacher, arrays)

    return loop.train_phase(name, config, train_set, run, "jax", make)


def posthoc_params(folder: Path, name: str, sigma_rel: float, params: nnx.State) -> nnx.State:
    """EDM2's post-hoc EMA: the average of width σ_rel at the last snapshot, by least squares
    over the power-EMA snapshots `<name>.ema-*` in `folder`."""
    combined = optim.posthoc_average(run_folder.read_snapshots(folder, name, sigma_rel), sigma_rel)
    return load_arrays(params, {f"model/{k}": v for k, v in combined.items()}, "model")


def _scaled(out: tuple, scale: jax.Array) -> tuple:
    loss, aux = out
    return loss * scale.astype(loss.dtype), aux


def make_step(
    name: str,
    config: RunConfig,
    phase: PhaseConfig,
    graphdef: nnx.GraphDef,
    teacher_graphdef: nnx.GraphDef | None,
    tx: optax.GradientTransformation,
    vsd: _VSD | None,
) -> Callable:
    """The jitted training step: (state, teacher_params, batch, key, step, rate) → (state,
    metrics, finite). `state` holds "trainable" (θ, and w_ψ for aVSD), "opt" (its optimiser
    state), "scale" (float16's loss scale) and for aVSD "fake", "fake_opt", "fake_scale" (F_φ's)."""
    objective, settings = OBJECTIVES[name], objectives.loss_settings(name, config)
    parts = config.micro_batches

    def loss_fn(trainable: dict, teacher_params: Any, batch: dict, key: jax.Array, step: Any, fake: Any):
        model = nnx.merge(graphdef, trainable["model"])
        teacher = None  # the teacher's PF-ODE, for the objectives that learn from it
        if objective.distilled:
            teacher = nnx.merge(teacher_graphdef, teacher_params)
        extra = None
        if vsd is not None:  # aVSD's fake score and adaptive weight
            weight = nnx.merge(vsd.weight_graphdef, trainable["vsd_weight"])
            extra = SimpleNamespace(
                fake=nnx.merge(vsd.fake_graphdef, fake), weight=weight, settings=vsd.settings
            )
        return steps.LOSSES[objective.loss](
            model, batch, settings, step, phase, teacher, extra, steps.Draws(key)
        )

    def project(trainable: dict) -> dict:
        return {**trainable, "model": optim.unit_norm(graphdef, trainable["model"])}

    def scaled_grads(loss: Callable, params: Any, scale: jax.Array | None) -> tuple:
        """(value, aux), gradient of `loss`, through the loss scale when training in float16."""
        if scale is None:
            return jax.value_and_grad(loss, has_aux=True)(params)
        (value, aux), grads = jax.value_and_grad(lambda p: _scaled(loss(p), scale), has_aux=True)(params)
        return (value / scale, aux), jax.tree.map(lambda g: g / scale, grads)

    def step_fn(state: dict, teacher_params: Any, batch: dict, key: jax.Array, step: Any, rate: Any):
        state = dict(state)
        state["opt"].hyperparams["learning_rate"] = rate  # EDM2's schedule, for each optimiser
        if "fake_opt" in state:
            state["fake_opt"].hyperparams["learning_rate"] = rate
        grads, metrics, samples = None, [], []
        for k in range(parts):  # micro-batches: the mean of their gradients
            part = jax.tree.map(lambda a, k=k: a.reshape(parts, -1, *a.shape[1:])[k], batch)
            part_key = jax.random.fold_in(key, k)

            def loss(trainable: dict, part=part, part_key=part_key) -> tuple:
                return loss_fn(trainable, teacher_params, part, part_key, step, state.get("fake"))

            (_, values), g = scaled_grads(loss, state["trainable"], state.get("scale", {}).get("scale"))
            grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
            samples.append((values.pop("samples", None), part, part_key))
            metrics.append(values)
        grads = jax.tree.map(lambda g: g / parts, grads)
        state["trainable"], state["opt"], finite = optim.apply_gradients(
            tx, state["trainable"], state["opt"], grads, project
        )
        if "scale" in state:
            state["scale"] = optim.update_loss_scale(state["scale"], finite)
        metrics = {key: jnp.mean(jnp.stack([m[key] for m in metrics])) for key in metrics[0]}
        if vsd is None:
            return state, metrics, finite
        # L_Diff(φ): the fake score learns the generator's samples
        fake_grads = None
        for x0, part, part_key in samples:

            def fake_loss(fake: dict, x0=x0, part=part, part_key=part_key) -> tuple:
                fake_net = nnx.merge(vsd.fake_graphdef, fake["fake"])
                rng = steps.Draws(jax.random.fold_in(part_key, 1 << 20))
                return steps.fake_score_loss(fake_net, x0, part.get("labels"), vsd.settings, rng)

            scale = state.get("fake_scale", {}).get("scale")
            _, g = scaled_grads(fake_loss, {"fake": state["fake"]}, scale)
            fake_grads = g if fake_grads is None else jax.tree.map(jnp.add, fake_grads, g)
        fake_grads = jax.tree.map(lambda g: g / parts, fake_grads)
        fake_project = lambda p: {"fake": optim.unit_norm(vsd.fake_graphdef, p["fake"])}  # noqa: E731
        fake, state["fake_opt"], fake_finite = optim.apply_gradients(
            tx, {"fake": state["fake"]}, state["fake_opt"], fake_grads, fake_project
        )
        state["fake"] = fake["fake"]
        if "fake_scale" in state:
            state["fake_scale"] = optim.update_loss_scale(state["fake_scale"], fake_finite)
        return state, metrics, finite & fake_finite

    return jax.jit(step_fn)


@dataclass
class _VSD:
    """aVSD's other networks (App. C.2): the fake score F_φ, which starts from the teacher and
    trains with its own optimiser state at the phase's rate and no EMA (G.2), and the adaptive
    weight w_ψ, which trains with θ; their parameters travel in the step's state."""

    fake_graphdef: nnx.GraphDef
    fake: nnx.State  # F_φ's initial parameters
    weight_graphdef: nnx.GraphDef
    weight: nnx.State  # w_ψ's initial parameters
    settings: Any

    @classmethod
    def build(cls, config, phase, train_set, teacher, seed) -> _VSD:
        fake_phase = replace(phase, dropout=phase.fake_dropout)
        network = build_network(config, train_set.sample_shape, phase=fake_phase, seed=seed)
        load_state_dict(network, state_dict(teacher))
        weight = AdaptiveWeight(rngs=nnx.Rngs(seed))
        settings = objectives.vsd_settings(config, phase)
        return cls(*nnx.split(network, nnx.Param), *nnx.split(weight, nnx.Param), settings)


def _batch(train_set: data.Dataset, index: np.ndarray, context: distributed.Context) -> dict:
    """The global batch of samples `index` over the mesh, each process loading its own rows."""
    batch = {"x0": distributed.load_batch(context, index, train_set.get)}
    if train_set.condition_dim:
        batch["labels"] = distributed.load_batch(context, index, train_set.conditions)
    return batch


def _optimizer_arrays(opt_state: Any, prefix: str) -> dict[str, np.ndarray]:
    """Adam's moments of a {part: parameters} pytree under PyTorch's names:
    <prefix>/exp_avg/<part>/<name>, <prefix>/exp_avg_sq/<part>/<name>."""
    adam = _adam_state(opt_state)
    return {
        f"{prefix}/{moment}/{part}/{name}": value
        for moment, tree in (("exp_avg", adam.mu), ("exp_avg_sq", adam.nu))
        for part, state in tree.items()
        for name, value in distributed.to_host(named(state)).items()
    }


def _adam_state(opt_state: Any) -> Any:
    return opt_state.inner_state[0]  # inject_hyperparams(adam or radam): (ScaleByAdamState, …)


def _optimizer_meta(opt_state: Any) -> dict:
    return {"count": int(_adam_state(opt_state).count)}


def _load_optimizer(opt_state: Any, arrays: dict, meta: dict, prefix: str) -> Any:
    adam = _adam_state(opt_state)

    def moments(name: str, tree: dict) -> dict:
        return {
            part: jax.tree.map(
                lambda new, old: jax.device_put(new, old.sharding),
                load_arrays(state, arrays, f"{prefix}/{name}/{part}"),
                state,
            )
            for part, state in tree.items()
        }

    count = jnp.asarray(meta["count"], adam.count.dtype)
    adam = adam._replace(count=count, mu=moments("exp_avg", adam.mu), nu=moments("exp_avg_sq", adam.nu))
    return opt_state._replace(count=count, inner_state=(adam, *opt_state.inner_state[1:]))


# --- sampling --------------------------------------------------------------------------------


def sample_from(
    model: nnx.Module,
    kind: str,
    times: list[float],
    z: np.ndarray,
    noises: np.ndarray,
    labels: np.ndarray | None,
    sigma_d: float,
    guidance: float = 1.0,
    takes_guidance: bool = False,
    chunk: int = 500,
) -> np.ndarray:
    """Samples from the start z (and the noises of later consistency steps) over `times`, with
    one-hot class labels or None: the teacher's PF-ODE with Heun, or consistency sampling
    (`evaluation.draw`). With kind "consistency", times [t] and no noises this is f_θ(z, t), the consistency
    model at (x_t, t) = (z, t). The whole sampler is one jitted program; when the model's
    weights live on a mesh (as a run trains them), each device samples its share of the rows."""
    graphdef, state = nnx.split(model)
    F_of = _conditioned(graphdef, guidance, takes_guidance)

    @jax.jit
    def sample(state: nnx.State, z: jax.Array, noises: list[jax.Array], one_hot: Any) -> jax.Array:
        def F_fn(u: jax.Array, t: jax.Array) -> jax.Array:
            return F_of(state, u, t, one_hot)

        if kind == "ode":
            return samplers.sample_ode(F_fn, z, times, sigma_d, method="heun")
        return samplers.sample_consistency(F_fn, z, times, sigma_d, noises)

    mesh = distributed.mesh_of(state)
    out = []
    for start in range(0, len(z), chunk):
        rows = lambda a, part=slice(start, start + chunk): distributed.split_rows(mesh, a[part])  # noqa: E731
        x = sample(state, rows(z), [rows(n) for n in noises], None if labels is None else rows(labels))
        out.append(distributed.gather_rows(x, len(z[start : start + chunk])).astype(np.float32))
    return np.concatenate(out)


def _conditioned(graphdef: nnx.GraphDef, guidance: float, takes_guidance: bool) -> Callable:
    """F(state, u, t, labels) with the class labels; CFG at `guidance` for a teacher, or the
    scale as the student's input."""

    def F_fn(state: nnx.State, u: jax.Array, t: jax.Array, labels: jax.Array | None) -> jax.Array:
        model = nnx.merge(graphdef, state)
        if takes_guidance:
            return model(u, t, labels, jnp.full((u.shape[0],), guidance, u.dtype))
        F = model(u, t, labels)
        if guidance == 1 or labels is None:
            return F
        return samplers.cfg(F, model(u, t, jnp.zeros_like(labels)), guidance)

    return F_fn


# --- the run ---------------------------------------------------------------------------------


def run_training(config: RunConfig, run: run_folder.Run, context: distributed.Context) -> dict | None:
    """Train the configured phases, then evaluate every model and write the summary
    (`runs.train_and_evaluate`)."""

    def phase(name: str, train_set: data.Dataset, teacher: nnx.Module | None) -> nnx.Module:
        return train_phase(name, config, train_set, run, context, teacher)

    backend = runs.Backend("jax", phase, load_network, sample_from)
    return runs.train_and_evaluate(config, run, context.main, backend)


def load_network(path: Path, sigma_rel: float | None = None) -> tuple[nnx.Module, dict, RunConfig]:
    """A checkpoint's network (written by either backend): the average its phase hands on, or
    the power EMA of width `sigma_rel` (reconstructed post hoc from the snapshots beside it when
    not stored)."""
    arrays, meta, config, source = run_folder.read_network_checkpoint(path, sigma_rel)
    model = build_network(config, tuple(meta["sample_shape"]), guidance=meta.get("guidance", False))
    graphdef, params = nnx.split(model, nnx.Param)
    if isinstance(source, float):
        params = posthoc_params(Path(path).parent, meta["phase"], source, params)
    else:
        params = load_arrays(params, arrays, source)
    return nnx.merge(graphdef, params), meta, config
