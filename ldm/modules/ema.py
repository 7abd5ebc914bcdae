"""LitEma: exponential moving average of a module's parameters, with LDM's state-dict layout."""

from __future__ import annotations

import torch
from torch import nn


class LitEma(nn.Module):
    """EMA shadow copies stored as buffers named like the parameters without dots (LDM format)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, use_num_updates: bool = True):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError("decay must be between 0 and 1")
        self.m_name2s_name: dict[str, str] = {}
        self.register_buffer("decay", torch.tensor(decay, dtype=torch.float32))
        self.register_buffer(
            "num_updates", torch.tensor(0 if use_num_updates else -1, dtype=torch.int)
        )
        for name, p in model.named_parameters():
            if p.requires_grad:
                s_name = name.replace(".", "")
                self.m_name2s_name[name] = s_name
                self.register_buffer(s_name, p.clone().detach().data)
        self.collected_params: list[torch.Tensor] = []

    @torch.no_grad()
    def forward(self, model: nn.Module) -> None:
        """Update the shadow weights from ``model``; decay warms up as min(d, (1+n)/(10+n))."""
        decay = float(self.decay)
        if self.num_updates >= 0:
            self.num_updates += 1
            decay = min(decay, (1 + int(self.num_updates)) / (10 + int(self.num_updates)))
        shadow = dict(self.named_buffers())
        for name, p in model.named_parameters():
            if p.requires_grad:
                s = shadow[self.m_name2s_name[name]]
                s.sub_((1.0 - decay) * (s - p.detach().to(s.dtype)))

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the shadow weights into ``model`` (every parameter that has one, whether or not
        it requires grad now: a model loaded for inference has all of them frozen)."""
        shadow = dict(self.named_buffers())
        for name, p in model.named_parameters():
            if name in self.m_name2s_name:
                p.copy_(shadow[self.m_name2s_name[name]])

    def store(self, parameters) -> None:
        """Keep a copy of ``parameters`` to restore after EMA evaluation."""
        self.collected_params = [p.detach().clone() for p in parameters]

    @torch.no_grad()
    def restore(self, parameters) -> None:
        """Put back the parameters saved by :meth:`store`."""
        for c_param, param in zip(self.collected_params, parameters, strict=True):
            param.copy_(c_param)
        self.collected_params = []
