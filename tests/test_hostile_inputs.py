"""Every endpoint against what a hostile or careless caller sends, through REST and gradio_client on the launched app.

Each case must end, within a bounded time, in either a normal answer or a sentence a person can act on (not
`{"error": null}`, not an exception's repr, not a 1 MB echo of the input), and the app must answer a normal chat
afterwards. The bodies are written as raw JSON so that NaN and lone surrogates reach the server as a client would
send them.
"""

from __future__ import annotations

import json
import re
import threading
import uuid

import httpx
import pytest
from gradio_client.exceptions import AppError

from core.config import AppConfig
from core.host import ModelHost
from tests.holds import HOLD_S
from tests.servers import launched

TIMEOUT = httpx.Timeout(120.0)  # liveness only: a request that never ends fails here instead of hanging the suite
HUGE = "a" * 1_000_000
CHAT_DEFAULTS = ["", 0.0, 1.0, 4, None, 50, 1.0]  # system_prompt .. repetition_penalty
BAD_PHRASES = ("Something went wrong", "Traceback", "Error(", "Exception")


def chat_args(message: object = "Hi", history: object = (), **changes: object) -> list:
    args = [message, list(history) if isinstance(history, tuple) else history, *CHAT_DEFAULTS]
    names = ["message", "history", "system_prompt", "temperature", "top_p", "max_new_tokens", "seed", "top_k",
             "repetition_penalty"]
    for name, value in changes.items():
        args[names.index(name)] = value
    return args


