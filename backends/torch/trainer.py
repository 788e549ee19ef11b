"""What a PyTorch run does besides its command line (`training/torch_run.py`): building and
restoring the configured networks (a pretrained diffusers teacher's view among them), one phase's
`loop.Trainer`, sampling, the whole run (`run_training`), and the `encode` and `export`
commands. Shared with JAX: the loop (`training.loop`), the objectives, the run folder and the
evaluation (`training.runs`)."""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backends.configs import TextLayout, read_json
from training import data, loop, metrics, objectives, run_folder, runs
from training.config import PHASES, PhaseConfig, RunConfig
from training.objectives import OBJECTIVES
from trigcore import samplers

from . import distributed, optim, steps
from .layers import AdaptiveWeight

# --- networks and their state as numpy -------------------------------------------------------


def build_network(
    config: RunConfig,
    sample_shape: tuple[int, ...],
    guidance: bool = False,
    phase: PhaseConfig | None = None,
    text_empty: np.ndarray | None = None,
) -> torch.nn.Module:
    """The configured network for samples of `sample_shape`, with `phase`'s dropout; distilled
    students with CFG take the guidance scale as an input (G.2); a text-conditioned one the
    empty prompt's packed states `text_empty` (`data.Text`; students copy their teacher's)."""
    network = config.network
    if network.kind == "diffusers":
        return _diffusers_network(config, guidance, phase, text_empty)
    options = dict(network.options)
    if phase is not None:
        options["dropout"] = phase.dropout
        if network.kind != "mlp":
            options["dropout_res"] = phase.dropout_res or sample_shape[-1]
    if network.kind == "mlp":
        from backends.torch.mlp import MLP

        return MLP(dim=math.prod(sample_shape), label_dim=network.label_dim, guidance=guidance, **options)
    channels, resolution = sample_shape[0], sample_shape[1]
    if network.kind == "edm2":
        from backends.torch.edm2 import PRESETS as SIZES
        from backends.torch.edm2 import EDM2UNet

        options = {**SIZES[network.preset], **options}
        return EDM2UNet(resolution, channels, network.label_dim, guidance=guidance, **options)
    if network.kind == "ddpmpp":
        from backends.torch.ddpmpp import DDPMpp

        return DDPMpp(resolution, channels, network.label_dim, guidance=guidance, **options)
    raise ValueError(f"network kind must be 'edm2', 'ddpmpp', 'mlp' or 'diffusers', got {network.kind!r}")


def _diffusers_network(
    config: RunConfig, guidance: bool, phase: PhaseConfig | None, text_empty: np.ndarray | None = None
) -> torch.nn.Module:
    """A pretrained teacher's architecture, freshly initialised, as a TrigFlow view
    (`backends.torch.pretrained`), with `phase`'s dropout where the model has that setting."""
    from backends.torch.pretrained import diffusers_view

    options = config.network.options
    model = dict(options["model"])
    if phase is not None and phase.dropout:
        if "dropout" not in model:
            raise ValueError(
                f"{config.network.preset} has no dropout setting; the phase asks for {phase.dropout}"
            )
        model["dropout"] = phase.dropout
    return diffusers_view(
        config.network.preset, model, options["scheduler"], config.sigma_d,
        guidance=guidance, null_class=options.get("null_class"), text=text_layout(config),
        text_empty=text_empty,
    )  # fmt: skip


def text_layout(config: RunConfig) -> TextLayout | None:
    """The layout of a text-conditioned network's condition rows (None: it takes none)."""
    text = config.network.options.get("text")
    return None if text is None else TextLayout(**text)


