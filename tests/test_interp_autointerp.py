"""Autointerp: scores from known activations, the token baseline, and the LLM path against a local
OpenAI-compatible server (127.0.0.1, deterministic answers, shut down by the test)."""

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from saelab.errors import ConfigError
from saelab.interp import (
    AutointerpConfig,
    Example,
    FeatureData,
    FeatureRecord,
    LLMClient,
    LLMConfig,
    LLMError,
    LLMExplainer,
    LLMJudge,
    ReplyFormatError,
    TokenExplainer,
    TokenJudge,
    balanced_accuracy,
    detection_score,
    explain_and_score,
    fuzzing_score,
    pearson,
    run_autointerp,
    simulation_score,
    split_examples,
)
from saelab.interp.autointerp import bin_counts
from saelab.interp.prompts import parse_explanation, parse_int_list

# ------------------------------------------------------------------ known activations: "cat" fires


def ex(words, fire_on="cat", value=2.0, mark=None, window=0):
    acts = [value if w == fire_on else 0.0 for w in words]
    m = mark if mark is not None else (acts.index(value) if value in acts else -1)
    return Example(tokens=words, acts=acts, mark=m, window=window, pos=0, act=max(acts))


POS = [ex(["the", "cat", "sat", "on", "mat"], window=0), ex(["a", "big", "cat", "ran", "off"], window=1),
       ex(["cat", "and", "dog", "play", "now"], window=2), ex(["my", "cat", "is", "old", "."], window=3)]
NEG = [ex(["the", "dog", "sat", "on", "mat"], mark=-1, window=10), ex(["a", "bird", "flew", "far", "."], mark=-1, window=11),
       ex(["dogs", "and", "cows", "eat", "grass"], mark=-1, window=12)]


def group(examples, hi=2.0, lo=2.0):
    return {"label": "", "hi": hi, "lo": lo, "fraction": 1.0, "examples": list(examples)}


def record(index=0, pos=POS, neg=NEG):
    """The top examples are also the one quantile group (as for a latent with few firings)."""
    return FeatureRecord(index=index, density=0.1, n_fires=len(pos), max_act=2.0, mean_act=2.0, hist={},
                         top_examples=list(pos), quantile_groups=[group(pos)], random_examples=list(neg))


def test_balanced_accuracy_and_pearson():
    assert balanced_accuracy([True, True, False, False], [True, False, False, False]) == 0.75
    assert balanced_accuracy([True], [True]) == 1.0 and balanced_accuracy([], []) is None
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0


def test_token_baseline_recovers_planted_token_and_scores_perfectly():
    explanation = TokenExplainer().explain(POS)
    assert explanation.startswith('Fires on "cat".')
    judge = TokenJudge()
    assert detection_score(judge, explanation, POS, NEG) == 1.0
    assert fuzzing_score(judge, explanation, POS) == 1.0
    assert simulation_score(judge, explanation, POS + NEG) == pytest.approx(1.0)
    wrong = 'Fires on "dog".'
    assert detection_score(judge, wrong, POS, NEG) == pytest.approx(0.5 * (1 / 4) + 0.5 * (2 / 3))
    assert simulation_score(judge, wrong, POS + NEG) < 0


# ------------------------------------------------------------------ the scoring mix across quantiles

FILLER = ["the", "a", "on", "and", "is", "of", "to", "in"]


def context(word, value, window):
    """A 7-token context with ``word`` (firing at ``value``) in the middle; ``word=None``: silent."""
    words = [FILLER[(window + i) % len(FILLER)] for i in range(7)]
    if word is not None:
        words[3] = word
    acts = [value if i == 3 and word is not None else 0.0 for i in range(7)]
    return Example(tokens=words, acts=acts, mark=3 if word else -1, window=window, pos=3, act=max(acts))


def broad_latent(index=5):
    """Fires at 10 on "cat" (its top examples and strongest decile) but mostly, more weakly, on nine other
    words, one per lower decile: an explanation read off the top examples covers a rare tenth of it."""
    words = ["dog", "fish", "tree", "car", "sun", "rain", "book", "door", "lamp"]
    top = [context("cat", 10.0, w) for w in range(100, 112)]
    groups = [group([context("cat", 9.5, 200 + i) for i in range(5)], 10.0, 9.0)]
    for g, word in enumerate(words, 1):
        value = 9.0 - 0.9 * g
        groups.append(group([context(word, value, 300 + 10 * g + i) for i in range(5)], value, value))
    random_ctx = [context(None, 0.0, 500 + i) for i in range(15)] + [context("dog", 8.1, 600)]
    return FeatureRecord(index=index, density=0.05, n_fires=500, max_act=10.0, mean_act=5.0, hist={},
                         top_examples=top, quantile_groups=groups, random_examples=random_ctx), words