class Rest:
    """gradio's REST API as a script would use it: one session, raw JSON bodies."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(timeout=TIMEOUT)
        self.session = uuid.uuid4().hex

    def call(self, name: str, body: str) -> tuple[str, str]:
        """('complete' | 'error' | 'http NNN', the last data or message)."""
        response = self.http.post(f"{self.url}gradio_api/call/{name}", content=body.encode("utf-8", "surrogatepass"),
                                  headers={"Content-Type": "application/json"})
        if response.status_code != 200:
            return f"http {response.status_code}", response.text
        event_id = response.json()["event_id"]
        kind, data = "", ""
        with self.http.stream("GET", f"{self.url}gradio_api/call/{name}/{event_id}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    kind = line.removeprefix("event:").strip()
                elif line.startswith("data:"):
                    data = line.removeprefix("data:").strip()
        return kind, data

    def send(self, name: str, data: list | str) -> tuple[str, str]:
        raw = data if isinstance(data, str) else json.dumps(data)
        return self.call(name, f'{{"data": {raw}, "session_hash": "{self.session}"}}')


def error_message(data: str) -> str:
    return json.loads(data)["error"] if data.startswith("{") else data


# (endpoint, data as a JSON list or a Python list, expected sentence); None = a normal answer is expected
S = "\\ud800"  # a lone surrogate, as JSON spells it
CASES = [
    # chat
    ("chat", chat_args(""), "Type a message first"),
    ("chat", chat_args("   \n\t "), "Type a message first"),
    ("chat", chat_args(HUGE), "The message is 1,000,000 characters; the limit is 50,000"),
    ("chat", chat_args("\x00\x01 hi \x7f"), None),
    ("chat", f'["{S}x", [], "", 0.0, 1.0, 4, null, 50, 1.0]', "The message contains unpaired surrogate"),
    ("chat", chat_args(123), r"The message must be text \(a string\); got the number 123"),
    ("chat", chat_args(history="not a list"), "history must be a list of messages"),
    ("chat", chat_args(history=[1, 2]), "history item 0 is not a message"),
    ("chat", chat_args(history=[{"content": "x"}]), "history item 0 has no role"),
    ("chat", chat_args(history=[{"role": "robot", "content": "x"}]), "history item 0 has role 'robot'"),
    ("chat", chat_args(history=[{"role": "user", "content": 5}]), "history item 0's content must be text"),
    ("chat", f'["Hi", [{{"role": "user", "content": "{S}"}}], "", 0.0, 1.0, 4, null, 50, 1.0]',
     "history item 0 contains unpaired surrogate"),
    ("chat", chat_args(history=[{"role": "user", "content": "hi"}] * 10_001),
     "The history has 10,001 messages; the limit is 10,000"),
    ("chat", chat_args(history=[{"role": "user", "content": "x" * 600_000}] * 2),
     "more than 1,000,000 characters"),
    ("chat", chat_args(system_prompt=5), r"The system prompt must be text \(a string\)"),
    ("chat", chat_args(temperature=None), r"temperature must be a number in \[0, 5\]; got null"),
    ("chat", chat_args(temperature="hot"), r"temperature must be a number in \[0, 5\]; got 'hot'"),
    ("chat", '["Hi", [], "", NaN, 1.0, 4, null, 50, 1.0]', r"temperature must be .*; got the number nan"),
    ("chat", chat_args(temperature=1e308), "temperature must be a number"),
    ("chat", chat_args(top_p=0), r"top_p must be a number in \(0, 1\]"),
    ("chat", chat_args(top_p=None), "top_p must be a number"),
    ("chat", chat_args(max_new_tokens=-5), "max_new_tokens must be a whole number from 1 to 2,048; got the number -5"),
    ("chat", chat_args(max_new_tokens=1e30), "max_new_tokens must be a whole number"),
    ("chat", chat_args(max_new_tokens=2.5), "max_new_tokens must be a whole number"),
    ("chat", chat_args(max_new_tokens="10"), "max_new_tokens must be a whole number from 1 to 2,048; got '10'"),
    ("chat", chat_args(seed=10**30), r"seed must be empty \(random\) or a whole number from 0 to 2\^63 - 1"),
    ("chat", chat_args(seed="x"), "seed must be empty"),
    ("chat", chat_args(top_k=-1), r"top_k \(0 = off\) must be a whole number"),
    ("chat", chat_args(top_k=True), "got true"),
    ("chat", '["Hi", [], "", 0.0, 1.0, 4, null, 50, NaN]', "repetition_penalty must be a number"),
    # prompt
    ("prompt", ["", [], ""], "Type a message first"),
    ("prompt", [HUGE, [], ""], "limit is 50,000"),
    ("prompt", ["Hi", {"role": "user"}, ""], "history must be a list"),
    ("prompt", ["Hi", [], ["a list"]], "The system prompt must be text"),
    ("prompt", ["Hi\x00", [], ""], None),
    # engine_stats
    ("engine_stats", [], None),
    # tokenize
    ("tokenize", ["", ""], None),
    ("tokenize", ["   ", ""], None),
    ("tokenize", ["\x00\x07 ok", ""], None),
    ("tokenize", [HUGE, ""], "The input is 1,000,000 characters; the limit is 50,000"),
    ("tokenize", f'["{S}", ""]', "unpaired surrogate"),
    ("tokenize", [123, ""], r"The input must be text \(a string\); got the number 123"),
    ("tokenize", ["hi", 5], r"tokenizer must be text \(a string\); got the number 5"),
    ("tokenize", ["hi", HUGE], "tokenizer is 1,000,000 characters; the limit is 200"),
    ("tokenize", ["hi", "../../etc/passwd"], "is not a tokenizer here"),
    ("tokenize", ["hi", "/etc/passwd"], "is not a tokenizer here"),
    ("tokenize", ["hi", "no-such-tokenizer-xyz"], "hub is not reachable"),
    # detokenize
    ("detokenize", ["", ""], None),
    ("detokenize", ["1, 2, x", ""], "not whole numbers: 'x'"),
    ("detokenize", ["99999999", ""], "not in the vocabulary"),
    ("detokenize", ["-5", ""], "not in the vocabulary"),
    ("detokenize", ["\u0663", ""], "not whole numbers"),
    ("detokenize", [[1, 2], ""], "The ids must be given as text"),
    ("detokenize", ["1 " * 500_000, ""], "characters of ids; the limit is"),
    # compare_tokenizers
    ("compare_tokenizers", ["hi", 5], "tokenizers must be text"),
    ("compare_tokenizers", ["hi", HUGE], "tokenizers is 1,000,000 characters; the limit is 1,600"),
    ("compare_tokenizers", f'["{S}", ""]', "unpaired surrogate"),
    ("compare_tokenizers", [HUGE, ""], "limit is 50,000"),
    # neighbors
    ("neighbors", ["", 10, "cosine"], "query is empty"),
    ("neighbors", [123, 10, "cosine"], r"query must be text \(a string\); got the number 123"),
    ("neighbors", [True, 10, "cosine"], "query must be text .*; got true"),
    ("neighbors", ["#-5", 10, "cosine"], "Token ids are written #1234, a whole number from 0 to 49,151; got '#-5'"),
    ("neighbors", ["#1e3", 10, "cosine"], "Token ids are written #1234"),
    ("neighbors", ["#\u0663", 10, "cosine"], "Token ids are written #1234"),
    ("neighbors", ["#99999999", 10, "cosine"], "not in the vocabulary"),
    ("neighbors", ["king", 0, "cosine"], "k must be a whole number from 1 to 200; got the number 0"),
    ("neighbors", ["king", 201, "cosine"], "k must be a whole number from 1 to 200; got the number 201"),
    ("neighbors", ["king", "10", "cosine"], "k must be a whole number from 1 to 200; got '10'"),
    ("neighbors", '["king", NaN, "cosine"]', "k must be a whole number"),
    ("neighbors", ["king", 1e30, "cosine"], "k must be a whole number"),
    ("neighbors", ["king", True, "cosine"], "k must be a whole number from 1 to 200; got true"),
    ("neighbors", ["king", 10, HUGE], "metric must be one of cosine, centered, inner_product; got 'aaaa"),
    ("neighbors", ["king", 10, 5], "metric must be one of"),
    ("neighbors", f'["{S}", 10, "cosine"]', "unpaired surrogate"),
    ("neighbors", [HUGE, 10, "cosine"], "query is 1,000,000 characters; the limit is 100"),
    # analogy
    ("analogy", ["", "man", 10], "at least one positive"),
    ("analogy", [5, "man", 10], "positive must be comma-separated words"),
    ("analogy", [["king", 5], "man", 10], "positive must hold words"),
    ("analogy", ["king, woman", "man", 500], "k must be a whole number from 1 to 200"),
    ("analogy", ["a,b,c,d,e,f,g,h,i,j,k,l,m", "", 10], "positive has 13 words; the limit is 12"),
    ("analogy", f'["{S}", "man", 10]', "unpaired surrogate"),
    ("analogy", [HUGE, "man", 10], "Each word in positive has at most 100 characters"),
    # similarity
    ("similarity", ["king", ""], "b is empty"),
    ("similarity", ["king", 5], r"b must be text \(a string\)"),
    # doesnt_match
    ("doesnt_match", ["king, queen"], "at least three"),
    ("doesnt_match", [123], "words must be comma-separated words"),
    ("doesnt_match", [HUGE], "Each word in words has at most 100 characters"),
    # vocabulary_map
    ("vocabulary_map", [None, 10, 2], "projection must be one of pca, umap; got null"),
    ("vocabulary_map", ["<img src=x onerror=alert(1)>", 10, 2], "projection must be one of pca, umap; got '<img"),
    ("vocabulary_map", ["pca", True, 2], "limit must be a whole number from 1 to 49,152; got true"),
    ("vocabulary_map", ["pca", 1e30, 2], "limit must be a whole number from 1 to 49,152; got the number 1"),
    ("vocabulary_map", ["pca", 49_153, 2], "limit must be a whole number from 1 to 49,152; got the number 49153"),
    ("vocabulary_map", ["pca", 10, "3"], "dims must be a whole number from 2 to 3; got '3'"),
    # tokenizers, and the packaged tokenizers' keys in the other Tokens endpoints
    ("tokenizers", [], None),
    ("tokenizers", [None], None),
    ("tokenizers", [True], None),
    ("tokenizers", ["yes"], "available_only must be true or false; got 'yes'"),
    ("tokenizers", [1], "available_only must be true or false; got the number 1"),
    ("tokenizers", "[NaN]", "available_only must be true or false; got the number nan"),
    ("tokenizers", [1e308], "available_only must be true or false"),
    ("tokenizers", [[True]], "available_only must be true or false; got a list of 1 items"),
    ("tokenizers", [HUGE], "available_only must be true or false; got 'aaaa"),
    ("tokenizers", f'["{S}"]', "available_only must be true or false"),
    ("tokenizers", ["../../etc/passwd"], "available_only must be true or false"),
    ("tokenize", ["hi <|endoftext|> 🎵", "GPT4O"], None),
    ("tokenize", ["hi", "gpt4o/../../etc"], "is not a tokenizer here"),
    ("detokenize", ["9906, 100276", "gpt4"], None),
    ("detokenize", ["100256", "gpt4"], r"not in the vocabulary \(ids 0 to 100,276\): 100256"),
    ("detokenize", ["200019", "gpt4o"], "not in the vocabulary"),
    ("compare_tokenizers", ["12.0*50=600 \t\t 鸟", "gpt2, gpt4, gpt4o"], None),
    ("compare_tokenizers", ["hi", "gpt4, ../../etc/passwd, /etc/passwd"], None),
    ("compare_tokenizers", ["hi", ", ".join(["gpt4"] * 20)], "Compare at most"),
    ("compare_tokenizers", ["", "gpt4o"], None),
    ("compare_tokenizers", [None, "gpt4o"], r"The input must be text \(a string\); got null"),
    ("tokenize", ["hi", " MODEL "], None),
    # evaluate
    ("evaluate", ["mmlu", "3cosadd", 0], "benchmark must be one of all, google_analogy, wordsim353, simlex999; "
                                         "got 'mmlu'"),
    ("evaluate", ["", "3cosadd", 0], "benchmark must be one of"),
    ("evaluate", [5, "3cosadd", 0], "benchmark must be one of .*; got the number 5"),
    ("evaluate", [None, "3cosadd", 0], "benchmark must be one of .*; got null"),
    ("evaluate", ["../../etc/passwd", "3cosadd", 0], "benchmark must be one of"),
    ("evaluate", [HUGE, "3cosadd", 0], "benchmark must be one of .*; got 'aaaa"),
    ("evaluate", f'["{S}", "3cosadd", 0]', "benchmark must be one of"),
    ("evaluate", ["all", "4cosadd", 0], "method must be one of 3cosadd, 3cosmul; got '4cosadd'"),
    ("evaluate", ["all", ["3cosadd"], 0], "method must be one of .*; got a list of 1 items"),
    ("evaluate", ["all", HUGE, 0], "method must be one of"),
    ("evaluate", ["all", "3cosadd", -1], "limit must be a whole number from 0 to 5,000; got the number -1"),
    ("evaluate", ["all", "3cosadd", 5001], "limit must be a whole number from 0 to 5,000"),
    ("evaluate", ["all", "3cosadd", 1e30], "limit must be a whole number"),
    ("evaluate", '["all", "3cosadd", NaN]', "limit must be a whole number"),
    ("evaluate", ["all", "3cosadd", 2.5], "limit must be a whole number"),
    ("evaluate", ["all", "3cosadd", True], "limit must be a whole number from 0 to 5,000; got true"),
    ("evaluate", ["all", "3cosadd", "10"], "limit must be a whole number from 0 to 5,000; got '10'"),
    ("evaluate", ["wordsim353", "3cosmul", 0], None),
    # next_tokens, contextual, logit_lens, chat_logprobs (the Inside tab and Chat's answer probabilities)
    ("next_tokens", ["", 10, 1.0, 1.0, 0, False], "Type a text first"),
    ("next_tokens", ["  \n ", 10, 1.0, 1.0, 0, False], "Type a text first"),
    ("next_tokens", [HUGE, 10, 1.0, 1.0, 0, False], "The text is 1,000,000 characters; the limit is 50,000"),
    ("next_tokens", [HUGE, 10, 1.0, 1.0, 0, True], "The message is 1,000,000 characters; the limit is 50,000"),
    ("next_tokens", ["a b " * 5000, 10, 1.0, 1.0, 0, False], "the model reads at most 8,192"),
    ("next_tokens", [123, 10, 1.0, 1.0, 0, False], r"The text must be text \(a string\); got the number 123"),
    ("next_tokens", f'["{S}", 10, 1.0, 1.0, 0, false]', "unpaired surrogate"),
    ("next_tokens", ["Hi", 0, 1.0, 1.0, 0, False], "k must be a whole number from 1 to 100; got the number 0"),
    ("next_tokens", ["Hi", 1e30, 1.0, 1.0, 0, False], "k must be a whole number"),
    ("next_tokens", '["Hi", NaN, 1.0, 1.0, 0, false]', "k must be a whole number"),
    ("next_tokens", ["Hi", "10", 1.0, 1.0, 0, False], "k must be a whole number from 1 to 100; got '10'"),
    ("next_tokens", ["Hi", 10, -1, 1.0, 0, False], r"temperature must be a number in \[0, 5\]"),
    ("next_tokens", '["Hi", 10, Infinity, 1.0, 0, false]', "temperature must be a number"),
    ("next_tokens", ["Hi", 10, 1.0, 0, 0, False], r"top_p must be a number in \(0, 1\]"),
    ("next_tokens", ["Hi", 10, 1.0, 1.0, -5, False], r"top_k \(0 = off\) must be a whole number"),
    ("next_tokens", ["Hi", 10, 1.0, 1.0, 0, "yes"], "chat must be true or false; got 'yes'"),
    ("next_tokens", ["../../etc/passwd", 3, 0.0, 1.0, 0, True], None),
    ("contextual", ["", "bank", "My bank.", "bank"], "Sentence A is empty"),
    ("contextual", ["The river bank.", "money", "My bank.", "bank"], "'money' does not occur in sentence A"),
    ("contextual", ["The river bank.", "", "My bank.", "bank"], "Type the word to follow in sentence A"),
    ("contextual", ["The river bank.", 5, "My bank.", "bank"], "The word for sentence A must be text"),
    ("contextual", [HUGE, "a", "My bank.", "bank"], "Sentence A is 1,000,000 characters; the limit is 2,000"),
    ("contextual", ["The river bank.", HUGE, "My bank.", "bank"],
     "The word for sentence A is 1,000,000 characters; the limit is 100"),
    ("contextual", f'["The river bank.", "bank", "My {S}bank.", "bank"]', "unpaired surrogate"),
    ("contextual", ["The river bank.", "bank", "My bank.", "../etc/passwd"], "does not occur in sentence B"),
    ("contextual", ["The river bank.", ".*", "My bank.", "bank"], r"'\.\*' does not occur in sentence A"),
    ("contextual", ["The river bank.", ".", "My bank.", "bank"], None),
    ("contextual", ["The river bank.", "ban", "My bank.", "bank"], "'ban' is not a whole word in sentence A"),
    ("logit_lens", ["", None], "Type a text first"),
    ("logit_lens", [HUGE, None], "The text is 1,000,000 characters; the limit is 50,000"),
    ("logit_lens", ["a b " * 5000, 1], "the model reads at most 8,192"),
    ("logit_lens", [5, None], "The text must be text"),
    ("logit_lens", f'["{S}", null]', "unpaired surrogate"),
    ("logit_lens", ["Hi", 0], "max_tokens must be a whole number from 1 to 64; got the number 0"),
    ("logit_lens", ["Hi", -1], "max_tokens must be a whole number from 1 to 64"),
    ("logit_lens", ["Hi", 1e30], "max_tokens must be a whole number"),
    ("logit_lens", '["Hi", NaN]', "max_tokens must be a whole number"),
    ("logit_lens", ["Hi", "8"], "max_tokens must be a whole number from 1 to 64; got '8'"),
    ("logit_lens", ["Hi", True], "max_tokens must be a whole number from 1 to 64; got true"),
    ("logit_lens", ["Hi \x00 <|im_end|>", None], None),
    ("chat_logprobs", chat_args(""), "Type a message first"),
    ("chat_logprobs", chat_args(HUGE), "The message is 1,000,000 characters; the limit is 50,000"),
    ("chat_logprobs", f'["{S}x", [], "", 0.0, 1.0, 4, null, 50, 1.0]', "unpaired surrogate"),
    ("chat_logprobs", chat_args(history="not a list"), "history must be a list of messages"),
    ("chat_logprobs", chat_args(temperature=None), r"temperature must be a number in \[0, 5\]; got null"),
    ("chat_logprobs", '["Hi", [], "", NaN, 1.0, 4, null, 50, 1.0]', "temperature must be"),
    ("chat_logprobs", chat_args(max_new_tokens=-5), "max_new_tokens must be a whole number from 1 to 2,048"),
    ("chat_logprobs", chat_args(seed="x"), "seed must be empty"),
    ("chat_logprobs", chat_args("Hi"), None),
]


@pytest.fixture(scope="module")
def rest(app_url: str) -> Rest:
    return Rest(app_url)


@pytest.mark.parametrize(("endpoint", "data", "expected"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rest_callers_get_an_answer_or_a_sentence(rest, endpoint, data, expected):
    kind, body = rest.send(endpoint, data)
    if expected is None:
        assert kind == "complete", body[:300]
        return
    assert kind == "error", f"expected a refusal, got {kind}: {body[:300]}"
    message = error_message(body)
    assert message and isinstance(message, str), body[:300]
    assert len(message) < 400, f"the message repeats the input: {message[:200]}…"
    assert not any(phrase in message for phrase in BAD_PHRASES), message
    assert re.search(expected, message), message


HEAVY = ("evaluate", "next_tokens", "contextual", "logit_lens")  # endpoints whose work is paced and cancellable


@pytest.mark.parametrize(("endpoint", "data", "expected"), [c for c in CASES if c[0] in HEAVY and c[2]],
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES) if c[0] in HEAVY and c[2]])
def test_the_run_door_refuses_in_the_same_sentences(rest, endpoint, data, expected):
    """gradio's /run/NAME calls the function outside the queue: the same checks answer there."""
    raw = data if isinstance(data, str) else json.dumps(data)
    response = rest.http.post(f"{rest.url}gradio_api/run/{endpoint}",
                              content=f'{{"data": {raw}}}'.encode("utf-8", "surrogatepass"),
                              headers={"Content-Type": "application/json"})
    message = response.json().get("error") or ""
    assert message and not any(phrase in message for phrase in BAD_PHRASES), response.text[:300]
    assert re.search(expected, message), message


