"""The CLIP text encoder (Radford et al. 2021): a causal pre-LN transformer over 77 BPE tokens.

SD1.x conditions its U-Net on the *last hidden state* (B, 77, 768) of CLIP ViT-L/14's text tower:
one vector per token position, each seeing only the tokens before it (causal mask, as in GPT-2).

    x_0 = token_embedding(ids) + position_embedding(0..76)
    x_l = x_{l-1} + SelfAttention(LayerNorm(x_{l-1}))          (causal)
    x_l = x_l + MLP(LayerNorm(x_l)),  MLP = fc2(quick_gelu(fc1(.)))
    context = LayerNorm(x_L)

SDXL reads the first of its two encoders (this one, `conditioner.embedders.0.transformer.*`) one block earlier
and without the final norm: context = x_{L-1} (transformers' `hidden_states[-2]`; `skipped_layers = 1`,
`final_norm = False` in its config).
Module names are the keys of transformers' `CLIPTextModel` checkpoints (`text_model.*`), so the state
dict of `text_encoder/` in a diffusers folder, or `cond_stage_model.transformer.*` of an original SD
checkpoint with that prefix removed, loads without renaming. (transformers >= 5.6 itself saves the
same keys without `text_model.`; a loader must add the prefix back for such folders.)
Files may also hold `text_model.embeddings.position_ids` (the constant 0..76): diffx computes the
positions instead of storing them, and drops that key on load.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffx.errors import check_choice
from diffx.models.attention import AttentionLayer, name_attention_layers
from diffx.models.configs import TextEncoderConfig


def quick_gelu(x: Tensor) -> Tensor:
    """x * sigmoid(1.702 x): the sigmoid approximation of GELU (Hendrycks & Gimpel 2016, sec. 2) CLIP used."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": F.gelu}


class ClipEmbeddings(nn.Module):
    """Token embedding + learned absolute position embedding."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        # (B, N) -> (B, N, hidden)
        return self.token_embedding(input_ids) + self.position_embedding(positions)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        # Checkpoints saved by older transformers carry the position ids 0..N-1 as a buffer: not a weight.
        state_dict.pop(prefix + "position_ids", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ClipSelfAttention(AttentionLayer):
    """Multi-head causal self-attention: token i attends to tokens 0..i."""

    kind = "self"

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        width = config.hidden_size
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        out = self.attend(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, causal=True)
        return self.out_proj(out)


class ClipMLP(nn.Module):
    """Position-wise feed-forward: hidden -> intermediate -> hidden."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.activation = ACTIVATIONS[check_choice("hidden_act", config.hidden_act, list(ACTIVATIONS))]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class ClipEncoderLayer(nn.Module):
    """One pre-LN transformer block: LayerNorm before each sublayer, residual around it."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = ClipSelfAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ClipMLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ClipEncoder(nn.Module):
    """The stack of transformer blocks."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(ClipEncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: Tensor, skipped_layers: int = 0) -> Tensor:
        for layer in self.layers[:len(self.layers) - skipped_layers]:
            x = layer(x)
        return x


class ClipTextTransformer(nn.Module):
    """Embeddings -> blocks -> final LayerNorm (transformers' `text_model`)."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = config
        self.embeddings = ClipEmbeddings(config)
        self.encoder = ClipEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: Tensor) -> Tensor:
        hidden = self.encoder(self.embeddings(input_ids), self.config.skipped_layers)
        return self.final_layer_norm(hidden) if self.config.final_norm else hidden


class TextEncoder(nn.Module):
    """CLIP text encoder: token ids (B, 77) -> last hidden state (B, 77, hidden), SD1.x's context.

    With `projection_dim` (SD3's two CLIPs, transformers' `CLIPTextModelWithProjection`) it also gives the pooled
    text feature, CLIP's contrastive embedding (Radford et al. 2021, fig. 3):
    pooled = text_projection(final_layer_norm(x_L)[end token]), `text_projection` a bias-free Linear.
    """

    checkpoint_prefix = "cond_stage_model.transformer."  # where an SD1.x single file keeps it

    def __init__(self, config: TextEncoderConfig | None = None):
        super().__init__()
        self.config = config or TextEncoderConfig()
        self.text_model = ClipTextTransformer(self.config)
        if self.config.projection_dim:
            self.text_projection = nn.Linear(self.config.hidden_size, self.config.projection_dim, bias=False)
        name_attention_layers(self)

    def forward(self, input_ids: Tensor) -> Tensor:
        # (B, 77) int64 -> (B, 77, hidden)
        return self.text_model(input_ids)

    def encode(self, input_ids: Tensor, end_id: int) -> tuple[Tensor, Tensor]:
        """(context (B, 77, hidden), pooled (B, projection_dim or hidden)): the used block's output as `forward`
        gives it, and the (projected, with a `projection_dim`) end-token feature of the last block (every block
        runs). `end_id`: `<|endoftext|>`'s id, whose first occurrence marks the end (transformers' choice for
        tokenizers that number it last or not)."""
        text_model = self.text_model
        x = text_model.embeddings(input_ids)
        layers = text_model.encoder.layers
        used = len(layers) - self.config.skipped_layers
        context = x
        for index, layer in enumerate(layers):
            x = layer(x)
            if index == used - 1:
                context = x
        context = text_model.final_layer_norm(context) if self.config.final_norm else context
        end = (input_ids == end_id).int().argmax(dim=-1)
        pooled = text_model.final_layer_norm(x)[torch.arange(x.shape[0]), end]  # (B, 77, hidden) -> (B, hidden)
        # (B, hidden) -> (B, projection_dim); no projection_dim: the end-token feature itself
        return context, self.text_projection(pooled) if self.config.projection_dim else pooled
