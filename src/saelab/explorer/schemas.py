"""Request and response bodies of the explorer's JSON API (pydantic; they make the OpenAPI document).

Requests carry hard bounds (``HARD_MAX_PROMPT_CHARS``, ``MAX_TOP_K``, ...); the server's own limits
(``ExplorerLimits``) may be tighter and are checked by the service. No field names a file path: SAEs
are chosen by the name the server gave them at start (``GET /api/info``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

HARD_MAX_PROMPT_CHARS = 20_000
MAX_TOP_K = 50
MAX_INDEX = 1 << 30
MAX_STEER = 1000.0


class Request(BaseModel):
    """Request bodies: no unknown fields, and no coercion (``"3"`` or ``3.0`` is not an integer), so the
    server accepts exactly what its OpenAPI document describes."""

    model_config = ConfigDict(extra="forbid", strict=True)


class PromptRequest(Request):
    prompt: str = Field(min_length=1, max_length=HARD_MAX_PROMPT_CHARS, description="text to run through the model")
    sae: str = Field(min_length=1, max_length=200, description="an SAE name from /api/info")

    @field_validator("prompt")
    @classmethod
    def _readable_text(cls, prompt: str) -> str:
        if not prompt.strip():
            raise ValueError("the prompt is empty (only whitespace); type some text")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"the prompt is not valid text: {exc.reason} at character {exc.start}") from None
        if "\x00" in prompt:
            raise ValueError("the prompt contains a NUL character; remove it")
        return prompt


class TokensRequest(PromptRequest):
    k: int = Field(5, ge=1, le=MAX_TOP_K, description="top latents listed per token")


class LatentRequest(Request):
    sae: str = Field(min_length=1, max_length=200)
    latent: int = Field(ge=0, le=MAX_INDEX)


class DFARequest(PromptRequest):
    latent: int = Field(ge=0, le=MAX_INDEX)
    position: int = Field(-1, ge=-MAX_INDEX, le=MAX_INDEX, description="destination token (negative: from the end)")
    k: int = Field(10, ge=1, le=MAX_TOP_K, description="source tokens listed")


class RecurseRequest(PromptRequest):
    latent: int = Field(ge=0, le=MAX_INDEX)
    dest: int = Field(-1, ge=-MAX_INDEX, le=MAX_INDEX)
    src: int = Field(ge=-MAX_INDEX, le=MAX_INDEX)
    upstream: str = Field(min_length=1, max_length=200, description="name of the upstream SAE")
    k: int = Field(10, ge=1, le=MAX_TOP_K)


class CompareRequest(PromptRequest):
    latent: int | None = Field(None, ge=0, le=MAX_INDEX, description="latent to ablate and steer (optional)")
    steer: float = Field(4.0, ge=-MAX_STEER, le=MAX_STEER, allow_inf_nan=False,
                         description="added to the latent's activation at every token (steered run)")
    position: int = Field(-1, ge=-MAX_INDEX, le=MAX_INDEX, description="token whose next-token prediction is read")
    k: int = Field(8, ge=1, le=MAX_TOP_K)


# ---------------------------------------------------------------------------------------------- responses
class ErrorResponse(BaseModel):
    detail: str


class LimitsInfo(BaseModel):
    max_prompt_chars: int
    max_prompt_tokens: int
    max_top_k: int
    max_steer: float
    dashboard_tokens: int
    max_body_bytes: int


class SAEInfo(BaseModel):
    name: str
    hook: str
    hook_out: str  # the site the decoder writes: a transcoder's target, else ``hook``
    kind: Literal["attention", "residual", "other"]
    layer: int | None
    architecture: str
    d_in: int
    d_sae: int
    dashboard_features: int
    upstream: list[str]


class InfoResponse(BaseModel):
    model: str
    n_layers: int
    d_model: int
    n_heads: int
    d_vocab: int
    saes: list[SAEInfo]
    limits: LimitsInfo
    example_prompts: list[str]


class LatentValue(BaseModel):
    latent: int
    activation: float


class TokenRow(BaseModel):
    position: int
    token: str
    special: bool
    latents: list[LatentValue]


class TokensResponse(BaseModel):
    sae: str
    tokens: list[TokenRow]
    max_activation: float
    prompt_top: list[LatentValue]


class Example(BaseModel):
    tokens: list[str]
    acts: list[float]
    mark: int
    act: float


class QuantileGroup(BaseModel):
    label: str
    examples: list[Example]


class WeightedToken(BaseModel):
    token: str
    weight: float


class Histogram(BaseModel):
    edges: list[float]
    counts: list[float]


class LatentResponse(BaseModel):
    sae: str
    latent: int
    source: Literal["precomputed", "computed"]
    n_tokens: int
    density: float
    max_act: float
    mean_act: float
    hist: Histogram | None
    top_examples: list[Example]
    quantile_groups: list[QuantileGroup]
    top_logits: list[WeightedToken]
    bottom_logits: list[WeightedToken]
    head_shares: list[float] | None
    neighbors: list[LatentValue]


class SourceTerm(BaseModel):
    src: int
    token: str
    dfa: float
    by_head: list[float]


class DFAResponse(BaseModel):
    sae: str
    latent: int
    position: int
    tokens: list[str]
    activation: float
    preactivation: float
    bias: float
    by_head: list[float]
    by_source: list[list[float]]
    by_source_total: list[float]
    top_sources: list[SourceTerm]
    head_shares: list[float]
    upstream: list[str]


class UpstreamLatent(BaseModel):
    latent: int
    score: float
    activation: float


class RecurseResponse(BaseModel):
    sae: str
    latent: int
    dest: int
    src: int
    dest_token: str
    src_token: str
    upstream: str
    upstream_kind: Literal["attention", "residual", "other"]
    exact_split: bool
    approximation: str
    source_term: float
    value_bias_term: float
    error_term: float | None
    b_dec_term: float | None
    top_upstream_latents: list[UpstreamLatent]


class Prediction(BaseModel):
    token: str
    token_id: int
    prob: float
    logit: float


class Variant(BaseModel):
    name: str
    description: str
    kl_from_clean: float
    clean_top_prob: float
    top: list[Prediction]


class CompareResponse(BaseModel):
    sae: str
    latent: int | None
    position: int
    token: str
    variants: list[Variant]
