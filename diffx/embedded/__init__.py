"""The embedded "shapes world": procedural training data, its judge, and the shipped toy model's training.

`shapes.py` draws scenes of flat-coloured shapes and captions them; `judge.py` reads a picture back
into shapes, colours and positions, so a generated image can be scored against its prompt, and
`quality.py` turns that into adherence rates and the pointing game. Training: `config.py` (the checked
settings), `pool.py` (the pictures), `grounding.py` (the optional attention loss), `checkpoints.py` (the
training folder's files), `optim.py` (the learning-rate and EMA schedules), `previews.py` (the pictures
drawn at each checkpoint), `hardware.py` (where a stage ran), `train.py` (the two stages). Shipping:
`history.py` (training.json), `card.py` (MODEL_CARD.md), `export.py` (a training folder -> a model folder).
"""
