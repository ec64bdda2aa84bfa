"""An exponential moving average of a model's weights, for validation and the saved model."""
from __future__ import annotations

import torch


class WeightAverage:
    """Keeps `ema` an exponential moving average of `model`: after each step ema = decay * ema +
    (1 - decay) * model over float weights and buffers, and the other buffers copied. The tensor
    lists are gathered once: state_dict() walks every module, milliseconds per call on HRNet."""

    def __init__(self, ema: torch.nn.Module, model: torch.nn.Module):
        ema_state, state = ema.state_dict(), model.state_dict()  # tensors sharing the modules' storage
        floats = [k for k, v in ema_state.items() if v.dtype.is_floating_point]
        others = [k for k, v in ema_state.items() if not v.dtype.is_floating_point]
        self.ema_floats, self.floats = [ema_state[k] for k in floats], [state[k] for k in floats]
        self.ema_others, self.others = [ema_state[k] for k in others], [state[k] for k in others]

    @torch.no_grad()
    def update(self, decay: float) -> None:
        torch._foreach_lerp_(self.ema_floats, self.floats, 1.0 - decay)
        if self.others:
            copy_tensors(self.ema_others, self.others)


@torch.no_grad()
def copy_tensors(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """targets[i] <- sources[i], in one fused call where torch has it."""
    if hasattr(torch, "_foreach_copy_"):
        torch._foreach_copy_(targets, sources)
    else:
        for target, source in zip(targets, sources):
            target.copy_(source)