def load_pretrained(config: RunConfig, train_set: data.Dataset, device: torch.device) -> torch.nn.Module:
    """The pretrained teacher `config.teacher_pretrained` ("diffusers:FOLDER") as a TrigFlow
    view, tried on two training samples so that a model that cannot take them says so now."""
    from backends.configs import read_diffusers_folder

    from .pretrained import pretrained_view

    folder, options = config.teacher_pretrained.partition(":")[2], config.network.options
    # the folder was read when the run was configured (a run configured before "weights" was
    # kept reads it again)
    weights = options.get("weights") or read_diffusers_folder(folder).model_folder
    teacher = pretrained_view(
        config.network.preset, weights, options["scheduler"], config.sigma_d, device=device,
        null_class=options.get("null_class"), seed=config.seed, text=text_layout(config),
        text_empty=None if train_set.text is None else train_set.text.empty,
    )  # fmt: skip
    x = torch.from_numpy(train_set.get(np.arange(2))).to(device)
    labels = train_set.conditions(np.arange(2)) if config.network.label_dim else None
    try:
        with torch.no_grad():
            F = teacher(x / config.sigma_d, torch.ones(2, device=device), labels if labels is None else
                        torch.from_numpy(labels).to(device))  # fmt: skip
    except (RuntimeError, ValueError, TypeError) as error:
        raise ValueError(
            f"--teacher {folder}: the model cannot take the data's samples {tuple(x.shape)}: {error}"
        ) from None
    if F.shape != x.shape:
        raise ValueError(f"--teacher {folder}: the model maps samples {tuple(x.shape)} to {tuple(F.shape)}")
    return teacher.requires_grad_(False)


def arrays_of(prefix: str, module: torch.nn.Module) -> dict[str, np.ndarray]:
    """The module's state as numpy under "<prefix>/<name>" (sharded tensors gathered whole)."""
    return {
        f"{prefix}/{k}": distributed.full(v).detach().cpu().numpy() for k, v in module.state_dict().items()
    }