class FixedExplainer:
    name = "fixed"

    def __init__(self, text):
        self.text = text

    def explain(self, examples):
        return self.text


def test_an_explanation_of_the_rare_top_firings_scores_high_on_top_and_random_but_not_on_the_mix():
    latent, words = broad_latent()
    judge, cfg = TokenJudge(), AutointerpConfig(progress=False)
    top_only = TokenExplainer().explain(latent.top_examples[:cfg.n_explain])
    assert top_only.startswith('Fires on "cat".')  # it predicts the latent is silent wherever "cat" is not
    split = split_examples(latent, cfg)
    # scored on held-out top examples and silent random contexts (Bills et al.'s "top + random"), it looks right
    top_and_random = latent.top_examples[cfg.n_explain:] + latent.quantile_groups[0]["examples"]
    assert detection_score(judge, top_only, top_and_random, split.non_activating) == 1.0
    assert simulation_score(judge, top_only, top_and_random + split.non_activating) > 0.99
    # on the mix across deciles it is found out
    partial = explain_and_score(latent, FixedExplainer(top_only), judge, cfg)
    assert partial["detection"] == pytest.approx(0.55) and partial["fuzzing"] == pytest.approx(0.55)
    assert partial["simulation"] < 0.6
    correct = explain_and_score(latent, FixedExplainer("Fires on " + ", ".join(f'"{w}"' for w in ["cat", *words])),
                                judge, cfg)
    assert correct["detection"] == 1.0 and correct["fuzzing"] == 1.0 and correct["simulation"] > 0.8
    assert correct["n_activating"] == 10 and correct["n_non_activating"] == 10
    assert [b["n"] for b in correct["activating_bins"]] == [1] * 10
    assert correct["activating_bins"][0]["hi"] == 10.0 and correct["activating_bins"][-1]["lo"] == pytest.approx(0.9)


def test_the_mix_spreads_over_quantile_bins_and_never_scores_explained_examples():
    assert bin_counts(7, 3) == [2, 2, 3] and bin_counts(5, 10) == [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]
    latent, _ = broad_latent()
    latent.quantile_groups[0]["examples"] += latent.top_examples[:3]     # the explained ones are in a group too
    split = split_examples(latent, AutointerpConfig(n_explain=3, n_activating=12, n_quantiles=3,
                                                    n_non_activating=20))
    assert [b["n"] for b in split.bins] == [4, 4, 4]                        # groups 0-3, 4-6, 7-9
    assert [(b["hi"], b["lo"]) for b in split.bins] == [(10.0, pytest.approx(6.3)), (pytest.approx(5.4),
                                                       pytest.approx(3.6)), (pytest.approx(2.7), pytest.approx(0.9))]
    shown = {(e.window, e.pos) for e in split.explain}
    assert len(shown) == 3 and not shown & {(e.window, e.pos) for e in split.activating}
    assert len(split.non_activating) == 15 and not any(e.fires for e in split.non_activating)
    assert split_examples(latent, AutointerpConfig(n_explain=3, n_activating=12, n_quantiles=3)).activating == \
        split.activating                                                     # seeded
    with pytest.raises(ConfigError, match="n_quantiles=0"):
        AutointerpConfig(n_quantiles=0)
    with pytest.raises(ConfigError, match="n_activating=-1"):
        AutointerpConfig(n_activating=-1)


def test_the_mix_is_recorded_and_feature_data_that_cannot_give_it_is_refused(tmp_path):
    latent, _ = broad_latent()
    cfg = AutointerpConfig(n_activating=6, n_quantiles=3, n_non_activating=4, progress=False)
    report = run_autointerp(FeatureData(meta={}, features=[latent]), TokenExplainer(), TokenJudge(), cfg,
                            out_path=tmp_path / "r.json")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["setup"]["config"] == {"n_explain": 10, "n_activating": 6, "n_quantiles": 3,
                                        "n_non_activating": 4, "seed": 0}
    assert saved["results"][0]["n_activating"] == 6 and saved["results"][0]["n_non_activating"] == 4
    assert report["summary"]["mean_n_activating"] == 6 and report["summary"]["mean_n_non_activating"] == 4
    with pytest.raises(ConfigError, match="another setup"):                # another mix is another run
        run_autointerp(FeatureData(meta={}, features=[latent]), TokenExplainer(), TokenJudge(),
                       AutointerpConfig(n_activating=8, n_quantiles=3, n_non_activating=4, progress=False),
                       out_path=tmp_path / "r.json")
    no_groups = FeatureRecord(**{**vars(record()), "quantile_groups": []})
    with pytest.raises(ConfigError, match=r"per_quantile >= 1"):
        run_autointerp(FeatureData(meta={}, features=[no_groups]), TokenExplainer(), TokenJudge(), cfg)
    no_random = FeatureRecord(**{**vars(record()), "random_examples": []})
    with pytest.raises(ConfigError, match=r"n_random >= n_non_activating"):
        run_autointerp(FeatureData(meta={}, features=[no_random]), TokenExplainer(), TokenJudge(), cfg)
    only_explained = explain_and_score(record(), TokenExplainer(), TokenJudge(), AutointerpConfig(n_explain=4))
    assert "no held-out activating example" in only_explained["error"] and only_explained["detection"] is None


