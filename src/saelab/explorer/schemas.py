"""Request and response bodies of the explorer's JSON API (pydantic; they make the OpenAPI document).

Requests carry hard bounds (``HARD_MAX_PROMPT_CHARS``, ``MAX_TOP_K``, ...); the server's own limits
(``ExplorerLimits``) may be tighter and are checked by the service. No field names a file path: SAEs
and attribution graphs are chosen by the name the server gave them at start (``GET /api/info``,
``GET /api/graphs``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

HARD_MAX_PROMPT_CHARS = 20_000
MAX_TOP_K = 50
MAX_INDEX = 1 << 30
MAX_STEER = 1000.0
MAX_SCALE = 1000.0
HARD_MAX_GRAPH_EDGES = 1_000_000
HARD_MAX_INTERVENTION_NODES = 256


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


class GraphRequest(Request):
    graph: str = Field(min_length=1, max_length=200, description="a graph name from /api/graphs")
    max_edges: int | None = Field(None, ge=1, le=HARD_MAX_GRAPH_EDGES,
                                  description="send only the strongest edges (default: the server's limit)")


NodeId = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class InterventionRequest(Request):
    graph: str = Field(min_length=1, max_length=200, description="a graph name from /api/graphs")
    nodes: list[NodeId] = Field(min_length=1, max_length=HARD_MAX_INTERVENTION_NODES,
                                description="feature node ids of the graph (feature:LAYER:POS:INDEX)")
    mode: Literal["ablate", "steer"] = Field(description="ablate: activations x 0; steer: activations x scale")
    scale: float | None = Field(None, ge=-MAX_SCALE, le=MAX_SCALE, allow_inf_nan=False,
                                description="factor on the features' activations (mode steer only)")
    k: int = Field(10, ge=1, le=MAX_TOP_K, description="tokens listed whose probability changed most")

    @model_validator(mode="after")
    def _scale_fits_mode(self) -> InterventionRequest:
        if self.mode == "steer" and self.scale is None:
            raise ValueError("mode 'steer' needs a scale: the factor on the features' activations (e.g. 2)")
        if self.mode == "ablate" and self.scale not in (None, 0.0):
            raise ValueError(f"scale={self.scale} is for mode 'steer'; mode 'ablate' sets the activations to 0 "
                             "(leave scale out)")
        return self


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
    graphs: list[str]


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


class GraphSummary(BaseModel):
    name: str
    prompt: str
    model: str
    n_tokens: int
    n_nodes: int
    n_edges: int
    scores: dict[str, float | None]
    can_intervene: bool
    intervene_note: str | None


class GraphListResponse(BaseModel):
    graphs: list[GraphSummary]


class GraphNode(BaseModel):
    id: str
    kind: Literal["embedding", "feature", "error", "logit"]
    layer: int
    position: int
    token: str
    token_id: int
    feature: int | None
    activation: float | None
    probability: float | None
    influence: float
    label: str | None


class GraphEdge(BaseModel):
    source: str
    target: str
    weight: float


class GraphLimits(BaseModel):
    max_graph_edges: int
    max_intervention_nodes: int
    max_scale: float


class GraphResponse(GraphSummary):
    metadata: dict[str, Any]
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    edges_total: int
    sae_by_layer: list[str | None]
    prompt_tokens_match: bool
    limits: GraphLimits


class LogitChange(BaseModel):
    token: str
    token_id: int
    logit_before: float | None
    logit_after: float | None
    prob_before: float | None
    prob_after: float | None


class GraphLogitChange(LogitChange):
    real: float | None
    predicted: float | None
    direct: float | None


class InterventionResponse(BaseModel):
    graph: str
    nodes: list[str]
    mode: Literal["ablate", "steer"]
    scale: float
    position: int
    token: str
    kl: float | None
    logits: list[GraphLogitChange]
    top_changed: list[LogitChange]
    max_abs_error: float | None
    relative_error: float | None