def load_arrays(
    module: torch.nn.Module, arrays: dict[str, np.ndarray], prefix: str, strict: bool = True
) -> None:
    state = {
        k[len(prefix) + 1 :]: torch.from_numpy(v.copy())
        for k, v in arrays.items()
        if k.startswith(prefix + "/")
    }
    missing, unexpected = module.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise ValueError(
            f"checkpoint does not fit the network: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


# --- one training phase ----------------------------------------------------------------------


class TorchTrainer:
    """`loop.Trainer` for PyTorch. Each global batch is split into shards, one per process and
    micro-batch, each drawing from its own random stream; the gradient is the mean over the
    shards. The network is wrapped for DDP or FSDP2 (`distributed.wrap`) when distributed."""

    optim = optim

    def __init__(
        self,
        name: str,
        config: RunConfig,
        train_set: data.Dataset,
        context: distributed.Context,
        teacher: torch.nn.Module | None,
        arrays: dict[str, np.ndarray] | None,
    ) -> None:
        phase, device = getattr(config, name), context.device
        self.shards = context.world * config.micro_batches
        self.streams = "processes × micro-batches"
        if phase.batch % self.shards:
            raise ValueError(
                f"{name} batch {phase.batch} does not split into {self.shards} equal shards "
                f"({context.world} processes × {config.micro_batches} micro-batches)"
            )
        self.name, self.config, self.phase, self.context, self.teacher = name, config, phase, context, teacher
        self.train_set, self.main = train_set, context.main
        self.sharded = config.parallel == "fsdp" and context.world > 1
        torch.manual_seed(config.seed + PHASES.index(name))
        guided = objectives.takes_guidance(config, name)
        empty = None if train_set.text is None else train_set.text.empty
        self.network = build_network(config, train_set.sample_shape, guided, phase, empty).to(device)
        if objectives.starts_from_teacher(name, phase):  # G.2: CMs start from the teacher's EMA
            self.network.load_state_dict(teacher.state_dict(), strict=False)
        if arrays is not None:  # resuming: the weights first
            load_arrays(self.network, arrays, "model")

    def start(self) -> None:
        config, phase, context, name = self.config, self.phase, self.context, self.name
        device = context.device
        self.model = distributed.wrap(self.network, context, self.sharded)
        # after sharding: FSDP2 replaces the parameters by sharded ones
        self.optimizer = optim.make_optimizer(
            self.network.parameters(), phase.optimizer, phase.lr, phase.betas, phase.eps
        )
        self.names = {f"model/{n}": p for n, p in self.network.named_parameters()}
        self.scaler = torch.amp.GradScaler(device.type) if config.precision == "float16" else None
        self.mine = range(context.rank * config.micro_batches, (context.rank + 1) * config.micro_batches)
        self.randomness = _shard_streams(self.mine, config.seed + PHASES.index(name), device)
        self.objective = OBJECTIVES[name]
        self.learns_from = self.teacher if self.objective.distilled else None  # the teacher's PF-ODE
        self.vsd = (
            _VSD.build(config, phase, self.train_set, self.teacher, context) if self.objective.avsd else None
        )
        if self.vsd is not None:  # w_ψ trains with θ (App. C.2)
            self.optimizer.add_param_group({"params": list(self.vsd.weight.parameters())})
            self.names |= {f"vsd_weight/{n}": p for n, p in self.vsd.weight.named_parameters()}
        self.settings = objectives.loss_settings(name, config)
        if self.objective.teaches and config.network.kind == "diffusers":  # trained as diffusers trains it
            from backends.torch.pretrained import NativeLoss

            options, dropout = config.network.options, self.settings.label_dropout
            self.settings = NativeLoss(options["scheduler"], dropout, options.get("model"))

    def weights(self) -> torch.nn.Module:
        return self.network

    def restore(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        _load_optimizer(self.optimizer, arrays, meta["optimizer"], self.names, "optimizer")
        if self.vsd is not None:
            self.vsd.load(arrays, meta)
        if self.scaler is not None:
            self.scaler.load_state_dict(meta["scaler"])
        self.randomness = [torch.from_numpy(arrays[f"rng/shard{j}"].copy()) for j in self.mine]

    def step(self, step: int, index: np.ndarray) -> tuple[bool, list[dict]]:
        """The global batch split into this process's shards; each shard's loss and gradient with
        its own random stream; one optimiser step on the mean gradient (and aVSD's F_φ)."""
        phase, vsd, device = self.phase, self.vsd, self.context.device
        for each in (self.optimizer, vsd.optimizer) if vsd else (self.optimizer,):
            optim.set_learning_rate(each, step, phase.lr, phase.lr_decay, phase.lr_rampup)
        self.optimizer.zero_grad(set_to_none=True)
        per_shard = phase.batch // self.shards
        batches = [
            _batch(self.train_set, index[j * per_shard : (j + 1) * per_shard], device) for j in self.mine
        ]
        metrics, samples = [], []
        for k, batch in enumerate(batches):
            with _shard(self.randomness, k, device), _accumulating(self.model, k + 1 < len(batches)):
                loss, values = steps.LOSSES[self.objective.loss](
                    self.model, batch, self.settings, step, phase, self.learns_from, vsd
                )
                _backward(loss / len(batches), self.scaler)
            samples.append(values.pop("samples", None))
            metrics.append(values)
        if self.sharded:
            distributed.average_replicated(self.network, self.context)
        finite = optim.finish_step(self.optimizer, self.scaler, model=self.network)
        if vsd is not None:  # L_Diff(φ): the fake score learns the generator's samples
            vsd.optimizer.zero_grad(set_to_none=True)
            for k, batch in enumerate(batches):
                with _shard(self.randomness, k, device), _accumulating(vsd.fake, k + 1 < len(batches)):
                    fake_loss, _ = steps.fake_score_loss(
                        vsd.fake, samples[k], batch.get("labels"), vsd.settings
                    )
                    _backward(fake_loss / len(batches), vsd.scaler)
            finite = optim.finish_step(vsd.optimizer, vsd.scaler) and finite
        return finite, metrics

    def reduce(self, metrics: list[dict]) -> dict[str, float]:
        return {
            key: float(distributed.mean(torch.stack([m[key] for m in metrics]).mean(), self.context))
            for key, value in metrics[0].items()
            if torch.is_tensor(value) and value.ndim == 0
        }

    def arrays(self) -> dict[str, np.ndarray]:
        everyone = distributed.gather([state.numpy() for state in self.randomness], self.context)
        states = (state for states in everyone for state in states)
        arrays = arrays_of("model", self.network) | _optimizer_arrays(self.optimizer, self.names, "optimizer")
        arrays |= {f"rng/shard{j}": state for j, state in enumerate(states)}
        return arrays | (self.vsd.arrays() if self.vsd is not None else {})

    def meta(self) -> dict:
        meta: dict = {"optimizer": {"param_groups": self.optimizer.state_dict()["param_groups"]}}
        if self.vsd is not None:
            meta["fake_optimizer"] = {"param_groups": self.vsd.optimizer.state_dict()["param_groups"]}
            if self.vsd.scaler is not None:
                meta["fake_scaler"] = self.vsd.scaler.state_dict()
        if self.scaler is not None:
            meta["scaler"] = self.scaler.state_dict()
        return meta

    arrays_of = staticmethod(arrays_of)

    @staticmethod
    def load_arrays(module: torch.nn.Module, arrays: dict[str, np.ndarray], prefix: str) -> torch.nn.Module:
        load_arrays(module, arrays, prefix)
        return module

    def posthoc(self, folder: Path, name: str, sigma_rel: float) -> torch.nn.Module:
        return posthoc_network(folder, name, sigma_rel, self.network)

    def handed(self, weights: torch.nn.Module | None) -> torch.nn.Module:
        if weights is None:
            weights = copy.deepcopy(self.network).requires_grad_(False)
        return weights.eval()

    def barrier(self, label: str) -> None:
        distributed.barrier(self.context)


def train_phase(
    name: str,
    config: RunConfig,
    train_set: data.Dataset,
    run: run_folder.Run,
    context: distributed.Context = distributed.SINGLE,
    teacher: torch.nn.Module | None = None,
) -> torch.nn.Module:
    """Train one phase with checkpoints, resuming from its latest one (`loop.train_phase`);
    returns the network it hands on, in eval mode."""

    def make(arrays: dict | None) -> TorchTrainer:
        return TorchTrainer(name, config, train_set, context, teacher, arrays)

    return loop.train_phase(name, config, train_set, run, "torch", make)


def posthoc_network(folder: Path, name: str, sigma_rel: float, model: torch.nn.Module) -> torch.nn.Module:
    """EDM2's post-hoc EMA: the average of width σ_rel at the last snapshot, by least squares
    over the power-EMA snapshots `<name>.ema-*` in `folder`."""
    snapshots = [
        snapshot
        | {"states": [{k: torch.from_numpy(v) for k, v in state.items()} for state in snapshot["states"]]}
        for snapshot in run_folder.read_snapshots(folder, name, sigma_rel)
    ]
    return optim.posthoc_average(snapshots, sigma_rel, model)


@dataclass
class _VSD:
    """aVSD's other networks: the fake score F_φ (from the teacher, its own optimiser at the
    phase's rate, no EMA: G.2) and the adaptive weight w_ψ (trained with θ)."""

    fake: torch.nn.Module  # F_φ, under DDP when distributed
    network: torch.nn.Module  # F_φ itself
    weight: torch.nn.Module
    optimizer: torch.optim.Optimizer
    settings: steps.VSDConfig
    scaler: torch.amp.GradScaler | None  # fp16: F_φ's own loss scaling

    @classmethod
    def build(cls, config, phase, train_set, teacher, context) -> _VSD:
        fake_phase = replace(phase, dropout=phase.fake_dropout)
        network = build_network(config, train_set.sample_shape, phase=fake_phase).to(context.device)
        network.load_state_dict(teacher.state_dict())
        optimizer = optim.make_optimizer(
            network.parameters(), phase.optimizer, phase.lr, phase.betas, phase.eps
        )
        settings = objectives.vsd_settings(config, phase)
        weight = AdaptiveWeight().to(context.device)
        scaler = torch.amp.GradScaler(context.device.type) if config.precision == "float16" else None
        return cls(distributed.wrap(network, context), network, weight, optimizer, settings, scaler)

    def _names(self) -> dict[str, torch.nn.Parameter]:
        return {f"fake/{n}": p for n, p in self.network.named_parameters()}

    def arrays(self) -> dict[str, np.ndarray]:
        return (
            arrays_of("fake", self.network)
            | arrays_of("vsd_weight", self.weight)
            | _optimizer_arrays(self.optimizer, self._names(), "fake_optimizer")
        )

    def load(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        load_arrays(self.network, arrays, "fake")
        load_arrays(self.weight, arrays, "vsd_weight")
        _load_optimizer(self.optimizer, arrays, meta["fake_optimizer"], self._names(), "fake_optimizer")
        if self.scaler is not None:
            self.scaler.load_state_dict(meta["fake_scaler"])


def _batch(train_set: data.Dataset, index: np.ndarray, device: torch.device) -> dict:
    batch = {"x0": torch.from_numpy(train_set.get(index)).to(device)}
    labels = train_set.conditions(index)
    if labels is not None:
        batch["labels"] = torch.from_numpy(labels).to(device)
    return batch


def _backward(loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
    (loss if scaler is None else scaler.scale(loss)).backward()


def _rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(state: torch.Tensor, device: torch.device) -> None:
    (torch.cuda.set_rng_state(state, device) if device.type == "cuda" else torch.set_rng_state(state))


def _shard_streams(shards: range, seed: int, device: torch.device) -> list[torch.Tensor]:
    """The starting random state of each shard: shard 0 continues the generator as it is (so a
    single process draws as if there were no shards), shard j > 0 starts from seed + 7919·j."""
    current = _rng_state(device)
    states = []
    for j in shards:
        if j:
            (torch.cuda.manual_seed if device.type == "cuda" else torch.manual_seed)(seed + 7919 * j)
        states.append(_rng_state(device) if j else current.clone())
    _set_rng_state(current, device)
    return states


@contextmanager
def _shard(states: list[torch.Tensor], k: int, device: torch.device) -> Iterator[None]:
    """Draw from shard k's random stream, and keep where it ends."""
    _set_rng_state(states[k], device)
    yield
    states[k] = _rng_state(device)


def _accumulating(model: torch.nn.Module, more_to_come: bool) -> Any:
    """DDP's no_sync while micro-batches remain (their gradients are all-reduced once, with the
    last one's)."""
    return model.no_sync() if more_to_come and hasattr(model, "no_sync") else nullcontext()


def _optimizer_arrays(
    optimizer: torch.optim.Optimizer, names: dict[str, torch.nn.Parameter], prefix: str
) -> dict[str, np.ndarray]:
    """Adam's moments under the parameters' names: <prefix>/<moment>/<name>."""
    name_of = {id(p): n for n, p in names.items()}
    out = {}
    for p, state in optimizer.state.items():
        for key, value in state.items():
            value = distributed.full(value)
            out[f"{prefix}/{key}/{name_of[id(p)]}"] = value.detach().cpu().numpy().reshape(value.shape)
    return out


def _load_optimizer(
    optimizer: torch.optim.Optimizer,
    arrays: dict[str, np.ndarray],
    meta: dict,
    names: dict[str, torch.nn.Parameter],
    prefix: str,
) -> None:
    order = {n: i for i, n in enumerate(names)}
    state: dict = {}
    for key, value in arrays.items():
        if key.startswith(prefix + "/"):
            _, moment, name = key.split("/", 2)
            whole = torch.from_numpy(value.copy())
            state.setdefault(order[name], {})[moment] = distributed.like(whole, names[name])
    optimizer.load_state_dict(meta | {"state": state})


# --- sampling --------------------------------------------------------------------------------


def sample_from(
    model: torch.nn.Module,
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
    model at (x_t, t) = (z, t)."""
    num = len(z)
    device = next(model.parameters()).device

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device)

    out = []
    for start in range(0, num, chunk):
        part = slice(start, start + chunk)
        F_fn = _conditioned(model, None if labels is None else tensor(labels[part]), guidance, takes_guidance)
        with torch.no_grad():
            if kind == "ode":
                x = samplers.sample_ode(F_fn, tensor(z[part]), times, sigma_d, method="heun")
            else:
                x = samplers.sample_consistency(
                    F_fn, tensor(z[part]), times, sigma_d, [tensor(n[part]) for n in noises]
                )
        out.append(x.float().cpu().numpy())
    return np.concatenate(out)


def sample_native(
    config: RunConfig,
    model: torch.nn.Module,
    method: str,
    steps: int,
    z: np.ndarray,
    labels: np.ndarray | None,
    guidance: float,
    chunk: int = 500,
) -> np.ndarray:
    """Samples of a diffusers teacher by its own scheduler `method` (`configs.NATIVE_SAMPLERS`)
    from the starts z, with one-hot labels or None (`pretrained.sample_native`)."""
    from backends.torch.pretrained import sample_native as sample

    device = next(model.parameters()).device
    out = []
    for start in range(0, len(z), chunk):
        part = slice(start, start + chunk)
        x = sample(
            model, config.network.options["scheduler"], method, steps, torch.from_numpy(z[part]).to(device),
            None if labels is None else torch.from_numpy(labels[part]).to(device), guidance,
        )  # fmt: skip
        out.append(x.float().cpu().numpy())
    return np.concatenate(out)


def _conditioned(model: torch.nn.Module, labels, guidance: float, takes_guidance: bool):
    """F(u, t) with the class labels; CFG at `guidance` for a teacher, or the scale as the
    student's input."""

    def F_fn(u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if takes_guidance:
            return model(u, t, labels, torch.full((u.shape[0],), guidance, device=u.device))
        F = model(u, t, labels)
        if guidance == 1 or labels is None:
            return F
        return samplers.cfg(F, model(u, t, torch.zeros_like(labels)), guidance)

    return F_fn


# --- the run ---------------------------------------------------------------------------------


def run_training(
    config: RunConfig, run: run_folder.Run, context: distributed.Context = distributed.SINGLE
) -> dict | None:
    """Train the configured phases, then (on the main process) evaluate every model and write
    the summary (`runs.train_and_evaluate`); other processes return None."""

    def phase(name: str, train_set: data.Dataset, teacher: torch.nn.Module | None) -> torch.nn.Module:
        return train_phase(name, config, train_set, run, context, teacher)

    def load(path: Path) -> tuple[torch.nn.Module, dict, RunConfig]:
        return load_network(path, device=context.device)

    backend = runs.Backend(
        "torch", phase, load, sample_from, release=lambda: distributed.finish(context),
        load_pretrained=lambda train_set: load_pretrained(config, train_set, context.device),
        sample_native=lambda *args: sample_native(config, *args),
    )  # fmt: skip
    return runs.train_and_evaluate(config, run, context.main, backend)


def check_run(config: RunConfig, train_set: data.Dataset, device: torch.device) -> None:
    """What `cli.start` asks before it makes the run folder: that FSDP2 can train the run
    (`_check_sharding`), and that a pretrained teacher loads and takes the data."""
    if config.parallel == "fsdp":
        _check_sharding(config)
    if config.teacher_pretrained:
        load_pretrained(config, train_set, device)


def _check_sharding(config: RunConfig) -> None:
    """What FSDP2 trains here (torch 2.13): the separate tangent pass (the fused one fails under
    it), float32 or bfloat16 (fp16's GradScaler fails on sharded and replicated gradients
    together), phases with an EMA (a sharded network is not copied), and not sCD + aVSD."""
    trained = objectives.trained(config)
    no_ema = [
        n for n in trained if not (getattr(config, n).ema_halflife or getattr(config, n).ema_sigma_rels)
    ]
    problems = [
        *([f"--passes {config.passes} (needs separate)"] if config.passes != "separate" else []),
        *(["--precision float16 (use bfloat16)"] if config.precision == "float16" else []),
        *([f"phases without an EMA: {', '.join(no_ema)}"] if no_ema else []),
        *(f"the {n} phase" for n in trained if OBJECTIVES[n].avsd),
    ]
    if problems:
        raise ValueError(f"--parallel fsdp cannot train with {'; '.join(problems)}")


def load_network(
    path: Path, sigma_rel: float | None = None, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, dict, RunConfig]:
    """A checkpoint's network, in eval mode: the average its phase hands on, or the power EMA of
    width `sigma_rel` (reconstructed post hoc from the snapshots beside it when not stored)."""
    arrays, meta, config, source = run_folder.read_network_checkpoint(path, sigma_rel)
    model = build_network(config, tuple(meta["sample_shape"]), guidance=meta.get("guidance", False))
    if isinstance(source, float):
        model = posthoc_network(Path(path).parent, meta["phase"], source, model)
    else:
        load_arrays(model, arrays, source)
    return model.to(device).eval().requires_grad_(False), meta, config


def encode_command(args: argparse.Namespace) -> int:
    """`encode`: images → raw VAE latents in a folder that `--data latents:PATH` reads (G.1),
    or captions → a pipeline's text states beside them (`encode_captions`)."""
    images, captions = (args.vae, args.data), (args.captions, args.pipeline)
    if all(images) == all(captions) or (any(images) and any(captions)):
        raise ValueError("encode takes --vae and --data (images) or --captions and --pipeline (captions)")
    return encode_captions(args) if all(captions) else encode_images(args)


def encode_images(args: argparse.Namespace) -> int:
    """Images → raw SD-VAE latents in a folder that `--data latents:PATH` reads (G.1)."""
    from training.vae import SDVAE

    kind, _, path = args.data.partition(":")
    loaders = {"folder": data.load_image_folder, "zip": data.load_zip}
    if kind not in loaders or not Path(path).exists():
        raise ValueError(f"--data must be folder:PATH or zip:PATH of existing images, got {args.data!r}")
    if args.resolution < 8 or args.resolution % 8:
        raise ValueError(f"--resolution must be a multiple of 8 (the VAE's factor), got {args.resolution}")
    images = loaders[kind](Path(path), args.resolution)
    device = distributed.setup(args.device).device
    vae = SDVAE(args.vae, device=str(device))
    # written into x.npy as they come (never all in memory), then renamed into place
    temporary = args.out.with_name(f".{args.out.name}.tmp")
    temporary.mkdir(parents=True, exist_ok=True)
    size = args.resolution // 8
    x = np.lib.format.open_memmap(temporary / "x.npy", "w+", np.float32, (len(images), 4, size, size))
    for i in run_folder.progress(range(0, len(images), vae.batch), "encode"):
        x[i : i + vae.batch] = vae.encode(metrics.to_uint8_rgb(images.get(slice(i, i + vae.batch))))
    x.flush()
    if images.labels is not None:
        np.save(temporary / "labels.npy", images.labels)
    if args.out.exists():
        raise FileExistsError(f"--out {args.out} exists; the latents are left in {temporary}")
    temporary.rename(args.out)
    print(f"wrote {len(images)} latents of shape {x.shape[1:]} to {args.out}")
    return 0


def encode_captions(args: argparse.Namespace) -> int:
    """Captions → what the text encoders of the pipeline `args.pipeline` make of them, in the
    latents folder `args.out` (or a new one) as `data.load_text` reads it: per sample the hidden
    states, attention mask and pooled projection the pipeline's denoiser takes (memory-mapped
    .npy files), the empty prompt's, and the captions. Written in batches to a folder beside it,
    so that a stopped run resumes where it stopped; moved into place when done."""
    from .pretrained import prompt_encoder

    captions = read_captions(args.captions)
    out, batch = Path(args.out), args.batch
    if batch < 1:
        raise ValueError(f"--batch must be at least 1, got {batch}")
    size = len(np.load(out / "x.npy", mmap_mode="r")) if (out / "x.npy").is_file() else len(captions)
    if size != len(captions):
        raise ValueError(
            f"--captions {args.captions}: {len(captions)} captions for the {size} latents in {out}"
        )
    held = [name for name in (*data.TEXT_FILES.values(), data.EMPTY_PROMPT) if (out / name).exists()]
    if held:
        raise FileExistsError(f"--out {out} already holds {', '.join(held)}")
    temporary = out.with_name(f".{out.name}.text.tmp")
    progress_file = temporary / "progress.json"
    identity = {"captions": hashlib.sha256(json.dumps(captions).encode()).hexdigest(),
                "pipeline": str(Path(args.pipeline).resolve())}  # fmt: skip
    done = 0
    if progress_file.exists():
        progress = json.loads(progress_file.read_text())
        if {k: progress.get(k) for k in identity} == identity:
            done = int(progress["done"])
        else:  # another encoding's leftovers
            shutil.rmtree(temporary)
    temporary.mkdir(parents=True, exist_ok=True)
    device = distributed.setup(args.device).device
    encode, empty = prompt_encoder(args.pipeline, device)
    files: dict[str, np.ndarray] = {}
    for start in run_folder.progress(range(done, len(captions), batch), "encode", initial=done // batch,
                                     total=-(-len(captions) // batch)):  # fmt: skip
        arrays = dict(zip(("states", "mask", "pooled"), encode(captions[start : start + batch])))
        for key, array in arrays.items():
            if array is None:
                continue
            if key not in files:
                path = temporary / data.TEXT_FILES[key]
                shape = (len(captions), *array.shape[1:])
                files[key] = (
                    np.lib.format.open_memmap(path, "r+")
                    if start > 0
                    else np.lib.format.open_memmap(path, "w+", array.dtype, shape)
                )
            files[key][start : start + len(array)] = array
        for array in files.values():
            array.flush()
        progress_file.write_text(json.dumps(identity | {"done": min(start + batch, len(captions))}))
    np.savez(temporary / data.EMPTY_PROMPT, **{k: v[0] for k, v in zip(("states", "mask", "pooled"), empty)
                                                if v is not None})  # fmt: skip
    (temporary / data.CAPTIONS).write_text(json.dumps(captions))
    out.mkdir(parents=True, exist_ok=True)
    # the states last: a folder holding them holds the rest (`data.load_text`)
    names = [data.EMPTY_PROMPT, data.CAPTIONS, data.TEXT_FILES["mask"], data.TEXT_FILES["pooled"],
             data.TEXT_FILES["states"]]  # fmt: skip
    for name in names:
        if (temporary / name).exists():
            os.replace(temporary / name, out / name)
    shutil.rmtree(temporary)
    text = data.load_text(out)
    assert text is not None
    layout = text.layout
    print(
        f"wrote the text states of {len(captions)} captions to {out}: {layout.length} tokens × {layout.width}"
        f"{', a mask' if layout.mask else ''}{f', pooled {layout.pooled}' if layout.pooled else ''}"
    )
    return 0


def read_captions(path: Path) -> list[str]:
    """Captions from a JSON list of strings or a text file of one caption per line."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--captions {path}: not a readable text file ({error})") from None
    if path.suffix == ".json":
        try:
            captions = json.loads(text)
        except ValueError as error:
            raise ValueError(f"--captions {path}: not readable JSON ({error})") from None
        if not (isinstance(captions, list) and all(isinstance(c, str) for c in captions)):
            raise ValueError(f"--captions {path}: expected a JSON list of strings")
    else:
        captions = text.splitlines()
    if not captions:
        raise ValueError(f"--captions {path}: no captions in it")
    return captions


def export_command(args: argparse.Namespace) -> int:
    """`export`: a student distilled from a diffusers teacher as a diffusers folder. Where
    diffusers has a few-step pipeline for it (`pretrained.FEW_STEP_PIPELINES`: Sana's
    SanaSprintPipeline) and the teacher was a pipeline the student can be put in, that pipeline:
    the student in transformer/, an SCMScheduler with σ_d, and the teacher's other parts copied.
    Otherwise its model in unet/ (or transformer/), an SCMScheduler config in scheduler/ that
    samples it in TrigFlow time, and the teacher's scheduler config in native_scheduler/ (how
    the model reads its time: the change of variables of `trigcore.native`, README "Pretrained
    models")."""
    from diffusers import SCMScheduler

    from backends.torch.pretrained import FEW_STEP_PIPELINES, few_step_pipeline, native_model

    if args.out.exists():
        raise FileExistsError(f"--out {args.out} exists; give a new folder")
    view, meta, config = load_network(args.checkpoint, args.ema)
    if config.network.kind != "diffusers":
        raise ValueError(
            f"{args.checkpoint}: a {config.network.kind} network; export writes students of a diffusers "
            "teacher (--teacher diffusers:FOLDER)"
        )
    if OBJECTIVES[meta["phase"]].teaches:
        raise ValueError(f"{args.checkpoint}: a teacher checkpoint; export writes consistency models")
    model = native_model(view, args.guidance)
    teacher = Path(config.teacher_pretrained.partition(":")[2]) if config.teacher_pretrained else None
    pipeline, why = few_step_pipeline(view, teacher) if teacher else (None, "the teacher was trained here")
    if pipeline is not None:
        missing = [part for part in pipeline.copied if not (teacher / part).is_dir()]
        if missing:
            raise FileNotFoundError(f"{teacher}: the teacher's pipeline has no {', '.join(missing)}/ to copy")
    temporary = args.out.with_name(f".{args.out.name}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)  # what a failed export left
    subfolder = "transformer" if "Transformer" in config.network.preset else "unet"
    model.save_pretrained(temporary / subfolder)
    SCMScheduler(sigma_data=config.sigma_d).save_pretrained(temporary / "scheduler")
    if pipeline is not None:
        for part in pipeline.copied:
            shutil.copytree(teacher / part, temporary / part)
        index = read_json(teacher / "model_index.json")
        index = {key: value for key, value in index.items() if key.startswith("_") or key in pipeline.copied}
        index |= {"_class_name": pipeline.name, subfolder: ["diffusers", config.network.preset],
                  "scheduler": ["diffusers", "SCMScheduler"]}  # fmt: skip
        (temporary / "model_index.json").write_text(json.dumps(index, indent=2))
    else:
        (temporary / "native_scheduler").mkdir()
        (temporary / "native_scheduler" / "scheduler_config.json").write_text(
            json.dumps(config.network.options["scheduler"], indent=2)
        )
    temporary.rename(args.out)
    scale = "its CFG scale an input" if view.guidance_input is not None else f"CFG scale {args.guidance:g}"
    written = pipeline.name if pipeline is not None else "a model folder"
    print(f"wrote {config.network.preset} ({meta['phase']}, {scale}) to {args.out} as {written}")
    if pipeline is None and config.network.preset in FEW_STEP_PIPELINES:
        print(f"note: not a few-step pipeline: {why}", file=sys.stderr)
    return 0
