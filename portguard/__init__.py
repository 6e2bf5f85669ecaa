"""portguard: keeps systemd services from failing with `bind: Address already in use`."""

__version__ = "0.1.0"
