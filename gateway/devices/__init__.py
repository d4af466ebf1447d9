"""The gateway's device shell: SunSpec devices over Modbus TCP or RTU (see :mod:`gateway.devices.device`)."""

from gateway.devices.device import (
    DeviceConnection,
    DeviceError,
    DeviceExceptionResponse,
    DeviceInfo,
    DeviceUnreachable,
    DeviceVerifyError,
    Measurements,
    NotSunSpecDevice,
    UnsupportedControl,
)
from gateway.devices.sunspec import ModelMap, Point, build_model_map

__all__ = [
    "DeviceConnection",
    "DeviceError",
    "DeviceExceptionResponse",
    "DeviceInfo",
    "DeviceUnreachable",
    "DeviceVerifyError",
    "Measurements",
    "ModelMap",
    "NotSunSpecDevice",
    "Point",
    "UnsupportedControl",
    "build_model_map",
]
