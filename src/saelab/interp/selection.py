"""Which latents to look at: parsing ``"0-99,120,300-310"`` and checking indices against ``d_sae``."""

from __future__ import annotations

from collections.abc import Iterable

from saelab.errors import ConfigError


class FeatureIndexError(ConfigError):
    """A requested latent index that the SAE does not have, or an unreadable feature list."""


def parse_features(spec: str | Iterable[int], d_sae: int) -> list[int]:
    """Latent indices from ``"0-99,120"`` (ranges inclusive) or an iterable of ints; sorted, unique,
    each checked to lie in ``0..d_sae-1``."""
    if isinstance(spec, str):
        indices: list[int] = []
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            try:
                start = int(lo)
                stop = int(hi) if sep else start
            except ValueError:
                raise FeatureIndexError(f"features={spec!r}: {part!r} is not a latent index or range; accepted: "
                                        "comma-separated indices and inclusive ranges, e.g. '0-99,120'") from None
            if stop < start:
                raise FeatureIndexError(f"features={spec!r}: range {part!r} runs backwards; write it as "
                                        f"'{stop}-{start}'")
            indices.extend(range(start, stop + 1))
    else:
        indices = []
        for value in spec:
            if isinstance(value, bool) or not isinstance(value, int) and not hasattr(value, "__index__"):
                raise FeatureIndexError(f"feature index {value!r} is not an integer")
            indices.append(int(value))
    if not indices:
        raise FeatureIndexError(f"features={spec!r} selects no latent; give indices in 0..{d_sae - 1}")
    bad = sorted({i for i in indices if not 0 <= i < d_sae})
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        raise FeatureIndexError(f"feature indices out of range: {shown}; this SAE has d_sae={d_sae} latents "
                                f"(accepted: 0..{d_sae - 1})")
    return sorted(set(indices))