GRADIO_CLIENT_CASES = [
    (chat_args(temperature=None), "/chat", r"temperature must be a number in \[0, 5\]; got null"),
    (chat_args(seed=10**30), "/chat", "seed must be empty"),
    (chat_args(HUGE), "/chat", "limit is 50,000"),
    (chat_args(history=[{"role": "robot", "content": "x"}]), "/chat", "role 'robot'"),
    ([123, 10, "cosine"], "/neighbors", "query must be text"),
    (["king", 1e30, "cosine"], "/neighbors", "k must be a whole number"),
    (["hi", 5], "/tokenize", "tokenizer must be text"),
    (["1, 2, x", ""], "/detokenize", "not whole numbers"),
    (["yes"], "/tokenizers", "available_only must be true or false"),
    (["all", "3cosadd", -1], "/evaluate", "limit must be a whole number from 0 to 5,000"),
    (["Hi", 1e30, 1.0, 1.0, 0, False], "/next_tokens", "k must be a whole number"),
    (["The river bank.", "money", "My bank.", "bank"], "/contextual", "'money' does not occur in sentence A"),
    (["Hi", 65], "/logit_lens", "max_tokens must be a whole number from 1 to 64"),
    (chat_args(temperature=None), "/chat_logprobs", "temperature must be a number"),
]


