"""Pictures of attention edits and of word weights, on a tiny random model."""

import torch

from diffx.experiments.prompt_to_prompt import prompt_to_prompt
from diffx.experiments.prompt_to_prompt_views import edit_frames, edit_picture, embedding_change
from diffx.pipeline.conditioning import encode_text, tokenize
from diffx.pipeline.settings import GenerationSettings
from diffx.weights.load import load_model


def test_embedding_change_is_the_weighted_token_plus_the_mean_rescale():
    model = load_model()  # trained: a random LayerNorm's zero bias would make the context's mean ~0
    tokens, change, factor = embedding_change(model, "a (red:1.5) circle")
    plain = encode_text(model, [tokenize(model, "a red circle")])[0]
    red = tokens.word_positions(1)[0]
    # Every unweighted vector is only rescaled: ‖factor e − e‖ = |factor − 1| ‖e‖; the weighted one moves most.
    others = [p for p in range(77) if p != red]
    torch.testing.assert_close(change[others], (abs(factor - 1) * plain.norm(dim=-1))[others], rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(change[red], (1.5 * factor - 1) * plain[red].norm(), rtol=1e-3, atol=1e-5)
    assert int(change.argmax()) == red


def test_edit_picture_and_frames_share_one_layout(tiny_model):
    edit = prompt_to_prompt(tiny_model, GenerationSettings(prompt="a red circle", steps=2, height=32, width=32),
                            "a red square", tau=0.5)
    picture, frames = edit_picture(edit), edit_frames(edit, "vae", tiny_model)
    assert len(frames) == 3 and len({frame.size for frame in frames}) == 1
    assert frames[0].width == picture.width
