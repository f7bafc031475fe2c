"""The web UI's config: where `lorakit webui` listens, who may use it, and which folders it may read."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from lorakit.config.core import check_choice
from lorakit.errors import ConfigError

UI_LANGUAGES = ("en", "zh")


@dataclass(frozen=True)
class WebUIConfig:
    """`host` is loopback unless `auth` ("user:password") is set; `allow_dirs` widen the folders paths may name."""

    host: str = "127.0.0.1"
    port: int = 7860
    auth: str | None = None
    allow_dirs: tuple[Path, ...] = ()
    outputs: Path = Path("outputs")
    max_upload_mb: int = 50
    language: str = "en"

    def __post_init__(self) -> None:
        check_choice("language", self.language, UI_LANGUAGES)
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be between 0 and 65535, got {self.port}.")
        if self.max_upload_mb <= 0:
            raise ConfigError(f"max_upload_mb must be positive, got {self.max_upload_mb}.")
        if self.auth is not None:
            user, sep, password = self.auth.partition(":")
            if not sep or not user or not password:
                raise ConfigError("auth must be 'user:password' with both parts non-empty.")
        if not is_loopback(self.host) and self.auth is None:
            raise ConfigError(f"host is {self.host}, which other machines can reach, but auth is not set: the web UI "
                              "starts training jobs and reads files. Set auth to 'user:password', or keep host "
                              "127.0.0.1 and reach it through an SSH tunnel.")

    @property
    def credentials(self) -> tuple[str, str] | None:
        if self.auth is None:
            return None
        user, _, password = self.auth.partition(":")
        return user, password


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to any interface
