"""/evaluate on the launched app (bundled model) through gradio_client, with a small limit."""

from __future__ import annotations

import pytest
from gradio_client.exceptions import AppError

LIMIT = 2  # questions per analogy section: the full set is for the benchmark


@pytest.fixture(scope="module")
def evaluated(client) -> dict:
    return client.predict("all", "3cosadd", LIMIT, api_name="/evaluate")


def test_evaluate_returns_sections_coverage_and_correlations_under_both_rules(evaluated):
    assert evaluated["benchmark"] == "all" and evaluated["method"] == "3cosadd" and evaluated["limit"] == LIMIT
    assert "SmolLM2" in evaluated["model"]
    assert set(evaluated["rules"]) == set(evaluated["analogies"]) == {"single", "mean"}
    assert "word-initial token" in evaluated["rules"]["single"] and "mean of its pieces" in evaluated["rules"]["mean"]
    single, mean = evaluated["analogies"]["single"], evaluated["analogies"]["mean"]
    assert [s["section"] for s in single["sections"]][:2] == ["capital-common-countries", "capital-world"]
    assert len(single["sections"]) == 14 and single["sections"][-1]["section"] == "gram9-plural-verbs"
    for section in single["sections"]:
        assert section["questions"] == LIMIT and 0 <= section["asked"] <= LIMIT
        assert section["coverage"] == section["asked"] / LIMIT
        assert section["accuracy"] is None if not section["asked"] else section["accuracy"] == (
            section["correct"] / section["asked"])
    assert single["total"]["asked"] < mean["total"]["asked"] == 14 * LIMIT  # rule B also asks split words
    assert single["semantic"]["questions"] + single["syntactic"]["questions"] == single["total"]["questions"]
    pairs = evaluated["word_pairs"]
    assert set(pairs) == {"wordsim353", "simlex999"}
    assert pairs["wordsim353"]["single"]["pairs"] == 353 and pairs["simlex999"]["mean"]["covered"] == 999
    assert 0.3 < pairs["wordsim353"]["single"]["spearman"] < 0.5
    assert pairs["simlex999"]["single"]["computed_by"] == "gensim evaluate_word_pairs"


def test_one_benchmark_at_a_time_and_defaults(client):
    pairs_only = client.predict("simlex999", api_name="/evaluate")
    assert pairs_only["analogies"] is None and list(pairs_only["word_pairs"]) == ["simlex999"]
    assert pairs_only["method"] == "3cosadd" and pairs_only["limit"] == 0
    analogies = client.predict("google_analogy", "3cosmul", 1, api_name="/evaluate")
    assert analogies["word_pairs"] == {} and analogies["analogies"]["single"]["method"] == "3cosmul"


def test_bad_requests_are_sentences(client):
    with pytest.raises(AppError, match="benchmark must be one of all, google_analogy, wordsim353, simlex999"):
        client.predict("mmlu", "3cosadd", 0, api_name="/evaluate")
    with pytest.raises(AppError, match="limit must be a whole number from 0 to 5,000; got the number -3"):
        client.predict("all", "3cosadd", -3, api_name="/evaluate")


def test_the_endpoint_is_typed_and_documented(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/evaluate"]
    assert [p["parameter_name"] for p in api["parameters"]] == ["benchmark", "method", "limit"]
    assert [p["parameter_has_default"] for p in api["parameters"]] == [False, True, True]
