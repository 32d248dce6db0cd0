"""A small client for OpenAI-compatible chat endpoints: retries, concurrency and an on-disk cache.

``POST {base_url}/chat/completions`` with ``{"model", "messages", "temperature", "max_tokens"}``; the key
is read from the environment variable ``api_key_env`` (default ``OPENAI_API_KEY``; none is sent when it
is unset, as local servers need none). Connection failures, timeouts, HTTP 429 and 5xx are retried with
exponential back-off; after ``max_retries`` the call raises ``LLMError`` naming the endpoint and the
reason. A body that is not a chat completion raises ``LLMError`` too (not retried). Replies are cached
on disk by a hash of the request (``cache_dir``), so an interrupted run repeats no call.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from saelab.errors import ConfigError, SaelabError, check_range
from saelab.fileio import atomic_write_json

Messages = list[dict[str, str]]


class LLMError(SaelabError):
    """The endpoint could not be reached, refused the request, or answered something unusable."""


@dataclass
class LLMConfig:
    """Where and how to call the chat endpoint (validated at construction)."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_s: float = 1.0
    concurrency: int = 4
    temperature: float = 0.0
    max_tokens: int = 512
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url={self.base_url!r} is not accepted; give an http:// or https:// URL of an "
                              "OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1")
        if not self.model:
            raise ConfigError("model='' is not accepted; give the endpoint's model name")
        check_range("timeout_s", self.timeout_s, 0, None, lo_open=True)
        check_range("max_retries", self.max_retries, 1, 100, integer=True)
        check_range("backoff_s", self.backoff_s, 0, 600)
        check_range("concurrency", self.concurrency, 1, 256, integer=True)
        check_range("temperature", self.temperature, 0, 2)
        check_range("max_tokens", self.max_tokens, 1, None, integer=True)


class LLMClient:
    """``chat(messages) -> str`` and ``chat_many([messages, ...]) -> [str]`` (in order, concurrently)."""

    def __init__(self, cfg: LLMConfig):
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.calls = 0          # requests sent over the network
        self.cache_hits = 0

    def _payload(self, messages: Messages) -> dict:
        return {"model": self.cfg.model, "messages": messages, "temperature": self.cfg.temperature,
                "max_tokens": self.cfg.max_tokens}

    def _cache_path(self, payload: dict) -> Path | None:
        if not self.cfg.cache_dir:
            return None
        key = hashlib.sha256(json.dumps({"url": self.url, **payload}, sort_keys=True).encode()).hexdigest()
        return Path(self.cfg.cache_dir) / key[:2] / f"{key}.json"

    def chat(self, messages: Messages) -> str:
        payload = self._payload(messages)
        cache = self._cache_path(payload)
        if cache is not None and cache.exists():
            try:
                content = json.loads(cache.read_text())["content"]
                self.cache_hits += 1
                return content
            except (json.JSONDecodeError, KeyError, OSError):
                pass  # a damaged cache entry is simply asked again
        content = self._post(payload)
        if cache is not None:
            atomic_write_json(cache, {"request": payload, "content": content})
        return content

    def chat_many(self, batch: list[Messages]) -> list[str]:
        if len(batch) <= 1 or self.cfg.concurrency == 1:
            return [self.chat(m) for m in batch]
        with ThreadPoolExecutor(max_workers=min(self.cfg.concurrency, len(batch))) as pool:
            return list(pool.map(self.chat, batch))

    def _post(self, payload: dict) -> str:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        reason = ""
        for attempt in range(self.cfg.max_retries):
            if attempt:
                time.sleep(self.cfg.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            self.calls += 1
            try:
                with urllib.request.urlopen(request, timeout=self.cfg.timeout_s) as response:
                    raw = response.read()
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode("utf-8", "replace")
                if exc.code == 429 or exc.code >= 500:
                    reason = f"HTTP {exc.code} {detail}"
                    continue
                raise LLMError(f"the LLM endpoint {self.url} refused the request with HTTP {exc.code}: {detail}"
                               f" (check --model {self.cfg.model!r} and the key in ${self.cfg.api_key_env})") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                reason = str(getattr(exc, "reason", exc))
                continue
            return _completion_text(raw, self.url)
        raise LLMError(f"could not get an answer from the LLM endpoint {self.url} after {self.cfg.max_retries} "
                       f"attempts: {reason}; check --base-url and that the server is running")


def _completion_text(raw: bytes, url: str) -> str:
    """The message content of an OpenAI chat-completion body, or ``LLMError``."""
    snippet = raw[:200].decode("utf-8", "replace")
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError):
        raise LLMError(f"the LLM endpoint {url} answered something that is not an OpenAI chat completion "
                       f"(expected JSON with choices[0].message.content): {snippet!r}") from None
    if not isinstance(content, str):
        raise LLMError(f"the LLM endpoint {url} answered a completion whose content is not text: {snippet!r}")
    return content
