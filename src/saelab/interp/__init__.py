"""Feature interpretation: examples, logit effects, neighbours, dashboards and autointerp.

    from saelab.interp import FeatureDataConfig, build_feature_data, write_dashboard
    data = build_feature_data(lm, sae, hook, source, "0-99", FeatureDataConfig(n_tokens=100_000))
    paths = write_dashboard(data, "out/dash")           # {"dashboard": .../dashboard.html, "data": ...}
    prompt_features(lm, sae, hook, "some text", k=5)    # top latents at each token

    report = run_autointerp(data, TokenExplainer(), TokenJudge(), AutointerpConfig(), out_path="ai.json")
    client = LLMClient(LLMConfig(base_url="http://127.0.0.1:8000/v1", model="m", cache_dir="cache"))
    report = run_autointerp(data, LLMExplainer(client), LLMJudge(client))

Feature data for autointerp needs negatives: set ``FeatureDataConfig(n_random=...)``.
"""

from saelab.interp.autointerp import AutointerpConfig, explain_and_score, run_autointerp, split_examples
from saelab.interp.dashboard import render_dashboard, write_dashboard
from saelab.interp.explainers import LLMExplainer, TokenExplainer
from saelab.interp.gather import Example, FeatureData, FeatureDataConfig, FeatureRecord, build_feature_data
from saelab.interp.judges import LLMJudge, TokenJudge
from saelab.interp.llm import LLMClient, LLMConfig, LLMError
from saelab.interp.logits import head_shares, logit_effects, residual_directions
from saelab.interp.neighbors import CorrelationStats, decoder_neighbors
from saelab.interp.prompt import prompt_features, top_latents_for_prompt
from saelab.interp.prompts import ReplyFormatError
from saelab.interp.scoring import balanced_accuracy, detection_score, fuzzing_score, pearson, simulation_score
from saelab.interp.selection import FeatureIndexError, parse_features

__all__ = [
    "AutointerpConfig", "CorrelationStats", "Example", "FeatureData", "FeatureDataConfig", "FeatureIndexError",
    "FeatureRecord", "LLMClient", "LLMConfig", "LLMError", "LLMExplainer", "LLMJudge", "ReplyFormatError",
    "TokenExplainer", "TokenJudge", "balanced_accuracy", "build_feature_data", "decoder_neighbors",
    "detection_score", "explain_and_score", "fuzzing_score", "head_shares", "logit_effects", "parse_features",
    "pearson", "prompt_features", "render_dashboard", "residual_directions", "run_autointerp",
    "simulation_score", "split_examples", "top_latents_for_prompt", "write_dashboard",
]