@pytest.mark.parametrize(("args", "api_name", "expected"), GRADIO_CLIENT_CASES,
                         ids=[f"{c[1]}-{i}" for i, c in enumerate(GRADIO_CLIENT_CASES)])
def test_gradio_client_callers_get_the_same_sentences(client, args, api_name, expected):
    with pytest.raises(AppError, match=expected) as info:
        client.predict(*args, api_name=api_name)
    assert not any(phrase in str(info.value) for phrase in BAD_PHRASES[:2])


def test_rest_calls_may_leave_out_trailing_values(rest):
    kind, data = rest.send("chat", ["What is the capital of Japan?", [], "", 0.0])
    assert kind == "complete" and "Tokyo" in data
    kind, data = rest.send("neighbors", ["king"])
    assert kind == "complete" and json.loads(data)[0]["neighbors"][0]["rank"] == 1


def test_rest_calls_without_a_required_value_are_told_which(rest):
    kind, body = rest.send("neighbors", [])
    assert kind == "http 422"
    assert "/neighbors takes its values in this order: query, k, metric. 0 sent; query cannot be left out." \
        in json.loads(body)["detail"]
    kind, body = rest.send("chat", ["Hi"])
    assert kind == "http 422" and "history cannot be left out" in json.loads(body)["detail"]


