"""Tiny text-to-image diffusers pipelines for tests, built offline: randomly initialised models
from configs, tokenizers from vocabularies written here, each saved with `save_pretrained` into
a folder that `DiffusionPipeline.from_pretrained(folder)` reads back without the network.

One function per kind, `kind(folder, seed=0) -> folder`: `stable_diffusion` (a CLIP text
model, a cross-attention U-Net), `sd3` (two CLIP text models with projections and a T5
encoder, an MM-DiT), `sana` and `sana_sprint` (a Gemma 2 decoder, a linear-attention DiT, a
DC-AE). The models are seeded inside `torch.random.fork_rng`, so the caller's random state is
untouched. At `SIZE[kind]` pixels a side each pipeline samples 4×8×8 latents, the denoisers'
`sample_size`.

The tokenizers know the lower-case letters and, whole, the words of `WORDS` ("a handwritten
seven" is three tokens in each); anything else is spelled out (CLIP and T5: letter by letter,
unknown characters as the unknown token; Gemma: by its byte fallback). They are built through
the tokenizer classes' own constructors from a vocabulary and merges (a unigram table for
T5) in memory, the way `from_pretrained` rebuilds them from tokenizer.json, so a saved one
reloads the same. The builders read nothing, from disk or the network.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the imports of torch, transformers and diffusers wait for the first build
    from transformers import CLIPTokenizer, GemmaTokenizer, T5Tokenizer

PROMPT = "a handwritten seven"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
# words the tokenizers keep whole
WORDS = (
    "a", "handwritten", "digit", "number", "the", "of", "photo",
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)  # fmt: skip

# the text states' lengths and widths (SD3's all differ, so that a shape there names its source)
CLIP_LENGTH = 16  # tokens per CLIP caption: the tokenizers' model_max_length, the models' positions
CLIP_WIDTH = 16  # CLIP(-L)'s hidden size and projection: SD's cross_attention_dim
CLIP_G_WIDTH = 24  # SD3's second CLIP ("G")
T5_WIDTH = 48  # SD3's joint_attention_dim: the CLIP states (16 + 24 features) are padded to it
GEMMA_WIDTH = 16  # Sana's caption_channels
# the image side that gives 8×8 latents: the smallest SD takes (a multiple of 8; its VAE here
# does not downsample) and Sana (a multiple of 32; its DC-AE here compresses 4×); SD3 wants a
# multiple of the VAE's factor (1) times the patch (2), and samples 2×2 pixels as well
SIZE = {"stable_diffusion": 8, "sd3": 8, "sana": 32, "sana_sprint": 32}


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's CPU generator seeded with `seed` inside the block, restored after it."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def spelled(words: Iterable[str], start: str = "", end: str = "") -> tuple[list[str], list[tuple[str, str]]]:
    """The tokens and BPE merges that join each word (between the markers `start` and `end`)
    from its characters, left to right: (w[:k], w[k]) → w[:k + 1]. The vocabulary must hold the
    single characters (with `end` on the last one) besides the tokens returned."""
    tokens: dict[str, None] = {}
    merges: dict[tuple[str, str], None] = {}
    for word in words:
        pieces = [start, *word] if start else list(word)
        pieces[-1] += end
        joined = pieces[0]
        for piece in pieces[1:]:
            merges[joined, piece] = None
            joined += piece
            tokens[joined] = None
    return list(tokens), list(merges)


def clip_tokenizer() -> CLIPTokenizer:
    """CLIP's byte-level BPE ("</w>" ends a word), lower-casing, its start and end tokens last
    in the vocabulary as in CLIP's own (so the text model's pooled output, at the first end
    token, finds them by id); padded with the end token to `CLIP_LENGTH`."""
    from transformers import CLIPTokenizer

    words, merges = spelled(WORDS, end="</w>")
    tokens = [*LETTERS, *(c + "</w>" for c in LETTERS), *words, "<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_LENGTH)


def t5_tokenizer() -> T5Tokenizer:
    """T5's unigram model: <pad> = 0, </s> = 1, <unk> = 2, every word starting with "▁", a whole
    word (log-probability −1) beating its letters (−3 each); </s> appended; no sentinel tokens."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [(c, -3.0) for c in LETTERS] + [("▁" + word, -1.0) for word in WORDS]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=256)