# ------------------------------------------------------------------ the local server


class FakeLLM:
    """Answers like a model that believes the latent fires on "cat"; ``mode`` switches to bad answers."""

    def __init__(self):
        self.requests, self.mode, self.fail_first = [], "good", 0
        self.lock = threading.Lock()

    def answer(self, payload):
        user = payload["messages"][-1]["content"]
        if "Reply with a single line starting with 'Explanation:'" in user:
            return 'Explanation: fires on "cat".'
        if self.mode == "malformed":
            return "I think most of them do."
        if "index\ttoken" in user:
            tokens = re.findall(r"^\d+\t(.*)$", user, flags=re.M)
            return json.dumps([10 if json.loads(t) == "cat" else 0 for t in tokens])
        items = re.findall(r"^\d+\. (.*)$", user, flags=re.M)
        if "marked" in user:
            return json.dumps([int(bool(re.search(r"<<cat>>", t)) and "<<" not in re.sub(r"<<cat>>", "", t))
                               for t in items])
        return json.dumps([int(bool(re.search(r"\bcat\b", t))) for t in items])


@pytest.fixture
def server():
    fake = FakeLLM()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with fake.lock:
                fake.requests.append({"path": self.path, "payload": payload,
                                      "auth": self.headers.get("Authorization")})
                fail = fake.fail_first > 0
                fake.fail_first -= 1
            if fail:
                self.send_response(503)
                self.end_headers()
                return
            if fake.mode == "garbage":
                body = b"<html>not an API</html>"
            else:
                body = json.dumps({"choices": [{"message": {"role": "assistant",
                                                            "content": fake.answer(payload)}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield fake
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def client_for(url, tmp_path, **kw):
    return LLMClient(LLMConfig(base_url=url, model="fake-model", backoff_s=0.01, cache_dir=str(tmp_path / "cache"),
                               api_key_env="SAELAB_TEST_KEY", **kw))


def test_llm_path_prompts_parsing_and_scores(server, tmp_path, monkeypatch):
    monkeypatch.setenv("SAELAB_TEST_KEY", "sk-test")
    client = client_for(server.url, tmp_path)
    cfg = AutointerpConfig(n_explain=2, n_activating=2, n_quantiles=1, n_non_activating=3, progress=False)
    data = FeatureData(meta={}, features=[record(7)])
    report = run_autointerp(data, LLMExplainer(client), LLMJudge(client), cfg, out_path=tmp_path / "r.json")
    result = report["results"][0]
    assert result["explanation"] == 'fires on "cat".'
    assert result["detection"] == 1.0 and result["fuzzing"] == 1.0
    assert result["simulation"] == pytest.approx(1.0)
    sent = [r["payload"]["messages"][-1]["content"] for r in server.requests]
    assert all(r["path"] == "/v1/chat/completions" and r["auth"] == "Bearer sk-test" for r in server.requests)
    assert all(r["payload"]["model"] == "fake-model" for r in server.requests)
    assert "the <<cat>> sat on mat" in sent[0] and '"cat": 2.00' in sent[0]        # explain: top 2 only
    assert "my cat is old" not in sent[0]
    detection = next(s for s in sent if "activates anywhere" in s)
    assert "JSON list of 5 integers" in detection and "1. " in detection
    assert sum("index\ttoken" in s for s in sent) == 5                              # one per held-out example
    # cached: a second run makes no network call
    n = len(server.requests)
    again = run_autointerp(data, LLMExplainer(client), LLMJudge(client), cfg)
    assert again["results"] == report["results"] and len(server.requests) == n and client.cache_hits > 0


def test_malformed_replies_are_recorded_and_run_continues(server, tmp_path):
    server.mode = "malformed"
    client = client_for(server.url, tmp_path)
    data = FeatureData(meta={}, features=[record(1), record(2)])
    cfg = AutointerpConfig(n_explain=2, n_activating=2, n_quantiles=1, progress=False)
    report = run_autointerp(data, LLMExplainer(client), LLMJudge(client), cfg)
    assert [r["feature"] for r in report["results"]] == [1, 2]
    assert all("malformed reply" in r["error"] and "no JSON list" in r["error"] for r in report["results"])
    assert report["summary"]["n_errors"] == 2


def test_reply_parsers():
    assert parse_int_list("Sure: [1, 0, 1]", 3, 0, 1) == [1, 0, 1]
    with pytest.raises(ReplyFormatError, match="lists 2 values; expected 3"):
        parse_int_list("[1, 0]", 3, 0, 1)
    with pytest.raises(ReplyFormatError, match="not an integer in 0..10"):
        parse_int_list("[1, 11]", 2, 0, 10)
    with pytest.raises(ReplyFormatError, match="not valid JSON"):
        parse_int_list("[1, 'a']", 2, 0, 10)
    assert parse_explanation("Thinking...\nExplanation: the word cat") == "the word cat"
    with pytest.raises(ReplyFormatError, match="no explanation"):
        parse_explanation("line one\nline two")


def test_retries_then_succeeds(server, tmp_path):
    server.fail_first = 2
    client = client_for(server.url, tmp_path, max_retries=3)
    assert client.chat([{"role": "user", "content": "Reply with a single line starting with 'Explanation:'"}])
    assert client.calls == 3


def test_garbage_endpoint_stops_run_and_keeps_results(server, tmp_path):
    client = client_for(server.url, tmp_path)
    cfg = AutointerpConfig(n_explain=2, n_activating=2, n_quantiles=1, progress=False)
    out = tmp_path / "results.json"
    data = FeatureData(meta={}, features=[record(1), record(2), record(3)])
    run_autointerp(FeatureData(meta={}, features=[record(1)]), LLMExplainer(client), LLMJudge(client), cfg, out)
    server.mode = "garbage"
    with pytest.raises(LLMError, match=r"not an OpenAI chat completion.*1 latents scored so far are saved"):
        run_autointerp(data, LLMExplainer(client), LLMJudge(client), cfg, out)
    assert [r["feature"] for r in json.loads(out.read_text())["results"]] == [1]
    server.mode = "good"                                                          # resume: only 2 and 3 are new
    report = run_autointerp(data, LLMExplainer(client), LLMJudge(client), cfg, out)
    assert [r["feature"] for r in report["results"]] == [1, 2, 3]
    with pytest.raises(Exception, match="another setup"):
        run_autointerp(data, TokenExplainer(), TokenJudge(), cfg, out)


def test_unreachable_endpoint_message(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = client_for(f"http://127.0.0.1:{port}/v1", tmp_path, max_retries=2)
    with pytest.raises(LLMError, match=rf"127.0.0.1:{port}/v1/chat/completions after 2 attempts.*--base-url"):
        client.chat([{"role": "user", "content": "hi"}])


def test_llm_config_validation():
    with pytest.raises(Exception, match="base_url='localhost:8000'"):
        LLMConfig(base_url="localhost:8000", model="m")
    with pytest.raises(Exception, match="concurrency=0"):
        LLMConfig(base_url="http://x", model="m", concurrency=0)


def test_cli_mix_flags_reach_the_recorded_setup(tmp_path, capsys):
    import torch

    from saelab.cli import main
    from saelab.sae import SAEConfig, make_sae, save_sae

    torch.manual_seed(2)
    sae = make_sae(SAEConfig("topk", d_in=128, d_sae=32, k=4, hook_name="blocks.0.hook_resid_post"))
    folder = save_sae(sae, tmp_path / "sae", extra_meta={"model_name": "toy"})
    with pytest.raises(SystemExit) as exit_info:
        main(["autointerp", str(folder), "--features", "0-1", "--tokens", "512", "--context-size", "64",
              "--n-explain", "3", "--n-activating", "4", "--n-quantiles", "2", "--n-non-activating", "3",
              "--out", str(tmp_path / "ai"), "--json", "--no-progress"])
    assert exit_info.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["setup"]["config"] == {"n_explain": 3, "n_activating": 4, "n_quantiles": 2,
                                         "n_non_activating": 3, "seed": 0}
    for r in report["results"]:
        assert r["n_non_activating"] <= 3 and r["n_activating"] <= 4 and len(r["activating_bins"]) <= 2
    with pytest.raises(SystemExit) as exit_info:
        main(["autointerp", str(folder), "--features", "0", "--n-quantiles", "0", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2 and "n_quantiles=0" in capsys.readouterr().err
