"""How close the lab's samples are to the data, and how spread out each class is.

The sliced Wasserstein distance (Rabin et al. 2011; Bonneel et al. 2015) compares two point clouds
through their 1-D projections, where optimal transport is just sorting:

    SW_1(P, Q) = E_θ W_1(θᵀP, θᵀQ),   W_1 of two equal-size 1-D samples = mean |sorted(a) − sorted(b)|

averaged over many fixed random directions θ on the circle. 0 for identical clouds; in data units.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffx.errors import InvalidArgumentError


def sliced_wasserstein(a: Tensor, b: Tensor, directions: int = 256, seed: int = 0) -> float:
    """SW_1 between point clouds a, b of shape (N, 2) (equal N), over `directions` seeded directions."""
    if a.shape != b.shape or a.dim() != 2:
        raise InvalidArgumentError(f"sliced Wasserstein needs two (N, D) clouds of one shape, got "
                                   f"{tuple(a.shape)} and {tuple(b.shape)}")
    angle = 2 * math.pi * torch.rand(directions, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    theta = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)  # (K, 2) unit vectors
    project_a = torch.sort(a.double() @ theta.T, dim=0).values  # (N, K)
    project_b = torch.sort(b.double() @ theta.T, dim=0).values
    return float((project_a - project_b).abs().mean())


def class_spread(points: Tensor, labels: Tensor) -> float:
    """The root-mean-square distance of points to their own class mean, averaged over the classes present."""
    spreads = []
    for label in labels.unique():
        members = points[labels == label]  # (n_k, 2)
        spreads.append(float(((members - members.mean(dim=0)) ** 2).sum(dim=1).mean().sqrt()))
    return sum(spreads) / len(spreads)


def path_straightness(path: Tensor) -> float:
    """How straight the particles travel: the mean over particles of (length of its path) / (distance between the
    path's ends), for a path (S + 1, N, 2) of S steps. 1 when every particle moves on a straight line (a path
    integrated exactly by one Euler step); a particle that bends away and comes back scores high."""
    length = (path[1:] - path[:-1]).norm(dim=-1).sum(dim=0)  # (N,) the polyline through the S + 1 states
    chord = (path[-1] - path[0]).norm(dim=-1).clamp(min=1e-12)  # (N,)
    return float((length / chord).mean())
