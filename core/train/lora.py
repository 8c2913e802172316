"""LoRA: a frozen `nn.Linear` plus a trainable low-rank update on the attention q/v projections, wrapped
in place and merged back into plain Linears for saving (DPO and SFT share it). Its A is drawn as peft
draws it, from a seeded generator; B starts at zero, so the wrapped model starts exactly at the base."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from core.errors import ValidationError

_LORA_TARGETS = ("q_proj", "v_proj")


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update: base(x) + alpha/rank * x A^T B^T."""

    def __init__(self, base: nn.Linear, rank: int, alpha: int, generator: torch.Generator | None = None):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scaling = alpha / rank
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        a = torch.empty(rank, base.in_features, dtype=base.weight.dtype)  # (rank, in), on the CPU
        # as peft does (drawn on the CPU so that a CPU generator serves any device); with B = 0
        # the wrapped model starts exactly at the base
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.lora_A = nn.Parameter(a.to(base.weight.device))  # (rank, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **kw))  # (out, rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain Linear with the update folded into a new weight (the base is left as it is)."""
        out = nn.Linear(
            self.base.in_features,
            self.base.out_features,
            bias=self.base.bias is not None,
            device="meta",
        )
        with torch.no_grad():
            delta = (self.lora_B @ self.lora_A) * self.scaling  # (out, in)
            out.weight = nn.Parameter(
                self.base.weight + delta.to(self.base.weight.dtype), requires_grad=False
            )
        if self.base.bias is not None:
            out.bias = self.base.bias
        return out


def add_lora(model: nn.Module, rank: int, alpha: int, seed: int = 0) -> dict[str, LoRALinear]:
    """Freeze `model`, wrap its attention q/v projections in LoRA in place (A drawn from a generator
    seeded with `seed`); returns name -> wrapper. Raises ValidationError when there are none."""
    model.requires_grad_(False)
    targets = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in _LORA_TARGETS
    ]
    if not targets:
        raise ValidationError(
            f"no {' / '.join(_LORA_TARGETS)} Linear layers in {type(model).__name__} to put LoRA on"
        )
    wrappers = {}
    generator = torch.Generator().manual_seed(seed)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        wrappers[name] = LoRALinear(getattr(parent, child), rank, alpha, generator)
        setattr(parent, child, wrappers[name])
    return wrappers


def _set_modules(model: nn.Module, modules: dict[str, nn.Module]) -> None:
    for name, module in modules.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, module)


def unwrap_lora(model: nn.Module, wrappers: dict[str, LoRALinear]) -> None:
    """Replace every LoRA wrapper in `model` by a plain Linear with its update merged in."""
    _set_modules(model, {name: w.merged() for name, w in wrappers.items()})


@contextlib.contextmanager
def lora_merged(model: nn.Module, wrappers: dict[str, LoRALinear]):
    """Inside the block `model` is plain, LoRA merged in (for saving); afterwards LoRA is back."""
    _set_modules(model, {name: w.merged() for name, w in wrappers.items()})
    try:
        yield
    finally:
        _set_modules(model, wrappers)
