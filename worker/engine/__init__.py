"""The style-transfer engine: pure PyTorch, no Celery or Flask. The CLI and the worker call it."""
from .params import ParamError, Params, plan
from .transfer import DeviceError, Iterate, Result, resolve_device, stylize
from .vgg import WeightsError, load_network

__all__ = ["ParamError", "Params", "plan", "DeviceError", "Iterate", "Result", "resolve_device", "stylize", "WeightsError", "load_network"]
