"""An emulator of Epic's FHIR R4 and OAuth 2.0 servers, for tests without Epic (docs/sandbox.md).

Run it in-process (``EpicSandbox().transport()`` for httpx) or as a real server (``async with sb.serve()``
or ``epic-fhir sandbox``). It never imports the SDK's client code: its JWT checks and Bundles are its own.
"""

from __future__ import annotations

from ._app import EpicSandbox as EpicSandbox
from ._clock import SandboxClock as SandboxClock
from ._config import SandboxConfig as SandboxConfig
from ._config import SandboxFaults as SandboxFaults
from ._smart_model import SmartSettings as SmartSettings

__all__ = ["EpicSandbox", "SandboxClock", "SandboxConfig", "SandboxFaults", "SmartSettings"]
