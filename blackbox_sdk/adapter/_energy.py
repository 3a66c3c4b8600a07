"""The torch side of the adapter: torch on demand, the `EnergyModel` module, the device and autocast.

Nothing here imports torch at module import: `EnergyModel` is defined on first use.
"""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any

from .._exceptions import AdapterError

if TYPE_CHECKING:
    import torch


def import_torch() -> Any:
    """torch, or an AdapterError that says which extra to install."""
    try:
        import torch
    except ModuleNotFoundError:
        raise AdapterError("the adapter needs torch: pip install 'blackbox-sdk[adapter]'") from None
    return torch


@functools.cache
def energy_model_class() -> type:
    """Define EnergyModel on first use, so importing this module never imports torch."""
    import_torch()
    from torch import nn

    class _EnergyModel(nn.Module):
        """Encoder + pooling + one linear unit: texts' token ids -> a scalar score per text."""

        def __init__(self, encoder: nn.Module, pooling: str) -> None:
            super().__init__()
            self.encoder = encoder
            self.pooling = pooling
            config: Any = encoder.config  # the transformers model's (a peft wrapper passes it through)
            self.head = nn.Linear(config.hidden_size, 1)
            nn.init.normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            """Scores (B,) for token ids (B, T) and their mask (B, T)."""
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
            hidden = hidden.float()
            if self.pooling == "cls":
                pooled = hidden[:, 0]  # (B, H)
            else:
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, H)
            return self.head(pooled).squeeze(-1)  # (B,)

    _EnergyModel.__name__ = _EnergyModel.__qualname__ = "EnergyModel"
    return _EnergyModel


def __getattr__(name: str) -> Any:
    """Build `EnergyModel` (a torch module) on first access, so the module imports without torch."""
    if name == "EnergyModel":
        return energy_model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_device() -> str:
    """The GPU when there is one, else the CPU."""
    return "cuda" if import_torch().cuda.is_available() else "cpu"


def checked_device(device: str | None) -> str | None:
    """`device` when torch can name it and place a tensor there (None: the default); AdapterError before any work otherwise."""
    if device is not None:
        torch = import_torch()
        try:
            torch.device(device)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise AdapterError(f"device {device!r} is not one torch knows ({exc}); use e.g. 'cpu', 'cuda' or 'cuda:0'") from None
        try:
            torch.empty(0, device=device)
        except Exception as exc:  # torch says so by AssertionError (built without CUDA), RuntimeError, NotImplementedError, ...
            raise AdapterError(f"device {device!r} can't be used here ({type(exc).__name__}: {exc}); use e.g. 'cpu'") from None
    return device


PRECISIONS = ("auto", "fp32", "bf16")


def autocast(device: Any, precision: str = "auto") -> Any:
    """Mixed precision for a forward: "auto" is bf16 (or fp16) on the GPU and fp32 on the CPU; "bf16" is bf16 anywhere."""
    torch = import_torch()
    kind = torch.device(device).type
    if precision == "fp32" or (precision == "auto" and kind != "cuda"):
        return contextlib.nullcontext()
    fp16 = kind == "cuda" and precision == "auto" and not torch.cuda.is_bf16_supported()
    return torch.autocast(kind, dtype=torch.float16 if fp16 else torch.bfloat16)


def needs_grad_scaler(device: Any) -> bool:
    """fp16 autocast (a GPU without bf16) needs loss scaling; bf16 and the CPU don't."""
    torch = import_torch()
    return device.type == "cuda" and not torch.cuda.is_bf16_supported()
