"""SunSpec Modbus device simulators: site physics, faults, fleets. See simulators/README.md."""

from .config import (
    ConfigError,
    DeviceConfig,
    ProfileConfig,
    SiteConfig,
    default_site_config,
    load_site_config,
)
from .site import Endpoint, SimClock, SimulatedFleet, SimulatedSite

__all__ = [
    "ConfigError",
    "DeviceConfig",
    "Endpoint",
    "ProfileConfig",
    "SimClock",
    "SimulatedFleet",
    "SimulatedSite",
    "SiteConfig",
    "default_site_config",
    "load_site_config",
]