@pytest.fixture(scope="module")
def tiny_host(tiny_chat, tmp_path_factory):
    """A host on a tiny random model with the bundled tokenizer: a full 8,192-token prompt prefills in a moment.
    Its ONNX conversion goes to a temporary cache: the model exists for this session only."""
    host = ModelHost.from_loaded(tiny_chat, AppConfig(model="tiny", max_queue=4, max_history_messages=200_000,
                                                      max_history_chars=4_000_000,
                                                      cache_dir=tmp_path_factory.mktemp("tiny-cache")))
    yield host
    host.close()


@pytest.fixture(scope="module")
def tiny_app(tiny_host):
    with launched(tiny_host) as url:
        yield url


def test_ten_thousand_turns_are_trimmed_and_answered(rest, tiny_app):
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi" if i % 2 == 0 else "hello"}
               for i in range(10_000)]
    kind, data = rest.send("prompt", ["What is 2+2?", history, ""])  # the bundled model's app
    assert kind == "complete", data[:300]
    prompt = json.loads(data)[0]
    assert prompt["dropped_turns"] > 8_000 and prompt["count"] <= 8192 - 256
    kind, data = Rest(tiny_app).send("chat", chat_args("What is 2+2?", history, max_new_tokens=8))
    assert kind == "complete", data[:300]


