"""Pretrained models from other libraries (diffusers, EDM2's own code) as TrigFlow networks.

`jvp_ready()` lets forward-mode autodiff (`torch.func.jvp`, dual tensors) through any such
model without editing its code. Two of its building blocks have no working forward-mode rule in
torch 2.13: fused `scaled_dot_product_attention` has none at all (NotImplementedError, on the
CPU too), and `group_norm`'s rule fails on some non-contiguous tangents ("view size is not
compatible with input tensor's size and stride", inside diffusers' attention blocks). Inside the
context, `torch.nn.functional` serves both with versions that have one (the project's attention
op; torch's fused group norm with its tangent written out); the models look them up there at
call time (diffusers' attention processors and dispatcher, `torch.nn.GroupNorm`).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from backends.configs import (
    TextLayout,
    check_text,
    edm_preconditioning,
    native_sampler,
    read_diffusers_folder,
    read_json,
    schedule_from_config,
)
from trigcore import convert, native

from .attention import attention
from .layers import LogvarHead, PositionalEmbedding, group_norm


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """`F.scaled_dot_product_attention` with a forward-mode derivative: unmasked attention by
    the project's op (SDPA forward and backward, the App. F tangent); with a mask, causality,
    dropout or grouped heads, the same formula in plain differentiable operations."""
    plain = attn_mask is None and not is_causal and dropout_p == 0.0 and not enable_gqa
    if plain and query.ndim == 4 and query.shape[:2] == key.shape[:2] == value.shape[:2]:
        return attention(query, key, value, scale)
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    if enable_gqa:  # each group of query heads shares one key/value head
        repeat = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(repeat, dim=-3), value.repeat_interleave(repeat, dim=-3)
    scores = scale * query @ key.transpose(-2, -1)
    if is_causal:
        keep = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~keep, -math.inf)
    if attn_mask is not None:
        scores = (
            scores.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool else scores + attn_mask
        )
    weights = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return weights @ value


@contextlib.contextmanager
def jvp_ready() -> Iterator[None]:
    """Within the block, `torch.nn.functional`'s scaled_dot_product_attention and group_norm
    have forward-mode derivatives (the values are the same; restored on leaving)."""
    saved = F.scaled_dot_product_attention, F.group_norm
    F.scaled_dot_product_attention, F.group_norm = scaled_dot_product_attention, group_norm
    try:
        yield
    finally:
        F.scaled_dot_product_attention, F.group_norm = saved


# ---------------------------------------------------------------------------------------------
# A TrigFlow view of a native model


def diffusers_call(
    model: torch.nn.Module, x_s: torch.Tensor, s: torch.Tensor, labels: torch.Tensor | dict | None
) -> torch.Tensor:
    """A diffusers model's prediction at (x_s, its time s), class-conditional when given class
    indices, text-conditioned when given its text keywords (a dict: `TrigFlowView`); of models
    that also learn the variance (2C output channels), the first C."""
    out = model(x_s, timestep=s, **_keywords(labels), return_dict=False)[0]
    # models that also learn the variance (improved DDPM, DiT) predict 2C channels, the first C
    # being the prediction
    return out[:, : x_s.shape[1]] if out.shape[1] == 2 * x_s.shape[1] else out


# where each diffusers model family makes its time embedding (the student's guidance joins it):
# U-Nets, SD3/Flux, PixArt/Sana (whose time_embed, an adaptive norm, embeds t in its emb), others
TIME_EMBEDDINGS = ("time_embedding", "time_text_embed", "time_embed.emb", "time_embed")


def time_embedding(model: torch.nn.Module) -> torch.nn.Module | None:
    """The first of TIME_EMBEDDINGS the model has, or None."""
    for path in TIME_EMBEDDINGS:
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    return None


@dataclass(frozen=True)
class GuidanceInput:
    """A model family's own input for the CFG scale (as its guidance-distilled models have): the
    config flag that builds it, the forward keyword it comes by, the config key of the factor
    its pipeline multiplies the scale by, and what building it changes in the weights: the time
    embedding's prefix before and after, and the prefix of the embedding it adds."""

    flag: str
    keyword: str
    factor: str
    renamed: tuple[str, str]
    added: str


# Sana's `guidance_embeds` (SANA-Sprint): the scale's sinusoids, times guidance_embeds_scale, pass
# an embedding of their own whose output joins the time embedding's
GUIDANCE_INPUTS = {
    "SanaTransformer2DModel": GuidanceInput(
        "guidance_embeds", "guidance", "guidance_embeds_scale",
        ("time_embed.emb.timestep_embedder.", "time_embed.timestep_embedder."),
        "time_embed.guidance_embedder",
    ),
}  # fmt: skip


