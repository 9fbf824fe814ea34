"""The embedded flow model (embedded/flow_model.py, objectives.py): its SD3-family configuration from a world's
U-Net model, what it takes over from one, and `train` end to end on a toy world — resumed, exported, loaded and
sampled."""

import json
import math

import torch

from diffx.embedded.config import TrainConfig
from diffx.embedded.export import export_model
from diffx.embedded.flow_model import CONTEXT_TOKENS, flow_model_config, inherited_fields, initialise_flow_model
from diffx.embedded.objectives import DenoisingObjective
from diffx.embedded.train import train
from diffx.models.any_model import build_model, config_to_dict
from diffx.models.configs import shapes_world, shapes_world_2
from diffx.models.sd3 import SD3Config, StableDiffusion3
from diffx.models.stable_diffusion import build
from diffx.pipeline.generation import generate
from diffx.pipeline.settings import GenerationSettings
from diffx.weights.load import load_model


def _toy(world_config=None) -> SD3Config:
    return flow_model_config(world_config or shapes_world(), depth=1, heads=2, head_dim=16)


def test_the_flow_model_shares_the_u_net_models_vae_text_encoder_and_size():
    unet_model = shapes_world_2()
    config = flow_model_config(unet_model)
    assert config.name == "shapes-world-flow" and config.clip_g is None and config.t5 is None
    assert config.vae == unet_model.vae and config.image_size == unet_model.image_size
    assert config.clip_l == unet_model.text_encoder  # projection_dim 0: the pooled vector is unprojected
    mmdit = config.mmdit
    assert (mmdit.in_channels, mmdit.context_dim, mmdit.pooled_dim) == (4, 64, 64)  # no padding to 4096
    assert mmdit.sample_size == 16 and mmdit.pos_embed_max_size * mmdit.patch_size >= 16
    assert config.scheduler.prediction_type == "flow" and config.default_sampler == "euler"
    assert config.t5_max_length == 0 and config.clip_length == CONTEXT_TOKENS


def test_one_clip_gives_the_context_and_the_pooled_end_token_feature():
    model = build_model(_toy())
    ids = torch.tensor([model.tokenizer.encode("a red circle").ids])
    context, pooled = model.text_encoder(ids)  # the module call is `encode` (for training's DDP wrapper)
    assert context.shape == (1, CONTEXT_TOKENS, 64) and pooled.shape == (1, 64)
    clip = model.text_encoder.clip_l.transformer
    hidden = clip(ids)  # (1, 77, 64): CLIP is causal, so the first rows are the same
    torch.testing.assert_close(context, hidden[:, :CONTEXT_TOKENS])
    end = ids[0].tolist().index(model.text_encoder.end_id)
    torch.testing.assert_close(pooled, hidden[:, end])  # final norm applied, no projection


def test_a_flow_model_starts_from_a_u_net_models_vae_and_text_encoder():
    source, flow = build(shapes_world()), build_model(_toy())
    fresh = {k: v.clone() for k, v in flow.transformer.state_dict().items()}
    initialise_flow_model(flow, source)
    for mine, theirs in ((flow.vae, source.vae), (flow.text_encoder.clip_l.transformer, source.text_encoder)):
        for key, tensor in theirs.state_dict().items():
            torch.testing.assert_close(mine.state_dict()[key], tensor)
    for key, tensor in flow.transformer.state_dict().items():
        assert torch.equal(tensor, fresh[key])  # the MMDiT keeps its own initialisation


def test_init_from_compares_the_parts_a_flow_model_takes_over():
    unet_model, flow = (json.loads(json.dumps(config_to_dict(c))) for c in (shapes_world(), _toy()))  # as read
    have, want = inherited_fields(unet_model, flow)
    assert have == want and set(have) == {"text_encoder", "vae", "image_size"}
    have, want = inherited_fields(flow, flow)
    assert have == want and set(have) == {"clip_l", "mmdit", "vae", "image_size"}
    have, want = inherited_fields(json.loads(json.dumps(shapes_world_2().to_dict())), flow)
    assert have != want  # another world's model: another VAE and size


def test_the_objective_of_each_family():
    flow, unet = DenoisingObjective(_toy()), DenoisingObjective(shapes_world())
    assert flow.network_name == "MMDiT" and "velocity" in flow.title and flow.schedule is None
    assert unet.network_name == "U-Net" and "epsilon" in unet.title and unet.schedule is not None


def test_a_toy_flow_run_grounds_the_joint_attentions_image_to_text_quadrant(tmp_path):
    """--attention-loss on an MMDiT: the grounding loss is computed on its joint attention (recorded, positive) and
    the card says which attention it taught."""
    out = tmp_path / "run"
    _, summary = train(TrainConfig(out_dir=str(out), world="shapes", model=config_to_dict(_toy()), vae_steps=1,
                                   vae_batch=2, vae_crop=16, unet_steps=2, unet_batch=4, pool_size=4,
                                   checkpoint_every=2, device="cpu", attention_loss=0.1, caption_dropout=0.0))
    assert 0 < summary["unet"]["final_grounding_loss"] < 1
    export_model(out, tmp_path / "model")
    assert "image→text quadrant of the joint attention" in (tmp_path / "model" / "MODEL_CARD.md").read_text("utf-8")


def test_a_toy_flow_run_resumes_exports_loads_and_generates(tmp_path):
    out = tmp_path / "run"
    settings = dict(out_dir=str(out), world="shapes", model=config_to_dict(_toy()), vae_steps=1, vae_batch=2,
                    vae_crop=16, unet_steps=2, unet_batch=2, pool_size=4, checkpoint_every=2, device="cpu")
    model, summary = train(TrainConfig(**settings))
    assert isinstance(model, StableDiffusion3) and summary["unet"]["steps"] == 2
    assert math.isfinite(summary["unet"]["final_loss"])
    _, summary = train(TrainConfig(**{**settings, "unet_steps": 3}))  # resumes from step 2
    assert summary["unet"]["steps"] == 3
    export_model(out, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert isinstance(loaded, StableDiffusion3)
    assert (loaded.config.mmdit, loaded.config.clip_l) == (model.config.mmdit, model.config.clip_l)
    assert "MMDiT" in (tmp_path / "model" / "MODEL_CARD.md").read_text(encoding="utf-8")
    result = generate(loaded, GenerationSettings(prompt="a red circle", steps=2, seed=0))
    assert result.images[0].shape == (64, 64, 3)
    # --init-from the exported flow model: a new run starts from all of its weights (its VAE counted as trained)
    onward = {**settings, "out_dir": str(tmp_path / "again"), "unet_steps": 1, "init_from": str(tmp_path / "model"),
              "pool_size": 6}
    again, _ = train(TrainConfig(**onward))
    torch.testing.assert_close(again.vae.state_dict(), loaded.vae.float().state_dict())
    # ... and its latent scale, though this run's pool (6 scenes, not 4) would estimate another
    assert again.config.vae.scaling_factor == loaded.config.vae.scaling_factor
    # Stopped before the MMDiT stage's first checkpoint (the VAE's, written at the start, is there) and run
    # again: the MMDiT still starts from init_from's weights, so the run ends where the unbroken one did.
    stopped = tmp_path / "stopped"
    train(TrainConfig(**{**onward, "out_dir": str(stopped)}))
    (stopped / "unet_state.pt").unlink()
    resumed, _ = train(TrainConfig(**{**onward, "out_dir": str(stopped)}))
    for name, tensor in again.transformer.state_dict().items():
        assert torch.equal(tensor, resumed.transformer.state_dict()[name]), name
