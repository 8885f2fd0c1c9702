"""Run the vision tower once and read off what HiRED needs: the feature layer's
hidden states and the CLS token's attention at the layers used for scoring.

The CLS row is the only part of the attention maps HiRED uses, so we never ask
the tower for its attention maps (``output_attentions`` would force the eager
attention path and build ``(heads, 577, 577)`` per layer). Instead forward hooks
capture the query of the CLS token and the keys at the chosen layers, and the
CLS row is computed from them afterwards: ``(heads, 577)`` per partition. The
tower itself keeps running with SDPA or flash attention.

Strategies that compare tokens (PruMerge+ merges by key similarity) can ask for
a layer's keys as well; they are returned only when asked for, so HiRED holds
no more than the two CLS rows once encoding is done.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn


class NoClsTokenError(ValueError):
    """The vision tower has no CLS token, so CLS attention cannot score its tokens."""


@dataclass
class VisionTower:
    """The parts of a CLIP-style vision tower HiRED hooks into."""

    module: nn.Module  # the tower the model calls (e.g. CLIPVisionModel)
    layers: nn.ModuleList  # its encoder layers, each with ``self_attn.{q,k}_proj``
    num_heads: int

    @classmethod
    def of(cls, vision_tower: nn.Module) -> "VisionTower":
        inner = getattr(vision_tower, "vision_model", vision_tower)
        embeddings = getattr(inner, "embeddings", None)
        if embeddings is None or getattr(embeddings, "class_embedding", None) is None:
            raise NoClsTokenError(
                f"{type(vision_tower).__name__} has no CLS token; HiRED scores visual tokens by the CLS "
                "token's attention and needs a CLIP-style vision tower (CLIPVisionModel)"
            )
        layers = getattr(getattr(inner, "encoder", None), "layers", None)
        if layers is None or not all(hasattr(layer, "self_attn") for layer in layers):
            raise ValueError(f"cannot find the encoder layers of {type(vision_tower).__name__}")
        return cls(module=vision_tower, layers=layers, num_heads=vision_tower.config.num_attention_heads)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer_index(self, layer: int, name: str) -> int:
        """A layer index, Python-style negatives allowed, checked against the tower's depth."""
        if not -self.num_layers <= layer < self.num_layers:
            raise ValueError(
                f"{name}={layer} is out of range for a vision tower with {self.num_layers} layers "
                f"(valid: {-self.num_layers}..{self.num_layers - 1})"
            )
        return layer % self.num_layers


def cls_attention(query: torch.Tensor, keys: torch.Tensor, num_heads: int, reduce: str) -> torch.Tensor:
    """The CLS token's attention over the patch tokens.

    ``query``: ``(P, D)`` projected query of the CLS token; ``keys``: ``(P, T, D)``
    projected keys of all ``T`` tokens (CLS first). Softmax per head over all keys,
    as the layer computes it, in float32; heads summed (or max-ed); the CLS
    column dropped. Returns ``(P, T - 1)``.
    """
    num_parts, num_tokens, dim = keys.shape
    head_dim = dim // num_heads
    q = query.float().view(num_parts, num_heads, 1, head_dim)
    k = keys.float().view(num_parts, num_tokens, num_heads, head_dim).transpose(1, 2)
    weights = torch.softmax((q @ k.transpose(-1, -2)).squeeze(2) * head_dim**-0.5, dim=-1)  # (P, H, T)
    if reduce == "sum":
        per_token = weights.sum(dim=1)
    elif reduce == "max":
        per_token = weights.amax(dim=1)
    else:
        raise ValueError(f"unknown head reduction {reduce!r}")
    return per_token[:, 1:]


@dataclass
class VisionOutput:
    features: torch.Tensor  # (P, T - 1, D_vision * n_feature_layers): feature-layer states, CLS dropped
    cls_attention: dict[int, torch.Tensor]  # layer -> (P, T - 1) CLS attention over patch tokens
    # layer -> (P, T - 1, D_vision) projected keys of the patch tokens, only for the layers asked for
    keys: dict[int, torch.Tensor] = field(default_factory=dict)


@contextmanager
def _capture(modules: dict[str, nn.Module], store: dict[str, torch.Tensor], pre: bool = False):
    handles = []
    for key, module in modules.items():
        if pre:
            hook = lambda mod, args, kwargs, key=key: store.__setitem__(key, (args or (kwargs["hidden_states"],))[0])
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        else:
            hook = lambda mod, args, output, key=key: store.__setitem__(
                key, output[0] if isinstance(output, tuple) else output
            )
            handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def encode(
    tower: VisionTower,
    pixel_values: torch.Tensor,
    feature_layers: list[int],
    attention_layers: Sequence[int],
    head_reduction: str = "sum",
    key_layers: Sequence[int] = (),
) -> VisionOutput:
    """Encode ``pixel_values`` ``(P, 3, H, W)``.

    ``feature_layers`` index the tower's hidden states as transformers does
    (0 = embeddings, -1 = last layer's output); ``attention_layers`` and
    ``key_layers`` index its encoder layers. Only these hidden states, the CLS
    attention rows and the keys of ``key_layers`` (the ``k_proj`` outputs already
    captured for the attention, CLS dropped: a view, not a copy) are kept.
    """
    num_states = tower.num_layers + 1
    states = [layer % num_states for layer in feature_layers]
    # hidden_states[i] is the input of encoder layer i (i < L), or the last layer's output.
    state_inputs = {f"h{i}": tower.layers[i] for i in states if i < tower.num_layers}
    state_outputs = {f"h{i}": tower.layers[i - 1] for i in states if i == tower.num_layers}
    projections = {}
    for layer in attention_layers:
        attn = tower.layers[layer].self_attn
        projections[f"q{layer}"], projections[f"k{layer}"] = attn.q_proj, attn.k_proj
    for layer in key_layers:
        projections[f"k{layer}"] = tower.layers[layer].self_attn.k_proj

    captured: dict[str, torch.Tensor] = {}
    with _capture(state_inputs, captured, pre=True), _capture(state_outputs, captured), _capture(projections, captured):
        tower.module(pixel_values)

    features = torch.cat([captured[f"h{i}"][:, 1:] for i in states], dim=-1)
    attention = {
        layer: cls_attention(captured[f"q{layer}"][:, 0], captured[f"k{layer}"], tower.num_heads, head_reduction)
        for layer in attention_layers
    }
    keys = {layer: captured[f"k{layer}"][:, 1:] for layer in key_layers}
    return VisionOutput(features=features, cls_attention=attention, keys=keys)
