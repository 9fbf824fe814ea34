"""The Stable Diffusion v1 model stack: tokenizer, CLIP text encoder, U-Net, VAE."""