def with_guidance_input(model: torch.nn.Module, inputs: GuidanceInput) -> torch.nn.Module:
    """The model rebuilt with its own guidance input (`GUIDANCE_INPUTS`), every weight carried
    over and the new embedding's last layer zero, so that it computes what the model did at any
    scale; the model itself if it has the input already. The new embedding's other weights come
    from torch's global generator."""
    if model.config.get(inputs.flag):
        return model
    # (without the private keys: `_use_default_values` would restore the flag's default)
    config = {key: value for key, value in model.config.items() if not key.startswith("_")}
    built = type(model).from_config({**config, inputs.flag: True})
    before, after = inputs.renamed
    state = {
        (after + key[len(before) :] if key.startswith(before) else key): value
        for key, value in model.state_dict().items()
    }
    missing, unexpected = built.load_state_dict(state, strict=False)
    if unexpected or not all(key.startswith(inputs.added + ".") for key in missing):
        raise ValueError(
            f"{type(model).__name__} with {inputs.flag}: its weights did not carry over (unexpected "
            f"{unexpected}, missing {missing})"
        )
    last = [m for m in built.get_submodule(inputs.added).modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    parameter = next(model.parameters())
    return built.to(parameter.device, parameter.dtype).train(model.training)


class TrigFlowView(LogvarHead, torch.nn.Module):
    """A native model as TrigFlow's network: `forward(u, t, class_labels, guidance)` is
    F_θ(x_t/σ_d, t) (u = x_t/σ_d), and `logvar(t)` an adaptive weight beside it, so the sCM
    losses run on it unchanged.

    The model sees x_s = `native.to_native(x_t, t, …)` at `schedule.time(t, σ_d)` and its
    prediction (`prediction_type`) becomes F (`native.F_from_prediction`). `call(model, x_s, s,
    labels)` returns the prediction (`diffusers_call` by default; EDM's own `Precond` takes
    `lambda m, x, s, y: m(x, s, y)` with `EDM()` and "sample"). Class labels come one-hot, as
    the run scripts give them, and reach the model as indices; an all-zero row (no class, for
    CFG) becomes `null_class`. A text-conditioned view (`text`, the layout of its condition rows:
    `configs.TextLayout`) takes each caption's packed text states in place of the one-hot row
    and hands the model its keywords (`configs.TEXT_INPUTS`) as `labels`; an all-zero row, or
    no labels, is the empty prompt, whose packed row the view holds (`text_empty`, saved with
    its weights; set it before use). With `guidance`, a student starts equal to its teacher and
    takes the CFG scale: through the model's own guidance input where its family has one
    (`GUIDANCE_INPUTS`: the model is rebuilt with it, `with_guidance_input`), otherwise through a
    zero-initialised embedding of the scale added to the output of the model's time embedding
    (the first of TIME_EMBEDDINGS it has).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        schedule: native.Schedule,
        prediction_type: str,
        sigma_d: float,
        call: Callable[..., torch.Tensor] = diffusers_call,
        null_class: int | None = None,
        guidance: bool = False,
        logvar_channels: int = 128,
        text: TextLayout | None = None,
    ) -> None:
        super().__init__()
        native.F_from_prediction(1.0, 1.0, 1.0, sigma_d, schedule.kind, prediction_type)  # checks
        self.guidance_input = GUIDANCE_INPUTS.get(type(model).__name__)
        if self.guidance_input is not None:
            if guidance:
                model = with_guidance_input(model, self.guidance_input)
                # the teacher's state (a student's start) names the time embedding as before
                self.register_load_state_dict_pre_hook(self._renamed)
            elif model.config.get(self.guidance_input.flag):
                raise ValueError(
                    f"{type(model).__name__} with {self.guidance_input.flag} takes its CFG scale as an input "
                    "(a guidance-distilled model); it is read as a student (guidance=True), not a teacher"
                )
            else:
                self.guidance_input = None
        self.model, self.schedule, self.prediction_type = model, schedule, prediction_type
        self.sigma_d, self.call, self.null_class = float(sigma_d), call, null_class
        self.text, self.text_inputs = text, None
        if text is not None:
            self.text_inputs = check_text(type(model).__name__, dict(model.config), text)
            self.register_buffer("text_empty", torch.zeros(text.size))
        self.emb_logvar = PositionalEmbedding(logvar_channels)
        self.logvar_linear = torch.nn.Linear(logvar_channels, 1)
        self.emb_guidance: torch.nn.Module | None = None
        self._scale: torch.Tensor | None = None
        if guidance and self.guidance_input is None:
            where = time_embedding(model)
            if where is None:
                raise ValueError(
                    f"{type(model).__name__} has none of {', '.join(TIME_EMBEDDINGS)}, where the "
                    "guidance scale would join its time embedding"
                )
            channels = _output_channels(where)
            self.emb_guidance = torch.nn.Sequential(
                PositionalEmbedding(logvar_channels), torch.nn.Linear(logvar_channels, channels)
            )
            torch.nn.init.zeros_(self.emb_guidance[1].weight)
            torch.nn.init.zeros_(self.emb_guidance[1].bias)
            where.register_forward_hook(self._add_guidance)

    def _add_guidance(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if self._scale is None or self.emb_guidance is None:
            return output
        return output + self.emb_guidance(self._scale.to(output.dtype)).reshape(output.shape[0], -1)

    def forward(
        self,
        u: torch.Tensor,
        t: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
        native_call: bool = False,
    ) -> torch.Tensor:
        """F_θ(u, t); with `native_call`, the model's own prediction at its own input u = x_s and
        time t = s (diffusers' own training and sampling, through the module DDP wraps)."""
        if native_call:
            return self.call(self.model, u, t.expand(u.shape[0]), self._labels(class_labels, u))
        t = t.to(u.dtype).expand(u.shape[0]) if t.ndim <= 1 else t
        x_t = u * self.sigma_d
        x_s = native.to_native(x_t, t, self.sigma_d, self.schedule.kind)
        s = self.schedule.time(t, self.sigma_d)
        if guidance is not None and not self.takes_guidance:
            raise ValueError("this view takes no guidance scale; build it with guidance=True")
        self._scale = None if guidance is None else guidance.to(u.dtype).expand(u.shape[0])
        labels = self._labels(class_labels, x_s)
        if self.guidance_input is not None:  # the model's own input, at scale 1 when none is given
            scale = torch.ones_like(t) if self._scale is None else self._scale
            factor = float(self.model.config[self.guidance_input.factor])
            labels = {**_keywords(labels), self.guidance_input.keyword: scale * factor}
        try:
            with jvp_ready():
                prediction = self.call(self.model, x_s, s, labels)
        finally:
            self._scale = None
        return native.F_from_prediction(
            x_t, t, prediction.to(u.dtype), self.sigma_d, self.schedule.kind, self.prediction_type
        )

    def _renamed(self, module: torch.nn.Module, state: dict, prefix: str, *args: Any) -> None:
        """Rename, in place, a state's time-embedding weights as the model without its guidance
        input names them (a teacher's) to what the model with it calls them."""
        assert self.guidance_input is not None
        before, after = (f"{prefix}model.{name}" for name in self.guidance_input.renamed)
        for key in [key for key in state if key.startswith(before)]:
            state[after + key[len(before) :]] = state.pop(key)

    @property
    def takes_guidance(self) -> bool:
        """Whether the view takes a CFG scale (a student built with guidance=True)."""
        return self.guidance_input is not None or self.emb_guidance is not None

    def _labels(self, class_labels: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | dict | None:
        """What `call` hands the model beside x: class indices, text keywords or None."""
        if self.text is not None:
            return self._text_keywords(class_labels, x)
        if class_labels is None:
            return None
        index = class_labels.argmax(dim=1)
        empty = class_labels.abs().sum(dim=1) == 0
        if bool(empty.any()):
            if self.null_class is None:
                raise ValueError(
                    "a row of class_labels is all zero (no class), but this view has no null_class"
                )
            index = torch.where(empty, torch.full_like(index, self.null_class), index)
        return index

    def _text_keywords(self, rows: torch.Tensor | None, x: torch.Tensor) -> dict:
        """The model's text keywords, in x's dtype, from packed rows (`configs.TextLayout`);
        all-zero rows and None (for every sample) are the empty prompt."""
        assert self.text is not None and self.text_inputs is not None
        empty = self.text_empty.to(x.dtype)
        if not bool(empty.any()):
            raise ValueError("this text-conditioned view's empty prompt (text_empty) is not set")
        if rows is None:
            rows = empty.expand(x.shape[0], -1)
        else:
            rows = torch.where((rows == 0).all(dim=1, keepdim=True), empty, rows.to(x.dtype))
        states, mask, pooled = self.text.unpack(rows)
        inputs = self.text_inputs
        keywords = {inputs.states: states}
        if mask is not None and inputs.mask is not None:
            keywords[inputs.mask] = mask
        if pooled is not None and inputs.pooled is not None:
            keywords[inputs.pooled] = pooled
        return keywords


def _keywords(labels: torch.Tensor | dict | None) -> dict:
    """`diffusers_call`'s labels as the keywords they become."""
    return labels if isinstance(labels, dict) else {} if labels is None else {"class_labels": labels}


def _output_channels(module: torch.nn.Module) -> int:
    """The width of a time-embedding module's output: that of its last linear layer."""
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ValueError(
            f"{type(module).__name__} holds no linear layer to take the guidance embedding's width from"
        )
    return linears[-1].out_features


# ---------------------------------------------------------------------------------------------
# diffusers folders


def load_diffusers(
    folder: str | Path,
    sigma_d: float,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    guidance: bool = False,
    null_class: int | None = None,
    call: Callable[..., torch.Tensor] | None = None,
    seed: int = 0,
    text: TextLayout | None = None,
    text_empty: Any = None,
) -> TrigFlowView:
    """The TrigFlow view of a diffusers model saved on disk (nothing is downloaded): a pipeline
    folder (model_index.json; its unet/ or transformer/ and scheduler/) or a model folder
    (config.json) with its scheduler's scheduler_config.json beside it or in ../scheduler/.

    The weights are checked as they load (`load_model`). What the view adds to the model (its
    logvar head, a guidance embedding) is initialised from `seed`, so one seed gives one view
    whatever torch's global generator holds. A text-conditioned model takes its captions as
    packed rows laid out as `text` says (`configs.TextLayout`, checked against the model's
    config), `text_empty` being the empty prompt's row; or, without `text`, a `call` (model, x_s,
    s, labels) that hands it its text states itself. A scheduler config's clamp of x̂0 while
    sampling (clip_sample, thresholding: `configs.clamping`) has no place in TrigFlow's PF-ODE,
    which the view's samplers and a distilled student follow."""
    found = read_diffusers_folder(folder)
    if found.text_conditioned and call is None and text is None:
        raise ValueError(
            f"{folder}: {found.class_name} is text-conditioned, and neither text= (the layout of its "
            "text conditions) nor call= (a call that hands it its text states) was given"
        )
    return pretrained_view(
        found.class_name, found.model_folder, found.scheduler, sigma_d, device=device, dtype=dtype,
        guidance=guidance, null_class=null_class, call=call or diffusers_call, seed=seed, text=text,
        text_empty=text_empty,
    )  # fmt: skip


def pretrained_view(
    class_name: str,
    weights: str | Path,
    scheduler_config: dict,
    sigma_d: float,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    guidance: bool = False,
    null_class: int | None = None,
    call: Callable[..., torch.Tensor] = diffusers_call,
    seed: int = 0,
    text: TextLayout | None = None,
    text_empty: Any = None,
) -> TrigFlowView:
    """`load_diffusers` from what its folder says, already read (`configs.read_diffusers_folder`):
    the model's class, the model folder holding its weights and the scheduler's config."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        model = load_model(class_name, weights, dtype)
        view = _view(model, scheduler_config, sigma_d, call, guidance, null_class, text, text_empty)
    return view.to(device, dtype)


def diffusers_view(
    class_name: str,
    model_config: dict,
    scheduler_config: dict,
    sigma_d: float,
    *,
    guidance: bool = False,
    null_class: int | None = None,
    text: TextLayout | None = None,
    text_empty: Any = None,
) -> TrigFlowView:
    """The TrigFlow view of the diffusers model `class_name` built from its config, freshly
    initialised (from torch's global generator, as any torch module)."""
    model = model_class(class_name).from_config(model_config)
    return _view(model, scheduler_config, sigma_d, diffusers_call, guidance, null_class, text, text_empty)


def _view(
    model: torch.nn.Module,
    scheduler_config: dict,
    sigma_d: float,
    call: Callable[..., torch.Tensor],
    guidance: bool,
    null_class: int | None,
    text: TextLayout | None,
    text_empty: Any,
) -> TrigFlowView:
    schedule, prediction = schedule_from_config(scheduler_config, dict(model.config))
    edm = edm_preconditioning(scheduler_config)
    if edm is not None:
        call = edm_call(call, *edm)
    view = TrigFlowView(
        model.eval(), schedule, prediction, sigma_d, call=call, guidance=guidance, null_class=null_class,
        text=text,
    )  # fmt: skip
    if text_empty is not None:
        if text is None:
            raise ValueError("text_empty= (the empty prompt's row) needs text= (the layout of the rows)")
        view.text_empty.copy_(torch.as_tensor(text_empty, dtype=torch.float32).reshape(-1))
    return view


def edm_call(
    call: Callable[..., torch.Tensor], sigma_data: float, sign: float
) -> Callable[..., torch.Tensor]:
    """`call` for a model whose scheduler applies EDM's preconditioning (diffusers' EDM
    schedulers: `configs.edm_preconditioning`): (model, x_σ, σ, labels) -> x̂0 = c_skip·x_σ +
    sign·c_out·O, O the model's output at (c_in·x_σ, c_noise = ¼·ln σ)."""

    def preconditioned(
        model: torch.nn.Module, x_sigma: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor | None
    ) -> torch.Tensor:
        shape = (-1,) + (1,) * (x_sigma.ndim - 1)
        c_skip, c_out, c_in, c_noise = convert.edm_preconditioning(sigma, sigma_data)
        out = call(model, c_in.reshape(shape) * x_sigma, c_noise, labels)
        return c_skip.reshape(shape) * x_sigma + sign * c_out.reshape(shape) * out

    return preconditioned


def model_class(class_name: str) -> type:
    """The diffusers model class of a config's `_class_name`."""
    import diffusers

    kind = getattr(diffusers, class_name, None)
    if not (isinstance(kind, type) and issubclass(kind, diffusers.ModelMixin)):
        raise ValueError(f"model config: _class_name {class_name!r} is not a diffusers model class")
    return kind


# the weights files diffusers reads from a model folder, in the order it looks for them
WEIGHTS_FILES = (
    "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin", "diffusion_pytorch_model.bin.index.json",
)  # fmt: skip


def load_model(class_name: str, folder: str | Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The diffusers model saved in `folder`, with its weights checked: a weights file present
    and readable, holding every array the config implies, each of the shape the config implies
    (diffusers itself only warns of missing arrays and leaves them at random). Otherwise a
    ValueError of one line that names the file."""
    import diffusers

    kind, folder = model_class(class_name), Path(folder)
    file = next((folder / name for name in WEIGHTS_FILES if (folder / name).is_file()), None)
    if file is None:
        raise ValueError(f"{folder}: no weights file ({' or '.join(WEIGHTS_FILES[::2])})")
    verbosity = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()  # what is wrong is said below, once
    try:
        model, found = kind.from_pretrained(
            folder, torch_dtype=dtype, local_files_only=True, low_cpu_mem_usage=False,
            ignore_mismatched_sizes=True, output_loading_info=True,
        )  # fmt: skip
    except (OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"{file}: not readable as {class_name} weights ({first_cause(error)})") from None
    finally:
        diffusers.utils.logging.set_verbosity(verbosity)
    if found["mismatched_keys"]:
        key, stored, implied = sorted(found["mismatched_keys"])[0]
        raise ValueError(
            f"{file}: {key} has shape {tuple(stored)}, the config implies {tuple(implied)} "
            f"({len(found['mismatched_keys'])} arrays differ: a config.json from another model?)"
        )
    if found["missing_keys"]:
        missing = sorted(found["missing_keys"])
        raise ValueError(
            f"{file}: lacks {len(missing)} of the arrays the config implies ({', '.join(missing[:3])}"
            f"{', …' if len(missing) > 3 else ''})"
        )
    return model


def first_cause(error: BaseException) -> str:
    """The first line of the error that started a chain (loaders re-raise with less to say)."""
    while error.__cause__ or error.__context__:
        error = error.__cause__ or error.__context__
    return (str(error).strip() or type(error).__name__).splitlines()[0]


# ---------------------------------------------------------------------------------------------
# text conditions: captions through a pipeline's own text encoders


@dataclass(frozen=True)
class PromptEncoder:
    """How a pipeline's own `encode_prompt` is called for a batch of captions (its keywords
    beyond the prompt and the device; the pipeline's own sampling defaults fill the rest), where
    the hidden states, attention mask and pooled projection are in what it returns, and where
    the empty negative prompt's are when it is called with CFG: what its sampler gives the
    unconditional branch (None: the empty caption, encoded as any other)."""

    keywords: dict
    outputs: tuple[int, int | None, int | None] = (0, None, None)
    empty: tuple[int, int | None, int | None] | None = None


_ONCE = {"num_images_per_prompt": 1, "do_classifier_free_guidance": False}
PROMPT_ENCODERS = {
    "StableDiffusionPipeline": PromptEncoder(_ONCE, empty=(1, None, None)),
    "StableDiffusion3Pipeline": PromptEncoder(
        {"prompt_2": None, "prompt_3": None, **_ONCE}, (0, None, 2), empty=(1, None, 3)
    ),
    "SanaPipeline": PromptEncoder(
        {"do_classifier_free_guidance": False, "clean_caption": False}, (0, 1, None), empty=(2, 3, None)
    ),
    "SanaSprintPipeline": PromptEncoder({"clean_caption": False}, (0, 1, None)),  # it takes no CFG
}
DENOISERS = ("unet", "transformer", "vae")  # a pipeline's parts that encoding captions leaves out


def prompt_encoder(
    folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[Callable[[list[str]], tuple], tuple]:
    """(encode, empty): `encode(captions)` gives their (hidden states (N, L, D) float32,
    attention mask (N, L) uint8 or None, pooled projection (N, P) float32 or None), by the
    tokenizers and text encoders of the diffusers pipeline saved in `folder` (nothing is
    downloaded; its denoiser and VAE are not loaded), called as the pipeline calls them when it
    samples (`PROMPT_ENCODERS`); `empty` is the same for its unconditional branch, one row."""
    import inspect

    import diffusers

    index = read_json(Path(folder) / "model_index.json")
    name = index.get("_class_name")
    encoder = PROMPT_ENCODERS.get(name)
    if encoder is None:
        raise ValueError(
            f"{folder}: {name} is not a pipeline whose captions this reader encodes "
            f"({', '.join(PROMPT_ENCODERS)})"
        )
    left_out = {part: None for part in DENOISERS if part in index}
    try:
        pipeline = getattr(diffusers, name).from_pretrained(folder, local_files_only=True, **left_out)
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(
            f"{folder}: the pipeline's text encoders do not load ({first_cause(error)})"
        ) from None
    pipeline.to(device=device, dtype=dtype)
    sampling = inspect.signature(type(pipeline).__call__).parameters
    own = inspect.signature(pipeline.encode_prompt).parameters
    keywords = {k: p.default for k, p in sampling.items() if k in own and p.default is not p.empty}
    keywords |= encoder.keywords | {"device": device}
    keywords.pop("prompt", None)

    def call(captions: list[str], where: tuple[int, int | None, int | None], **extra: Any) -> tuple:
        with torch.no_grad():
            out = pipeline.encode_prompt(list(captions), **keywords | extra)
        states, mask, pooled = (None if i is None else out[i].cpu() for i in where)
        return (
            states.float().numpy(),
            None if mask is None else mask.numpy().astype(np.uint8),
            None if pooled is None else pooled.float().numpy(),
        )

    def encode(captions: list[str]) -> tuple:
        return call(captions, encoder.outputs)

    if encoder.empty is None:
        empty = encode([""])
    else:
        empty = call([""], encoder.empty, do_classifier_free_guidance=True, negative_prompt=[""])
    return encode, empty


# ---------------------------------------------------------------------------------------------
# diffusers' own training and sampling of the model inside a view


class NativeLoss:
    """diffusers' own training loss for the model inside a TrigFlow view, by the family of its
    scheduler config (`configs.schedule_from_config`, with the model's config `model_config`):

    - a DDPM table, as diffusers' `train_unconditional` example: x_k = √ᾱ_k·x0 + √(1 − ᾱ_k)·ε by
      `DDPMScheduler.add_noise` at k ~ U{0, …, N − 1}, and the mean squared error of the
      prediction against its target (ε, x0 or v by the scheduler's prediction type);
    - flow matching, as diffusers' SD3 and Sana DreamBooth examples: u drawn by the density of
      `weighting` (`compute_density_for_timestep_sampling`: "logit_normal", train_dreambooth_sd3's
      default, is sigmoid(N(`logit_mean`, `logit_std`²)); "mode" uses `mode_scale`; "none",
      train_dreambooth_lora_sana's default, and "sigma_sqrt", "cosmap" draw u ~ U[0, 1)), the
      index ⌊u·N⌋ into the training timesteps and σ's of FlowMatchEulerDiscreteScheduler made
      from the config (its shift), x_σ = (1 − σ)·x0 + σ·ε, the model at its own time
      timestep·timestep_scale = σ·N·timestep_scale (the view's `schedule.time`), and the mean
      squared error against the velocity ε − x0, weighted per sample as `weighting` says
      (`compute_loss_weighting_for_sd3`: 1 but for "sigma_sqrt" and "cosmap"). By default
      train_dreambooth_sd3 regresses x̂0 = x_σ − σ·v̂ on x0 instead (`--precondition_outputs`),
      σ² times this loss per sample.

    Labels (one-hot rows, or packed text rows) are dropped with probability `label_dropout`, to
    the "no class" or empty prompt of CFG. Every draw comes from torch's generator of the data's
    device, in this order: ε, then k or u, then the dropout."""

    WEIGHTINGS = ("none", "logit_normal", "mode", "sigma_sqrt", "cosmap")  # diffusers' choices

    def __init__(
        self,
        scheduler_config: dict,
        label_dropout: float = 0.0,
        model_config: dict | None = None,
        weighting: str = "logit_normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        mode_scale: float = 1.29,
    ) -> None:
        from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

        schedule, _ = schedule_from_config(scheduler_config, model_config)
        self.flow = isinstance(schedule, native.RectifiedFlow)
        if not self.flow and not isinstance(schedule, native.DiscreteVP):
            raise ValueError(
                f"diffusers' own training loss is that of a DDPM table or of flow matching, and this "
                f"model's scheduler is {scheduler_config.get('_class_name')}"
            )
        if weighting not in self.WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(self.WEIGHTINGS)}, got {weighting!r}")
        scheduler = FlowMatchEulerDiscreteScheduler if self.flow else DDPMScheduler
        self.scheduler = scheduler.from_config(scheduler_config)
        self.time_scale = _time_scale(schedule, scheduler_config)
        self.label_dropout, self.weighting = label_dropout, weighting
        self.logit_mean, self.logit_std, self.mode_scale = logit_mean, logit_std, mode_scale

    def __call__(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        from .steps import drop_labels

        x0 = batch["x0"]
        noise = torch.randn_like(x0)
        noisy, time, target, weight = (self._flow if self.flow else self._ddpm)(x0, noise)
        labels = drop_labels(batch.get("labels"), self.label_dropout)
        prediction = model(noisy, time, labels, native_call=True)
        if weight is None:
            loss = F.mse_loss(prediction.float(), target.float())
        else:
            loss = (weight * (prediction.float() - target.float()) ** 2).mean()
        return loss, {"loss": loss.detach()}

    def _ddpm(self, x0: torch.Tensor, noise: torch.Tensor) -> tuple:
        """(x_k, k, the prediction's target, no weight) at k ~ U{0, …, N − 1}."""
        k = torch.randint(0, self.scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
        target = {
            "epsilon": noise,
            "sample": x0,
            "v_prediction": self.scheduler.get_velocity(x0, noise, k),
        }[self.scheduler.config.prediction_type]
        return self.scheduler.add_noise(x0, noise, k), k, target, None

    def _flow(self, x0: torch.Tensor, noise: torch.Tensor) -> tuple:
        """(x_σ, the model's time, the velocity ε − x0, the per-sample weight) at u drawn by the
        density of `weighting`."""
        from diffusers.training_utils import compute_density_for_timestep_sampling as density
        from diffusers.training_utils import compute_loss_weighting_for_sd3 as loss_weighting

        u = density(
            self.weighting, x0.shape[0], self.logit_mean, self.logit_std, self.mode_scale, device=x0.device
        )
        index = (u * self.scheduler.config.num_train_timesteps).long()
        timesteps = self.scheduler.timesteps.to(x0.device)[index]
        shape = (-1,) + (1,) * (x0.ndim - 1)
        sigmas = self.scheduler.sigmas.to(x0.device, x0.dtype)[index].reshape(shape)
        weight = loss_weighting(self.weighting, sigmas).float()
        return (1 - sigmas) * x0 + sigmas * noise, timesteps * self.time_scale, noise - x0, weight


def _time_scale(schedule: native.Schedule, scheduler_config: dict) -> float:
    """The factor from a scheduler's timesteps to the model's own time: 1 for a DDPM table's
    index; a flow model's timestep_scale, its schedule's scale being N·timestep_scale (as
    SanaPipeline multiplies the timesteps by it)."""
    if isinstance(schedule, native.RectifiedFlow):
        return schedule.scale / int(scheduler_config.get("num_train_timesteps", 1000))
    return 1.0


# the settings of a flow sampler whose class differs from the model's scheduler: only the shift
# carries over (diffusers' multistep solvers sample flow matching when told so)
FLOW_SETTINGS: dict[str, Callable[[float], dict]] = {
    "FlowMatchEulerDiscreteScheduler": lambda shift: {"shift": shift},
    "DPMSolverMultistepScheduler": lambda shift: {
        "use_flow_sigmas": True,
        "prediction_type": "flow_prediction",
        "flow_shift": shift,
    },
}


def sample_native(
    view: TrigFlowView,
    scheduler_config: dict,
    sampler: str,
    steps: int,
    z: torch.Tensor,
    class_labels: torch.Tensor | None = None,
    guidance: float = 1.0,
) -> torch.Tensor:
    """Samples of the model inside `view` by one of diffusers' own schedulers
    (`configs.NATIVE_SAMPLERS`: of a DDPM table DDIM with η = 0 and DPM-Solver++(2M), of flow
    matching FlowMatchEulerDiscreteScheduler and DPM-Solver++(2M) on flow sigmas) in `steps`
    steps, configured from the model's scheduler config (a flow sampler of another class than
    it is given its shift alone: FLOW_SETTINGS), with CFG on the prediction at `guidance`. They
    start from the TrigFlow start z ~ σ_d·N(0, I), natively z/σ_d·init_noise_sigma (unit noise
    for flow matching, whose schedulers have none); a flow model takes the scheduler's timesteps
    times its timestep_scale, as its pipeline gives them. The samples are the native x at k = 0
    or σ = 0: x0, in the data's units."""
    import diffusers

    name = native_sampler(sampler, view.schedule, scheduler_config)
    config = scheduler_config
    if isinstance(view.schedule, native.RectifiedFlow) and scheduler_config.get("_class_name") != name:
        shift = float(scheduler_config.get("shift", scheduler_config.get("flow_shift", 1.0)))
        steps_trained = scheduler_config.get("num_train_timesteps", 1000)
        config = {"num_train_timesteps": steps_trained} | FLOW_SETTINGS[name](shift)
    scheduler = getattr(diffusers, name).from_config(config)
    scheduler.set_timesteps(steps, device=z.device)
    scale = _time_scale(view.schedule, scheduler_config)
    x = z / view.sigma_d * getattr(scheduler, "init_noise_sigma", 1.0)
    null = None if class_labels is None or guidance == 1 else torch.zeros_like(class_labels)
    with torch.no_grad():
        for k in scheduler.timesteps:
            # flow matching's Euler scheduler leaves the model's input as it is (it has no such method)
            x_in = scheduler.scale_model_input(x, k) if hasattr(scheduler, "scale_model_input") else x
            s = k if scale == 1 else k * scale
            prediction = view(x_in, s, class_labels, native_call=True)
            if null is not None:
                unconditional = view(x_in, s, null, native_call=True)
                prediction = unconditional + guidance * (prediction - unconditional)
            x = scheduler.step(prediction, k, x).prev_sample
    return x


def native_model(view: TrigFlowView, guidance: float = 1.0) -> torch.nn.Module:
    """A copy of the model inside `view`, for use without it (export): a student's guidance
    embedding at the scale `guidance` is a constant vector added to its time embedding's output,
    so it is folded into the bias of that embedding's last linear layer, and the copy's outputs
    are checked against the view's. A model with its own guidance input (`GUIDANCE_INPUTS`)
    keeps it, and is copied as it is."""
    model = copy.deepcopy(view.model)
    if view.guidance_input is not None:  # the scale stays the model's input
        if guidance != 1.0:
            raise ValueError(
                f"{type(model).__name__} takes its CFG scale as an input ({view.guidance_input.keyword}=) "
                f"when it samples, so none is folded into it (got {guidance})"
            )
        return model
    if view.emb_guidance is None:
        if guidance != 1.0:
            raise ValueError(f"this view takes no guidance scale, so none can be folded in (got {guidance})")
        return model
    copied = copy.deepcopy(view)
    where = time_embedding(copied.model)
    assert where is not None
    last = [m for m in where.modules() if isinstance(m, torch.nn.Linear)][-1]
    parameter = next(view.parameters())
    scale = torch.full((1,), guidance, dtype=parameter.dtype, device=parameter.device)
    with torch.no_grad():
        last.bias += copied.emb_guidance(scale).reshape(-1)
        copied.emb_guidance = None
        # the folded model against the view, on a probe input at a few times
        generator = torch.Generator().manual_seed(0)
        shape = (3, *_sample_shape(model))
        u = torch.randn(shape, generator=generator).to(parameter)
        t = torch.tensor([0.3, 0.9, 1.4]).to(parameter)
        labels = None
        if view.null_class is not None or getattr(model.config, "num_class_embeds", None):
            classes = int(model.config.num_class_embeds)
            labels = torch.eye(classes).to(parameter)[:3]
        expected = view(u, t, labels, torch.full((3,), guidance).to(parameter))
        got = copied(u, t, labels)
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max())):
        raise ValueError(
            f"{type(model).__name__}: its time embedding is not followed by a plain linear layer, so the "
            "guidance embedding cannot be folded into it"
        )
    return copied.model


@dataclass(frozen=True)
class FewStepPipeline:
    """diffusers' few-step pipeline for a student's architecture: its class, the parts of the
    teacher's pipeline it takes as they are, and the time its model must read: it feeds the
    model σ·`time_scale`, σ in [0, 1] the flow-matching noise level of the latents (of unit
    scale) at the TrigFlow time it samples."""

    name: str
    copied: tuple[str, ...]
    time_scale: float


# SanaSprintPipeline feeds s = sin t/(sin t + cos t) with its SCMScheduler's t (README: export)
FEW_STEP_PIPELINES = {
    "SanaTransformer2DModel": FewStepPipeline("SanaSprintPipeline", ("tokenizer", "text_encoder", "vae"), 1.0)
}


def few_step_pipeline(view: TrigFlowView, teacher: Path) -> tuple[FewStepPipeline | None, str]:
    """The few-step pipeline a student exports to (FEW_STEP_PIPELINES) from the folder of its
    teacher, or None and why not."""
    name = type(view.model).__name__
    pipeline = FEW_STEP_PIPELINES.get(name)
    if pipeline is None:
        return None, f"diffusers has no few-step pipeline for {name} that this export writes"
    if not (teacher / "model_index.json").exists():
        parts = ", ".join(pipeline.copied)
        return None, f"{pipeline.name} takes the teacher's {parts}, and {teacher} is not a pipeline"
    scale = getattr(view.schedule, "scale", None)
    if scale is None or not math.isclose(scale, pipeline.time_scale, rel_tol=1e-9):
        return None, (
            f"{pipeline.name} feeds the model σ·{pipeline.time_scale:g} (σ in [0, 1]) and this one reads "
            f"σ·{scale:g}: a teacher whose scheduler's timesteps times its timestep_scale give σ·"
            f"{pipeline.time_scale:g} (e.g. Sana with timestep_scale = 1/num_train_timesteps) exports to it"
        )
    return pipeline, ""


def _sample_shape(model: torch.nn.Module) -> tuple[int, int, int]:
    """(channels, height, width) of the samples a diffusers model was configured for."""
    config = model.config
    size = config.sample_size if isinstance(config.sample_size, int) else tuple(config.sample_size)
    height, width = (size, size) if isinstance(size, int) else size
    return int(config.in_channels), int(height), int(width)
