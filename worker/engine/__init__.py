"""The style-transfer engine: pure PyTorch, no Celery or Flask. The CLI and the worker call it.

Of the project it imports only the parameter contract, `shared.params` (standard library only).
"""
from .loop import Member, stylize, stylize_batch
from .memory import OutOfMemory, free_bytes
from .transfer import DeviceError, Iterate, Result, resolve_device, resolve_precision
from .vgg import WeightsError, load_network
from .warmup import warm_up

__all__ = ["DeviceError", "Iterate", "Member", "OutOfMemory", "Result", "WeightsError", "free_bytes", "load_network",
           "resolve_device", "resolve_precision", "stylize", "stylize_batch", "warm_up"]
