"""Autointerp: scores from known activations, the token baseline, and the LLM path against a local
OpenAI-compatible server (127.0.0.1, deterministic answers, shut down by the test)."""

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

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
    fuzzing_score,
    pearson,
    run_autointerp,
    simulation_score,
)
from saelab.interp.prompts import parse_explanation, parse_int_list

# ------------------------------------------------------------------ known activations: "cat" fires


def ex(words, fire_on="cat", value=2.0, mark=None):
    acts = [value if w == fire_on else 0.0 for w in words]
    m = mark if mark is not None else (acts.index(value) if value in acts else -1)
    return Example(tokens=words, acts=acts, mark=m, window=0, pos=0, act=max(acts))


POS = [ex(["the", "cat", "sat", "on", "mat"]), ex(["a", "big", "cat", "ran", "off"]),
       ex(["cat", "and", "dog", "play", "now"]), ex(["my", "cat", "is", "old", "."])]
NEG = [ex(["the", "dog", "sat", "on", "mat"], mark=-1), ex(["a", "bird", "flew", "far", "."], mark=-1),
       ex(["dogs", "and", "cows", "eat", "grass"], mark=-1)]


def record(index=0, pos=POS, neg=NEG):
    return FeatureRecord(index=index, density=0.1, n_fires=len(pos), max_act=2.0, mean_act=2.0, hist={},
                         top_examples=list(pos), random_examples=list(neg))


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
    cfg = AutointerpConfig(n_explain=2, n_score_top=2, n_score_quantile=0, n_score_random=3, progress=False)
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
    cfg = AutointerpConfig(n_explain=2, n_score_top=2, n_score_quantile=0, progress=False)
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
    cfg = AutointerpConfig(n_explain=2, n_score_top=2, n_score_quantile=0, progress=False)
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