def test_after_all_that_a_normal_chat_answers(client):
    answer = client.predict("What is the capital of Japan?", [], "", 0.0, 1.0, 32, None, api_name="/chat")
    assert "Tokyo" in answer


def test_other_endpoints_answer_while_a_huge_request_is_prepared(tiny_host, tiny_app, monkeypatch):
    """While the server is preparing a huge chat request it answers /engine_stats (which says so: a prompt is being
    prepared) and a short /tokenize: preparing a request never holds the event loop. The test holds the preparation
    open until it has seen both answers, so how fast this machine prepares cannot decide the outcome; were the
    preparation on the event loop, the hold would freeze the server and neither answer would come while it lasts."""
    prompts = tiny_host.require(timeout=60).engine.prompts
    build = prompts.build
    hold = threading.Event()

    def held_build(*args, **kwargs):
        hold.wait(HOLD_S)  # bounded: a server that cannot answer while held still ends, and the test then fails
        return build(*args, **kwargs)

    monkeypatch.setattr(prompts, "build", held_build)
    events: list[tuple[str, object]] = []

    def huge_chat() -> None:
        history = [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi there"} for i in range(150_000)]
        events.append(("chat", Rest(tiny_app).send("chat", chat_args("Say OK.", history, max_new_tokens=4))[0]))

    worker = threading.Thread(target=huge_chat)
    worker.start()
    rest = Rest(tiny_app)

    def preparing() -> object:
        kind, data = rest.send("engine_stats", [])
        return json.loads(data)[0]["prompts_preparing"] if kind == "complete" else kind

    try:
        for _ in range(600):  # the huge body is still being sent and parsed until the count shows it
            seen = preparing()
            if seen or not worker.is_alive():
                break
        events.append(("stats", seen))
        events.append(("tokenize", rest.send("tokenize", ["A short text.", ""])[0]))
        events.append(("stats", preparing()))
    finally:
        hold.set()
        worker.join(120)
    assert events == [("stats", 1), ("tokenize", "complete"), ("stats", 1), ("chat", "complete")], events


@pytest.mark.parametrize("temperature", ["1e-300", "1e-40", "1e-10"])
def test_a_tiny_positive_temperature_is_greedy(rest, temperature):
    """Temperatures the range check accepts but that overflow when the logits are divided by them answer as their
    limit, greedy: /chat gives the greedy answer (not a sampler error), /next_tokens keeps the top token alone with
    its own probability."""
    kind, greedy = rest.send("chat", '["What is the capital of Japan?", [], "", 0.0, 1.0, 24]')
    kind_tiny, tiny = rest.send("chat", f'["What is the capital of Japan?", [], "", {temperature}, 1.0, 24, 5]')
    assert kind == kind_tiny == "complete" and tiny == greedy and "Tokyo" in tiny
    kind, data = rest.send("next_tokens", f'["The capital of Japan is", 3, {temperature}, 1.0, 0, false]')
    assert kind == "complete", data[:300]
    result = json.loads(data)[0]
    top = result["tokens"][0]
    assert result["kept_count"] == 1 and top["kept"] and top["prob_after"] == 1.0
    assert result["kept_mass"] == pytest.approx(top["prob"]) and result["entropy_after"] == 0
    assert not any(t["kept"] for t in result["tokens"][1:])


def test_kept_mass_never_exceeds_one(rest):
    kind, data = rest.send("next_tokens", '["The capital of Japan is", 3, 1.0, 1.0, 0, false]')
    assert kind == "complete" and json.loads(data)[0]["kept_mass"] <= 1.0
