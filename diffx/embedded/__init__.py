"""The embedded "shapes world": procedural training data, its judge, and the shipped toy model's training.

`shapes.py` draws scenes of flat-coloured shapes and captions them; `judge.py` reads a picture back
into shapes, colours and positions, so a generated image can be scored against its prompt.
"""
