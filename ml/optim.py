"""Adam for the torch models (the recommender's GRU/SASRec and the conversion GRU).

`torch.optim`'s first optimizer of a process imports `torch._dynamo`: about 2 CPU s, an epoch
and a half of the recommender on YooChoose (issue #16's training-time target). This is the
same update in plain tensor operations, which imports nothing more; tests/test_optim.py checks
it against `torch.optim.Adam` step by step. torch is imported inside the methods, so importing
this module never imports torch.
"""

from __future__ import annotations

from typing import Any


class Adam:
    """Adam (Kingma & Ba, 2015) without weight decay or amsgrad, on a list of parameters: what
    `torch.optim.Adam(params, lr, betas, eps)` computes. `lr` may be changed between steps
    (e.g. a decay per epoch)."""

    def __init__(
        self,
        params: list[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        import torch

        self.params, self.lr, self.betas, self.eps, self.steps = list(params), lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        import torch

        self.steps += 1
        b1, b2 = self.betas
        correction1, correction2 = 1 - b1**self.steps, 1 - b2**self.steps
        with torch.no_grad():
            for p, m, v in zip(self.params, self.m, self.v, strict=True):
                if p.grad is None:
                    continue
                m.lerp_(p.grad, 1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                denom = (v.sqrt() / correction2**0.5).add_(self.eps)
                p.addcdiv_(m, denom, value=-self.lr / correction1)
