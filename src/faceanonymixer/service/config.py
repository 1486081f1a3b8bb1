"""The verification service's settings (``ServiceConfig``, YAML via ``faceanonymixer.config``) and what the
server derives from them without loading any generator or key: the protected images' resolution and the
decision threshold (``resolve_profile``)."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from types import SimpleNamespace

from .. import config as config_mod
from ..errors import FaceAnonyMixerError
from ..workflow import verify_threshold


@dataclass
class MatchConfig:
    matcher: str = "sface"                # recogniser that embeds protected images (workflow.matcher)
    generator: str | None = "fam-stylegan2-64"  # generator the clients protect with: only its JSON is read, for the
                                          # resolution and the calibrated threshold (never its weights)
    resolution: int | None = None         # protected image side in px; None = the generator's
    threshold: float | None = None        # cosine threshold; None = the generator's calibrated one, else 0.363
                                          # (workflow.verify_threshold)
    device: str = "cpu"
    threads: int = 1                      # torch threads for embedding
    reveal_score: bool = False            # verify answers carry the cosine score; off: score is null (a score lets a
                                          # token holder hill-climb a synthetic probe towards a person's templates)

    LIMITS = dict(resolution=(16, 4096), threshold=(-1.0, 1.0), threads=(1, 256))


@dataclass
class LimitsConfig:
    max_body_bytes: int = 4_000_000       # a request body above this is refused (413) before it is read
    max_image_bytes: int = 1_000_000      # one PNG above this is refused (413)
    max_images: int = 16                  # images in one enrol / revoke request
    rate: float = 20.0                    # requests per second per API token (token bucket refill)
    burst: int = 40                       # bucket size: requests a token may send at once
    body_timeout_s: float = 60.0          # a request body must arrive within this many seconds (else 408)
    max_connections: int = 256            # connections + requests in progress; more get 503 (uvicorn's
                                          # limit_concurrency)

    LIMITS = dict(max_body_bytes=(1024, 1_000_000_000), max_image_bytes=(100, 500_000_000), max_images=(1, 1000),
                  rate=(0.001, 1e6), burst=(1, 1_000_000), body_timeout_s=(0.1, 3600.0), max_connections=(1, 100_000))


@dataclass
class ServiceConfig:
    db: str = "sqlite:///faceanonymixer-service.db"  # SQLAlchemy URL: sqlite:///FILE or postgresql://...
    host: str = "127.0.0.1"
    port: int = 8000
    graceful_timeout_s: float = 30.0      # on SIGTERM: how long in-flight requests may take to finish
    match: MatchConfig = field(default_factory=MatchConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    LIMITS = dict(port=(0, 65535), graceful_timeout_s=(0.0, 3600.0))


def load_service_config(path=None, overrides: list[str] | None = None) -> ServiceConfig:
    """YAML -> ServiceConfig (unknown keys rejected; ``a.b=value`` overrides)."""
    return config_mod.load(ServiceConfig, path, overrides)


@dataclass
class Profile:
    """What the server checks and decides with: the matcher's name, the side of the protected images, the
    threshold."""
    matcher: str
    resolution: int
    threshold: float


def resolve_profile(mc: MatchConfig) -> Profile:
    """Resolution and threshold from the config, else from the generator's weights JSON (read, never loaded:
    the server holds no generator)."""
    res, meta = mc.resolution, {}
    if mc.generator is not None and (res is None or mc.threshold is None):
        from ..models.io import read_doc
        from ..models.loading import resolve_path
        try:
            doc = read_doc(resolve_path(mc.generator))
        except FaceAnonyMixerError as e:
            raise config_mod.ConfigError(f"match.generator '{mc.generator}': {e}. Set match.resolution and "
                                         "match.threshold in the service config instead.") from None
        meta = doc.get("meta") or {}
        if res is None:
            res = (doc.get("config") or {}).get("resolution")
    if not isinstance(res, int) or isinstance(res, bool):
        raise config_mod.ConfigError("match.resolution is not set and cannot be read from match.generator; set it "
                                     "to the protected images' side in px (the client's generator resolution)")
    thr = verify_threshold(mc.threshold, SimpleNamespace(verify_thresholds=meta.get("verify_thresholds")),
                           mc.matcher)
    return Profile(mc.matcher, int(res), float(thr))


def loopback(host: str) -> bool:
    """Whether ``host`` (a listen address or a server's host name) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
