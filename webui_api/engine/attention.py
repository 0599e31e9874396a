"""A1111's "Upcast cross attention layer to float32" (option `upcast_attn`, off by default).

With the option on, every A1111 attention implementation (modules/sd_hijack_optimizations.py)
casts query, key and value to float32, runs the attention itself with autocast disabled, and
casts the result back to the layer's dtype, so the q·kᵀ products and the softmax of a
half-precision model cannot overflow into NaN (black images).

diffusers' default processor calls PyTorch's scaled-dot-product attention in the model's dtype.
`apply_attention_upcast` swaps the UNet's processors for `UpcastAttnProcessor` for one job when
the option is on and the UNet runs in half precision (float32 models are left alone: there is
nothing to upcast); the returned `AttentionRestore` puts the previous processors back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from webui_api.engine.models import LoadedModel

HALF_DTYPES = (torch.float16, torch.bfloat16)


class UpcastAttnProcessor:
    """diffusers `Attention` processor computing the attention in float32 (autocast off)."""

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial_shape = hidden_states.shape if hidden_states.ndim == 4 else None
        if spatial_shape is not None:  # (B, C, H, W) -> (B, H*W, C)
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        out = _float32_attention(attn, query, key, value, _heads_mask(attn, attention_mask, context, batch))

        out = attn.to_out[1](attn.to_out[0](out))
        if spatial_shape is not None:
            out = out.transpose(1, 2).reshape(spatial_shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _heads_mask(attn: Any, mask: torch.Tensor | None, context: torch.Tensor, batch: int) -> torch.Tensor | None:
    """The attention mask as (B, heads, queries or 1, keys), as scaled_dot_product_attention takes it."""
    if mask is None:
        return None
    prepared = attn.prepare_attention_mask(mask, context.shape[1], batch)
    return prepared.view(batch, attn.heads, -1, prepared.shape[-1])


def _float32_attention(
    attn: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """softmax(q·kᵀ·scale)·v per head in float32, returned in the query's dtype as (B, N, heads*dim)."""
    batch, heads = query.shape[0], attn.heads
    head_dim = key.shape[-1] // heads
    q, k, v = (t.reshape(batch, -1, heads, head_dim).transpose(1, 2) for t in (query, key, value))
    if getattr(attn, "norm_q", None) is not None:
        q = attn.norm_q(q)
    if getattr(attn, "norm_k", None) is not None:
        k = attn.norm_k(k)
    if mask is not None and mask.is_floating_point():
        mask = mask.float()
    with torch.autocast(device_type=q.device.type, enabled=False):
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, scale=attn.scale)
    return out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)


@dataclass
class AttentionRestore:
    """The UNet processors a job replaced, so they can be put back exactly."""

    unet: Any = None
    saved: dict[str, Any] = field(default_factory=dict)

    def restore(self) -> None:
        if self.unet is not None and self.saved:
            self.unet.set_attn_processor(self.saved)
        self.saved = {}


def wants_attention_upcast(enabled: bool, unet_dtype: torch.dtype) -> bool:
    """Whether `upcast_attn` changes anything: the option is on and the UNet is half precision."""
    return enabled and unet_dtype in HALF_DTYPES


def apply_attention_upcast(model: LoadedModel, enabled: bool) -> AttentionRestore:
    """Float32 attention in the UNet for one job (option `upcast_attn`); undo with `restore()`."""
    unet = model.unet
    if not hasattr(unet, "attn_processors") or not wants_attention_upcast(enabled, unet.dtype):
        return AttentionRestore()
    saved = dict(unet.attn_processors)
    upcast = UpcastAttnProcessor()
    unet.set_attn_processor({name: upcast for name in saved})
    return AttentionRestore(unet, saved)