def gemma_tokenizer() -> GemmaTokenizer:
    """Gemma's BPE: its special tokens first (<pad> = 0, <eos> = 1, <bos> = 2, <unk> = 3,
    <mask> = 4), the byte-fallback tokens <0x00> … <0xFF>, "▁" for a space; <bos> begins every
    text. A word after a space is one "▁word" token; the merges that make those rank first, so
    the first word's (no "▁") cannot split them."""
    from transformers import GemmaTokenizer

    after_space, after_space_merges = spelled(WORDS, start="▁")
    first, first_merges = spelled(WORDS)
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *(f"<0x{b:02X}>" for b in range(256))]
    tokens += ["▁", *LETTERS, *after_space, *first]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    return GemmaTokenizer(vocab=vocab, merges=after_space_merges + first_merges, add_bos_token=True)


def clip_text_model(tokenizer: CLIPTokenizer, width: int, projection: bool = False) -> Any:
    """A 2-layer CLIP text transformer (2 heads) of `width` features over the tokenizer's
    vocabulary; with `projection`, CLIPTextModelWithProjection whose text_embeds have `width`
    features too (SD3's pooled inputs)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, projection_dim=width,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=CLIP_LENGTH,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def autoencoder_kl(**config: Any) -> Any:
    """An AutoencoderKL of one 8-channel block (no downsampling: latents as large as the image),
    4 latent channels."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=8, **config,
    ).eval()  # fmt: skip


def autoencoder_dc() -> Any:
    """An AutoencoderDC of three blocks (8, 16, 16 channels; the last an EfficientViT block with
    multi-scale linear attention, as in DC-AE's deep stages): 4× spatial compression, 4 latent
    channels, DC-AE-f32c32-sana-1.1's scaling factor."""
    from diffusers import AutoencoderDC

    return AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=8,
        encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 16, 16), decoder_block_out_channels=(8, 16, 16),
        encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
        encoder_qkv_multiscales=((), (), (5,)), decoder_qkv_multiscales=((), (), (5,)),
        downsample_block_type="conv", upsample_block_type="interpolate", scaling_factor=0.41407,
    ).eval()  # fmt: skip


def gemma_text_model(tokenizer: GemmaTokenizer) -> Any:
    """A 1-layer Gemma 2 decoder (Sana's text encoder is `Gemma2Model`, the decoder without its
    language-model head): `GEMMA_WIDTH` features, 2 query heads of 8 sharing 1 key-value head."""
    from transformers import Gemma2Config, Gemma2Model

    config = Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=GEMMA_WIDTH, intermediate_size=2 * GEMMA_WIDTH,
        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
        query_pre_attn_scalar=8, max_position_embeddings=2048, use_cache=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    return Gemma2Model(config).eval()


