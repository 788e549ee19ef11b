"""Softmax attention and its JVP in one fused Triton kernel (App. F).

Each program takes a block of query rows and walks the keys in blocks, as FlashAttention does,
carrying per row the running max m, ℓ = Σe^{x−m}, μ = Σe^{x−m}·t_x and two accumulators:
f = e^{x−m}·V for the output and h = (e^{x−m} ⊙ t_x)·V + e^{x−m}·t_V for its tangent. h is the
paper's g plus f_t: both are rescaled by the same e^{m_old−m_new}, so one accumulator holds them.
At the end y = f/ℓ and t_y = h/ℓ − (μ/ℓ)·y. The L×L scores are never stored; the six products
per key block (q·kᵀ, t_q·kᵀ, q·t_kᵀ, p·V, (p ⊙ t_x)·V, p·t_V) are 12·L_q·L_k·d FLOPs per head.

Inputs are (batch, heads, length, head_dim) in float16, bfloat16 or float32; the products
accumulate in float32 (float32 inputs multiply in full precision, not TF32). On CPU tensors the
kernel runs only under Triton's interpreter (`TRITON_INTERPRET=1` set before this module is
imported), which is how the tests run it.

>>> import torch
>>> q, k, v = (torch.randn(1, 2, 5, 32, device=DEVICE) for _ in range(3))
>>> y, t_y, lse = flash_attention_jvp(q, k, v, q, k, v)
>>> y_ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
>>> bool(torch.allclose(y, y_ref, atol=1e-5)), tuple(t_y.shape), tuple(lse.shape)
(True, (1, 2, 5, 32), (1, 2, 5))
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from backends.configs import check_kernel_inputs

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICE = "cpu" if INTERPRETED else "cuda"  # where the kernel runs (the doctest's device)

LOG2E = tl.constexpr(1.4426950408889634)  # the kernel exponentiates base 2: e^x = 2^{x·log₂e}


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr, WIDEN: tl.constexpr):  # type: ignore[no-untyped-def]
    if WIDEN:  # Triton's interpreter multiplies bfloat16 tiles as raw bits; a product of two
        # bfloat16 values is exact in float32, so widening first gives the same float32 sums
        a, b = a.to(tl.float32), b.to(tl.float32)
    return tl.dot(a, b, acc=acc, input_precision=PRECISION)


@triton.jit
def _flash_jvp_kernel(
    Q, K, V, TQ, TK, TV, KEEP, Y, TY, LSE,
    scale, L_q, L_k, D, D_V, H,
    HAS_MASK: tl.constexpr, PRECISION: tl.constexpr, WIDEN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(1).to(tl.int64)  # (batch, head) pair; tensors are contiguous (B, H, L, d)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims, dims_v = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    row_ok = rows < L_q
    at_q = bh * L_q * D + rows[:, None] * D + dims[None, :]
    q_ok = row_ok[:, None] & (dims[None, :] < D)
    q = tl.load(Q + at_q, mask=q_ok, other=0.0)
    tq = tl.load(TQ + at_q, mask=q_ok, other=0.0)

    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # running max, in log₂ units
    ell = tl.zeros((BLOCK_M,), tl.float32)  # Σ e^{x−m}
    mu = tl.zeros((BLOCK_M,), tl.float32)  # Σ e^{x−m}·t_x
    f = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)  # e^{x−m}·V
    h = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)  # (e^{x−m} ⊙ t_x)·V + e^{x−m}·t_V
    for start in range(0, L_k, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        key_ok = keys < L_k
        if HAS_MASK:
            key_ok &= tl.load(KEEP + (bh // H) * L_k + keys, mask=key_ok, other=0) != 0
        at_k = bh * L_k * D + keys[:, None] * D + dims[None, :]
        at_v = bh * L_k * D_V + keys[:, None] * D_V + dims_v[None, :]
        k_ok = (keys[:, None] < L_k) & (dims[None, :] < D)
        v_ok = (keys[:, None] < L_k) & (dims_v[None, :] < D_V)
        k = tl.load(K + at_k, mask=k_ok, other=0.0)
        tk = tl.load(TK + at_k, mask=k_ok, other=0.0)
        v = tl.load(V + at_v, mask=v_ok, other=0.0)
        tv = tl.load(TV + at_v, mask=v_ok, other=0.0)

        # scores x = scale·q·kᵀ (in log₂ units) and their tangents t_x = scale·(t_q·kᵀ + q·t_kᵀ)
        x = _dot(q, tl.trans(k), None, PRECISION, WIDEN) * (scale * LOG2E)
        x = tl.where(key_ok[None, :], x, float("-inf"))
        t_x = _dot(q, tl.trans(tk), _dot(tq, tl.trans(k), None, PRECISION, WIDEN), PRECISION, WIDEN) * scale

        # merge this block into the running state: rescale by e^{m_old − m_new} and add
        m_new = tl.maximum(m, tl.max(x, 1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key yet: the sums stay 0
        alpha = tl.exp2(m - shift)
        p = tl.exp2(x - shift[:, None])
        p_tx = p * t_x
        ell = ell * alpha + tl.sum(p, 1)
        mu = mu * alpha + tl.sum(p_tx, 1)
        f = _dot(p.to(v.dtype), v, f * alpha[:, None], PRECISION, WIDEN)
        h = _dot(p_tx.to(v.dtype), v, h * alpha[:, None], PRECISION, WIDEN)
        h = _dot(p.to(tv.dtype), tv, h, PRECISION, WIDEN)
        m = m_new

    # y = f/ℓ, t_y = h/ℓ − (μ/ℓ)·y; a row with every key masked gives 0, 0 and lse = −∞
    empty = ell == 0.0
    inv = 1.0 / tl.where(empty, 1.0, ell)
    y = f * inv[:, None]
    t_y = h * inv[:, None] - (mu * inv)[:, None] * y
    at_y = bh * L_q * D_V + rows[:, None] * D_V + dims_v[None, :]
    y_ok = row_ok[:, None] & (dims_v[None, :] < D_V)
    tl.store(Y + at_y, y.to(Y.dtype.element_ty), mask=y_ok)
    tl.store(TY + at_y, t_y.to(TY.dtype.element_ty), mask=y_ok)
    lse = tl.where(empty, float("-inf"), (m + tl.log2(tl.where(empty, 1.0, ell))) / LOG2E)
    tl.store(LSE + bh * L_q + rows, lse, mask=row_ok)


def _tuned_configs() -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [
            (128, 64, 8, 3),
            (128, 32, 8, 3),
            (128, 64, 4, 2),
            (64, 64, 4, 3),
            (64, 32, 4, 2),
            (64, 128, 4, 2),
            (32, 32, 4, 2),
        ]
    ]


def _fits(configs: list[triton.Config], named_args: dict, **_: object) -> list[triton.Config]:
    # two (BLOCK_M × head_dim) float32 accumulators and the q, t_q tiles live in registers:
    # wide heads need short row blocks
    width = max(named_args["D"], named_args["D_V"])
    kept = [c for c in configs if c.kwargs["BLOCK_M"] * width <= 128 * 128 // (2 if width > 128 else 1)]
    return kept or configs[-1:]


# compiled kernels try a few block shapes once per (head dims, lengths) and keep the fastest;
# the interpreter (tests on CPU) runs one small shape
_tuned = triton.autotune(
    _tuned_configs(),
    key=["L_q", "L_k", "BLOCK_D", "BLOCK_DV"],
    prune_configs_by={"early_config_prune": _fits},
)(_flash_jvp_kernel)
INTERPRETER_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 16}


def _check(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tangents: dict[str, torch.Tensor],
    key_mask: torch.Tensor | None,
) -> None:
    check_kernel_inputs(q, k, v, tangents, key_mask)
    for name, a in {"k": k, "v": v, **tangents, "key_mask": key_mask}.items():
        if a is not None and a.device != q.device:
            raise ValueError(f"{name} is on {a.device} but q is on {q.device}")
    if q.device.type != DEVICE:
        raise ValueError(
            f"the kernel runs on {DEVICE} tensors here, got {q.device} "
            "(CPU tensors need TRITON_INTERPRET=1 before the kernel is imported)"
        )


def covers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the kernel takes these inputs: (B, H, L, d) of float16, bfloat16 or float32, head dims
    at most 256 (what `flash_attention_jvp` would otherwise reject)."""
    try:
        _check(q, k, v, {}, None)
    except ValueError:
        return False
    return True


