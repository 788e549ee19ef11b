"""The tiny text-to-image pipelines of tests/text_pipelines.py: each folder reloads through
`DiffusionPipeline.from_pretrained` with the network refused, its tokenizers give the ids they
gave before saving, `encode_prompt` returns the shapes the configs imply, and two sampling steps
at the smallest image size give finite latents and images."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

from text_pipelines import (  # noqa: E402
    BUILDERS,
    CLIP_G_WIDTH,
    CLIP_LENGTH,
    CLIP_WIDTH,
    GEMMA_WIDTH,
    PROMPT,
    SIZE,
    T5_WIDTH,
    WORDS,
    clip_tokenizer,
    gemma_tokenizer,
    sd3,
    stable_diffusion,
    t5_tokenizer,
)

KINDS = list(BUILDERS)
PROMPTS = [PROMPT, ""]
PIPELINES = {
    "stable_diffusion": "StableDiffusionPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "sana": "SanaPipeline",
    "sana_sprint": "SanaSprintPipeline",
}
# each tokenizer's tokens for PROMPT: the words whole, with the model's own markers
TOKENS = {
    "clip": ["<|startoftext|>", "a</w>", "handwritten</w>", "seven</w>", "<|endoftext|>"],
    "t5": ["▁a", "▁handwritten", "▁seven", "</s>"],
    "gemma": ["<bos>", "a", "▁handwritten", "▁seven"],
}
# a text with words outside the vocabulary, capitals, digits and punctuation
ODD = "Seven, 7 zebras: the NUMBER eight!"
T5_LENGTH = 256  # StableDiffusion3Pipeline's default max_sequence_length
GEMMA_LENGTH = 300  # Sana's


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connection attempt fails, so a test that reads the network fails too."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("the network was used")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """kind -> its folder, built once for the module (inside the first test that asks)."""
    folders: dict[str, Path] = {}

    def folder(kind: str) -> Path:
        if kind not in folders:
            folders[kind] = BUILDERS[kind](tmp_path_factory.mktemp(kind))
        return folders[kind]

    return folder


def load(folder: Path, **components: object) -> diffusers.DiffusionPipeline:
    """The pipeline in `folder`, from the files alone (`components` passed to from_pretrained)."""
    pipe = diffusers.DiffusionPipeline.from_pretrained(folder, local_files_only=True, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tokenizers(kind: str) -> dict[str, tuple[str, object]]:
    """The pipeline's tokenizer components: name -> (kind of tokenizer, the same built afresh)."""
    if kind == "stable_diffusion":
        return {"tokenizer": ("clip", clip_tokenizer())}
    if kind == "sd3":
        return {
            "tokenizer": ("clip", clip_tokenizer()),
            "tokenizer_2": ("clip", clip_tokenizer()),
            "tokenizer_3": ("t5", t5_tokenizer()),
        }
    return {"tokenizer": ("gemma", gemma_tokenizer())}


@pytest.mark.parametrize("kind", ["clip", "t5", "gemma"])
def test_each_tokenizer_keeps_the_words_whole_and_spells_out_the_rest(kind: str) -> None:
    """Each word of WORDS is one token, first in a text or after a space; a text with other
    words, capitals, digits and punctuation gives more tokens than words, all in the vocabulary."""
    tokenizer = {"clip": clip_tokenizer, "t5": t5_tokenizer, "gemma": gemma_tokenizer}[kind]()
    assert tokenizer.convert_ids_to_tokens(tokenizer(PROMPT).input_ids) == TOKENS[kind]
    for word in WORDS:
        alone, after = tokenizer.tokenize(word), tokenizer.tokenize("a " + word)
        assert len(alone) == 1 and len(after) == 2, (word, alone, after)
    ids = tokenizer(ODD).input_ids
    assert len(ids) > len(ODD.split()) + 1  # spelled out, not dropped
    assert max(ids) < len(tokenizer)  # within the text model's embedding


@pytest.mark.parametrize("kind", KINDS)
def test_a_folder_reloads_offline_with_the_same_tokenizers(kind: str, saved: Callable[[str], Path]) -> None:
    """DiffusionPipeline.from_pretrained reads model_index.json and finds the pipeline's class;
    each tokenizer from its folder gives the ids the one built in memory gives."""
    pipe = load(saved(kind))
    assert type(pipe).__name__ == PIPELINES[kind]
    concrete = getattr(diffusers, PIPELINES[kind]).from_pretrained(saved(kind), local_files_only=True)
    assert type(concrete) is type(pipe)
    for name, (tokenizer_kind, fresh) in tokenizers(kind).items():
        loaded = getattr(pipe, name)
        assert type(loaded) is type(fresh), name
        ids = loaded(PROMPT).input_ids
        assert ids == fresh(PROMPT).input_ids, name
        assert loaded.convert_ids_to_tokens(ids) == TOKENS[tokenizer_kind], name
        assert loaded(ODD).input_ids == fresh(ODD).input_ids, name
        assert loaded.model_max_length == fresh.model_max_length, name