def stable_diffusion(folder: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """StableDiffusionPipeline: a CLIP text model (`CLIP_WIDTH` features, `CLIP_LENGTH` tokens),
    a 2-level cross-attention UNet2DConditionModel on 4×8×8 latents, `autoencoder_kl`, and
    DDIMScheduler on SD's table (scaled-linear β from 0.00085 to 0.012) predicting
    `prediction_type`; no safety checker. Saved into `folder`, which is returned."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = clip_tokenizer()
    with seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=CLIP_WIDTH, norm_num_groups=8, attention_head_dim=8,
        )  # fmt: skip
        text_encoder = clip_text_model(tokenizer, CLIP_WIDTH)
        vae = autoencoder_kl()
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
    )  # fmt: skip
    StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet.eval(), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(folder)  # fmt: skip
    return Path(folder)


def sd3(folder: Path, seed: int = 0, t5: bool = True) -> Path:
    """StableDiffusion3Pipeline: CLIP-L (`CLIP_WIDTH`) and CLIP-G (`CLIP_G_WIDTH`) with
    projections, a 1-layer T5 v1.1 encoder (`T5_WIDTH`, gated GELU), an SD3Transformer2DModel
    on 4×8×8 latents in 2×2 patches whose joint_attention_dim is T5's width and whose
    pooled_projection_dim is the two CLIP projections side by side (16 + 24 = 40),
    `autoencoder_kl` with SD3's shift and scale, and FlowMatchEulerDiscreteScheduler (shift 3,
    as SD3's). Without `t5` the T5 encoder and its tokenizer are None (the pipeline then feeds
    zeros in T5's place); diffusers saves no entry for them, so that folder loads only with
    `from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)`. Saved into `folder`, which
    is returned."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import T5Config, T5EncoderModel

    tokenizer, tokenizer_2, tokenizer_3 = clip_tokenizer(), clip_tokenizer(), t5_tokenizer() if t5 else None
    with seeded(seed):
        transformer = SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=T5_WIDTH, caption_projection_dim=16,
            pooled_projection_dim=CLIP_WIDTH + CLIP_G_WIDTH, out_channels=4, pos_embed_max_size=16,
        ).eval()  # fmt: skip
        text_encoder = clip_text_model(tokenizer, CLIP_WIDTH, projection=True)
        text_encoder_2 = clip_text_model(tokenizer_2, CLIP_G_WIDTH, projection=True)
        text_encoder_3 = None
        if tokenizer_3 is not None:
            config = T5Config(
                vocab_size=len(tokenizer_3), d_model=T5_WIDTH, d_kv=8, d_ff=2 * T5_WIDTH, num_layers=1,
                num_heads=2, relative_attention_num_buckets=8, relative_attention_max_distance=32,
                feed_forward_proj="gated-gelu", pad_token_id=tokenizer_3.pad_token_id,
                eos_token_id=tokenizer_3.eos_token_id, decoder_start_token_id=tokenizer_3.pad_token_id,
            )  # fmt: skip
            text_encoder_3 = T5EncoderModel(config).eval()
        vae = autoencoder_kl(
            shift_factor=0.0609, scaling_factor=1.5305, use_quant_conv=False, use_post_quant_conv=False
        )
    StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
    ).save_pretrained(folder)  # fmt: skip
    return Path(folder)


def sana_transformer(**config: Any) -> Any:
    """A 1-layer SanaTransformer2DModel on 4×8×8 latents, patch 1: 2 linear-attention heads of
    8, 2 cross-attention heads of 8 over the Gemma states (`GEMMA_WIDTH`), Sana's norms."""
    from diffusers import SanaTransformer2DModel

    return SanaTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16,  # 2 × 8
        caption_channels=GEMMA_WIDTH, sample_size=8, patch_size=1, mlp_ratio=2.5, attention_bias=False,
        norm_elementwise_affine=False, norm_eps=1e-6, **config,
    ).eval()  # fmt: skip


def sana(folder: Path, seed: int = 0, **transformer: Any) -> Path:
    """SanaPipeline: `gemma_text_model`, `sana_transformer` (with the settings `transformer`),
    `autoencoder_dc`, and Sana's scheduler as its conversion script writes it:
    DPMSolverMultistepScheduler on flow sigmas (prediction_type "flow_prediction",
    use_flow_sigmas, flow_shift 3). Saved into `folder`, which is returned."""
    from diffusers import DPMSolverMultistepScheduler, SanaPipeline

    tokenizer = gemma_tokenizer()
    with seeded(seed):
        text_encoder, transformer = gemma_text_model(tokenizer), sana_transformer(**transformer)
        vae = autoencoder_dc()
    scheduler = DPMSolverMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    SanaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    ).save_pretrained(folder)
    return Path(folder)


def sana_sprint(folder: Path, seed: int = 0) -> Path:
    """SanaSprintPipeline: Sana's parts with a transformer that embeds the guidance scale and
    normalises queries and keys across heads (as Sana-Sprint's), and SCMScheduler (TrigFlow,
    σ_d = 0.5). Saved into `folder`, which is returned."""
    from diffusers import SanaSprintPipeline, SCMScheduler

    tokenizer = gemma_tokenizer()
    with seeded(seed):
        text_encoder, vae = gemma_text_model(tokenizer), autoencoder_dc()
        transformer = sana_transformer(guidance_embeds=True, qk_norm="rms_norm_across_heads")
    scheduler = SCMScheduler(num_train_timesteps=1000, prediction_type="trigflow", sigma_data=0.5)
    SanaSprintPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    ).save_pretrained(folder)
    return Path(folder)


BUILDERS = {"stable_diffusion": stable_diffusion, "sd3": sd3, "sana": sana, "sana_sprint": sana_sprint}
