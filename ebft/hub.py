"""Fail fast when the Hugging Face hub is needed but cannot be reached."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from ebft.errors import UserError


def hub_host() -> str | None:
    from huggingface_hub import constants

    return urlparse(constants.ENDPOINT).hostname


def hub_reachable(host: str | None, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub's HTTPS port opens within ``timeout`` seconds."""
    if not host:
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def require_hub(what: str) -> None:
    """Raise a one-sentence UserError naming ``what`` when the hub is offline by setting or unreachable."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserError(f"{what} needs the Hugging Face hub, but this profile is offline (offline: true); "
                        f"download it where a hub is reachable or use a local copy.")  # fmt: skip
    host = hub_host()
    if not hub_reachable(host):
        raise UserError(f"{what} needs the Hugging Face hub, which is unreachable from here ({host}); "
                        f"run where it is reachable or use a local copy.")  # fmt: skip