@pytest.mark.parametrize("kind", KINDS)
def test_encode_prompt_gives_the_shapes_the_configs_imply(kind: str, saved: Callable[[str], Path]) -> None:
    """For ["a handwritten seven", ""], guided:
    SD: (states, negative states), 16 CLIP tokens × CLIP_WIDTH, no mask, nothing pooled;
    SD3: (states, negative states, pooled, negative pooled), 16 CLIP + 256 T5 tokens × T5's width
    (the two CLIP states side by side, 16 + 24, padded with zeros to it), pooled 16 + 24;
    Sana: (states, mask, negative states, negative mask), 300 Gemma tokens, the mask counting
    <bos> and the words (right-padded); Sana-Sprint, unguided: (states, mask)."""
    pipe = load(saved(kind))
    with torch.no_grad():
        if kind == "stable_diffusion":
            out = pipe.encode_prompt(PROMPTS, "cpu", 1, True)
            shapes = [(2, CLIP_LENGTH, CLIP_WIDTH)] * 2
            assert pipe.unet.config.cross_attention_dim == CLIP_WIDTH
        elif kind == "sd3":
            out = pipe.encode_prompt(PROMPTS, None, None)
            states, pooled = (2, CLIP_LENGTH + T5_LENGTH, T5_WIDTH), (2, CLIP_WIDTH + CLIP_G_WIDTH)
            shapes = [states, states, pooled, pooled]
            assert (
                pipe.transformer.config.joint_attention_dim,
                pipe.transformer.config.pooled_projection_dim,
            ) == (
                states[-1],
                pooled[-1],
            )
            clip_part = out[0][:, :CLIP_LENGTH]
            assert bool((clip_part[..., CLIP_WIDTH + CLIP_G_WIDTH :] == 0).all())  # the padding
            assert bool((clip_part[..., : CLIP_WIDTH + CLIP_G_WIDTH].abs().sum(-1) > 0).all())
        else:
            out = pipe.encode_prompt(PROMPTS)
            states, mask = (2, GEMMA_LENGTH, GEMMA_WIDTH), (2, GEMMA_LENGTH)
            shapes = [states, mask] * (2 if kind == "sana" else 1)
            assert pipe.transformer.config.caption_channels == GEMMA_WIDTH
            assert out[1].sum(-1).tolist() == [4, 1]  # <bos> a ▁handwritten ▁seven; <bos>
            assert bool(out[1][0, :4].all())
            if kind == "sana":
                assert out[3].sum(-1).tolist() == [1, 1]
    assert [tuple(o.shape) for o in out] == shapes
    assert all(bool(torch.isfinite(o.float()).all()) for o in out)


@pytest.mark.parametrize("output_type", ["latent", "pt"])
@pytest.mark.parametrize("kind", KINDS)
def test_two_steps_at_the_smallest_size_give_finite_samples(
    kind: str, output_type: str, saved: Callable[[str], Path]
) -> None:
    """Two steps with guidance at SIZE[kind] pixels (Sana without resolution binning, with
    its default long "complex human instruction" before the prompt): 4×8×8 latents, or
    images decoded by the VAE."""
    pipe = load(saved(kind))
    size = SIZE[kind]
    options = {"use_resolution_binning": False} if kind.startswith("sana") else {}
    with torch.no_grad():
        out = pipe(
            PROMPTS, num_inference_steps=2, height=size, width=size, output_type=output_type,
            generator=torch.Generator().manual_seed(0), **options,
        ).images  # fmt: skip
    assert tuple(out.shape) == ((2, 4, 8, 8) if output_type == "latent" else (2, 3, size, size))
    assert bool(torch.isfinite(out).all())
    assert float(out.std()) > 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_build_is_reproducible_and_leaves_torchs_generator_alone(kind: str, tmp_path: Path) -> None:
    """Built twice with the same seed the weights are the same, with another seed not; the
    caller's random state is as it was."""
    BUILDERS[kind](tmp_path / "first")
    state = torch.get_rng_state()
    BUILDERS[kind](tmp_path / "again")
    assert torch.equal(torch.get_rng_state(), state)
    BUILDERS[kind](tmp_path / "other", seed=1)
    denoiser = "unet" if kind == "stable_diffusion" else "transformer"

    def weights(name: str) -> bytes:
        return (tmp_path / name / denoiser / "diffusion_pytorch_model.safetensors").read_bytes()

    assert weights("first") == weights("again") != weights("other")


def test_sd3_without_t5_feeds_zeros_in_its_place(tmp_path: Path) -> None:
    """`sd3(folder, t5=False)`: text_encoder_3 and tokenizer_3 None. diffusers saves no entry
    for them, so from_pretrained wants them passed as None (without, it refuses the folder);
    the pipeline then encodes the 256 T5 positions as zeros of the joint width."""
    folder = sd3(tmp_path, t5=False)
    with pytest.raises(ValueError, match="expected"):
        load(folder)
    pipe = load(folder, text_encoder_3=None, tokenizer_3=None)
    assert pipe.text_encoder_3 is None and pipe.tokenizer_3 is None
    with torch.no_grad():
        states, _, pooled, _ = pipe.encode_prompt(PROMPTS, None, None)
        latents = pipe(PROMPTS, num_inference_steps=2, height=8, width=8, output_type="latent").images
    assert tuple(states.shape) == (2, CLIP_LENGTH + T5_LENGTH, T5_WIDTH)
    assert bool((states[:, CLIP_LENGTH:] == 0).all())
    assert tuple(pooled.shape) == (2, CLIP_WIDTH + CLIP_G_WIDTH)
    assert bool(torch.isfinite(latents).all())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_stable_diffusions_scheduler_predicts_what_it_was_told(prediction_type: str, tmp_path: Path) -> None:
    pipe = load(stable_diffusion(tmp_path, prediction_type=prediction_type))
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.scheduler.config.prediction_type == prediction_type
    assert pipe.safety_checker is None and pipe.feature_extractor is None
