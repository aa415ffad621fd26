"""The Embeddings API on the launched app (bundled model): gradio_client and gradio's REST API."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest


def rest(app_url: str, name: str, data: list) -> tuple[str, object]:
    """POST /gradio_api/call/NAME, then read the event stream: (last event name, its decoded data)."""
    request = urllib.request.Request(f"{app_url}gradio_api/call/{name}", data=json.dumps({"data": data}).encode(),
                                     headers={"Content-Type": "application/json"})
    event_id = json.load(urllib.request.urlopen(request, timeout=30))["event_id"]
    with urllib.request.urlopen(f"{app_url}gradio_api/call/{name}/{event_id}", timeout=60) as stream:
        body = stream.read().decode()
    event = [line.removeprefix("event: ") for line in body.splitlines() if line.startswith("event: ")][-1]
    payload = [line.removeprefix("data: ") for line in body.splitlines() if line.startswith("data: ")][-1]
    assert "Traceback" not in body
    return event, json.loads(payload)


def test_neighbors_shape_and_content(client):
    result = client.predict("king", 10, "cosine", api_name="/neighbors")
    assert set(result) == {"query", "query_tokens", "neighbors"}
    assert result["query"] == "king"
    assert result["query_tokens"] == ["Ġking"]
    rows = result["neighbors"]
    assert [r["rank"] for r in rows] == list(range(1, 11))
    for row in rows:
        assert set(row) == {"rank", "id", "piece", "text", "score"}
        assert isinstance(row["id"], int) and isinstance(row["score"], float)
    assert " queen" in [r["text"] for r in rows]
    assert "Ġqueen" in [r["piece"] for r in rows]
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)


def test_neighbors_defaults_and_metrics(client):
    assert len(client.predict("king", api_name="/neighbors")["neighbors"]) == 10
    centred = client.predict("king", 5, "centered", api_name="/neighbors")
    dot = client.predict("king", 5, "inner_product", api_name="/neighbors")
    assert centred["neighbors"] != dot["neighbors"]
    assert max(r["score"] for r in dot["neighbors"]) > 1  # raw inner products, not cosines


def test_neighbors_reports_a_split_word(client):
    result = client.predict("apologizing", 3, "cosine", api_name="/neighbors")
    assert result["query_tokens"] == ["Ġapolog", "izing"]


def test_analogy_similarity_and_odd_one_out(client):
    analogy = client.predict("king, woman", "man", 3, api_name="/analogy")
    assert " queen" in [r["text"] for r in analogy["neighbors"]]
    assert analogy["query_tokens"] == ["Ġking", "Ġwoman", "Ġman"]
    assert len(client.predict("king", api_name="/analogy")["neighbors"]) == 10  # negative and k are optional
    sim = client.predict("king", "queen", api_name="/similarity")
    assert set(sim) == {"a", "b", "cosine"}
    assert sim["cosine"] == pytest.approx(0.6195, abs=1e-3)
    odd = client.predict("breakfast, cereal, dinner, lunch", api_name="/doesnt_match")
    assert odd["odd_one_out"] == "cereal"


def test_api_errors_are_clear_messages(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="query is empty: type a word"):
        client.predict("", 10, "cosine", api_name="/neighbors")
    with pytest.raises(AppError, match="metric must be one of cosine, centered, inner_product; got 'manhattan'"):
        client.predict("king", 10, "manhattan", api_name="/neighbors")
    with pytest.raises(AppError, match="at least one positive"):
        client.predict("", "man", 10, api_name="/analogy")


def test_api_is_typed_and_documented(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    neighbors = api["/neighbors"]
    assert [p["parameter_name"] for p in neighbors["parameters"]] == ["query", "k", "metric"]
    assert [p["parameter_default"] for p in neighbors["parameters"][1:]] == [10, "cosine"]
    returned = neighbors["returns"][0]["type"]
    assert set(returned["properties"]) == {"query", "query_tokens", "neighbors"}
    row = returned["properties"]["neighbors"]["items"]["properties"]
    assert set(row) == {"rank", "id", "piece", "text", "score"}
    assert [p["parameter_name"] for p in api["/analogy"]["parameters"]] == ["positive", "negative", "k"]
    assert set(api["/similarity"]["returns"][0]["type"]["properties"]) == {"a", "b", "cosine"}
    assert "word-initial" in neighbors["description"]


def test_rest_neighbors(app_url):
    event, data = rest(app_url, "neighbors", ["king", 5, "cosine"])
    assert event == "complete"
    result = data[0]
    assert result["query_tokens"] == ["Ġking"]
    assert [r["text"] for r in result["neighbors"]][:1] == [" queen"]
    event, data = rest(app_url, "similarity", ["king", "queen"])
    assert event == "complete" and data[0]["cosine"] > 0.5


def run_once(app_url: str, name: str, data: list) -> tuple[int, dict]:
    """gradio's one-request route (open where the API is open, e.g. a local run): POST /run/<name> -> JSON."""
    request = urllib.request.Request(f"{app_url}gradio_api/run/{name}", data=json.dumps({"data": data}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_one_request_route_gives_the_same_answer(app_url):
    status, body = run_once(app_url, "neighbors", ["king", 5, "cosine"])
    assert status == 200
    assert body["data"][0] == rest(app_url, "neighbors", ["king", 5, "cosine"])[1][0]
    status, body = run_once(app_url, "neighbors", ["#99999999", 5, "cosine"])
    assert status == 500 and "not in the vocabulary" in json.dumps(body)


def test_rest_error(app_url):
    event, data = rest(app_url, "neighbors", ["#99999999", 5, "cosine"])
    assert event == "error"
    assert "not in the vocabulary" in json.dumps(data)


def test_map_is_a_labelled_scatter_plot(bundled_host):
    """The 2D map's Vega-Lite spec: one point and one text label per token, labels as data (never markup)."""
    from demo.embeddings_tab import neighbors_map

    index = bundled_host.require().index
    result = index.neighbors("king", k=5)
    plot = neighbors_map(index, result, "title")
    spec = json.loads(plot.plot)
    assert plot.type == "altair" and plot.chart == "scatter"
    points = spec["data"]["values"]
    assert [p["label"] for p in points] == ["␣king", "␣queen", "␣Queen", "␣emperor", "␣prince", "␣Emperor"]
    assert [p["kind"] for p in points] == ["query"] + ["neighbour"] * 5
    marks = [layer["mark"]["type"] for layer in spec["layer"]]
    assert marks == ["point", "text"]
    assert spec["layer"][1]["encoding"]["text"]["field"] == "label"
    analogy = index.analogy("king, woman", "man", k=3)
    kinds = [p["kind"] for p in json.loads(neighbors_map(index, analogy, "t").plot)["data"]["values"]]
    assert kinds == ["positive", "positive", "negative", "answer", "answer", "answer"]