def flash_attention_jvp(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tq: torch.Tensor,
    tk: torch.Tensor,
    tv: torch.Tensor,
    scale: float | None = None,
    key_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, t_y, lse): softmax(scale·q·kᵀ)·v, its JVP along (tq, tk, tv) and the float32
    log-sum-exp of each row's scores, for (B, H, L, d) tensors; scale = 1/√d by default.
    key_mask, a bool (B, L_k) tensor, is True where a key takes part (as SDPA's boolean mask);
    a query whose keys are all masked gets y = t_y = 0 and lse = −∞."""
    _check(q, k, v, {"tq": tq, "tk": tk, "tv": tv}, key_mask)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _flash_jvp_op(q, k, v, tq, tk, tv, None if key_mask is None else key_mask.to(torch.uint8), scale)


# A custom operator, so that torch.func transforms and forward-mode AD hand the kernel plain
# tensors (not their wrappers) and torch.compile treats it as one opaque call
@torch.library.custom_op("trigcore::flash_attention_jvp", mutates_args=())
def _flash_jvp_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tq: torch.Tensor,
    tk: torch.Tensor,
    tv: torch.Tensor,
    keep: torch.Tensor | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    (b, h, l_q, d), (l_k, d_v) = q.shape, v.shape[2:]
    q, k, v, tq, tk, tv = (a.contiguous() for a in (q, k, v, tq, tk, tv))
    y, t_y, lse = _outputs(q, v)
    keep = q if keep is None else keep.contiguous()  # any pointer when there is no mask
    args = (q, k, v, tq, tk, tv, keep, y, t_y, lse, scale, l_q, l_k, d, d_v, h)
    static = {
        "HAS_MASK": keep is not q,
        "PRECISION": "ieee" if q.dtype == torch.float32 else "tf32",  # "tf32" only matters for float32
        "WIDEN": INTERPRETED and q.dtype == torch.bfloat16,
        "BLOCK_D": max(16, triton.next_power_of_2(d)),  # tl.dot needs dims of at least 16
        "BLOCK_DV": max(16, triton.next_power_of_2(d_v)),
    }
    if INTERPRETED:
        grid = (triton.cdiv(l_q, INTERPRETER_BLOCKS["BLOCK_M"]), b * h)
        _flash_jvp_kernel[grid](*args, **static, **INTERPRETER_BLOCKS)
    else:
        _tuned[lambda meta: (triton.cdiv(l_q, meta["BLOCK_M"]), b * h)](*args, **static)
    return y, t_y, lse


def _outputs(q: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Empty (y, t_y, lse) of the right shapes, dtypes and device."""
    y = torch.empty((*q.shape[:3], v.shape[3]), dtype=q.dtype, device=q.device)
    return y, torch.empty_like(y), torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)


_flash_jvp_op.register_fake(lambda q, k, v, *_: _outputs(q, v))
