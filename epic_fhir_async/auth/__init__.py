"""Authentication: the token manager, SMART Backend Services, SMART App Launch, static tokens."""

from __future__ import annotations

from ._base import EpicAuth as EpicAuth
from ._base import StaticTokenAuth as StaticTokenAuth

__all__ = ["EpicAuth", "StaticTokenAuth"]
