"""The style-transfer engine: pure PyTorch, no Celery or Flask. The CLI and the worker call it.

Of the project it imports only the parameter contract, `shared.params` (standard library only).
"""
from .memory import OutOfMemory
from .transfer import DeviceError, Iterate, Result, resolve_device, stylize
from .vgg import WeightsError, load_network

__all__ = ["DeviceError", "Iterate", "OutOfMemory", "Result", "resolve_device", "stylize", "WeightsError", "load_network"]
