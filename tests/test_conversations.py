"""Conversations kept in the browser, through core: the stored format and its versions, merging two tabs' edits,
the bounds, and export/import round trips with every refusal."""

from __future__ import annotations

import json

import pytest

from core.chat import store as kept
from core.chat.conversation import (
    STATS_TITLE,
    ChatSettings,
    Conversation,
    chat_messages,
    default_title,
    messages_from_chat,
)
from core.chat.transfer import ALL, MAX_IMPORT_BYTES, ONE, export_all, export_one, read_import
from core.errors import InvalidInputError

NOW = 1_800_000_000_000
SETTINGS = ChatSettings(temperature=0.3, top_p=0.9, top_k=20, repetition_penalty=1.1, max_new_tokens=77, seed=42)
LOGPROBS = [{"token": "Par", "logprob": -0.1, "bytes": [80, 97, 114],
             "top_logprobs": [{"token": "Par", "logprob": -0.1, "bytes": [80, 97, 114]}]},
            {"token": "is", "logprob": -0.01, "bytes": [105, 115], "top_logprobs": []}]
CHAT = [{"role": "user", "content": "What is the capital of France?\nAnswer briefly."},
        {"role": "assistant", "content": "Paris"},
        {"role": "assistant", "content": "9 prompt tokens · 2 generated · stop: end of turn",
         "metadata": {"title": STATS_TITLE}}]


def saved_once(store: kept.Store | None = None, chat: list | None = None, now: int = NOW) -> kept.Saved:
    return kept.save(store or kept.Store(), messages_from_chat(chat or CHAT, LOGPROBS), "Be brief.", SETTINGS,
                     None, now)


def test_a_saved_conversation_reads_back_whole():
    saved = saved_once()
    conversation = kept.read_store(saved.text).newest()
    assert conversation == saved.current
    assert conversation.title == "What is the capital of France?"
    assert conversation.system_prompt == "Be brief." and conversation.settings == SETTINGS
    assert conversation.messages[1]["stats"] == CHAT[2]["content"]
    assert conversation.answer_logprobs() == LOGPROBS
    assert chat_messages(conversation.messages) == CHAT
    data = json.loads(saved.text)
    assert data["format"] == kept.FORMAT and data["version"] == kept.VERSION


def test_probabilities_that_are_not_the_last_answers_are_not_kept():
    messages = messages_from_chat([*CHAT, {"role": "user", "content": "And Spain?"}], LOGPROBS)
    assert "logprobs" not in messages[1]
    assert "logprobs" not in messages_from_chat(CHAT, [{**LOGPROBS[0], "token": "Lyon"}])[1]


def test_the_stored_format_is_versioned():
    assert kept.read_store("").conversations == {} and kept.read_store(None).conversations == {}
    newer = json.dumps({"format": kept.FORMAT, "version": kept.VERSION + 1, "conversations": []})
    with pytest.raises(InvalidInputError, match=r"newer Token Lab.*nothing was saved over them"):
        kept.read_store(newer)
    for text in ("{not json", json.dumps({"format": "other"}), json.dumps([1, 2]),
                 json.dumps({"format": kept.FORMAT, "version": "1"})):
        with pytest.raises(InvalidInputError, match=r"could not be read.*Delete all conversations"):
            kept.read_store(text)


def test_a_broken_stored_conversation_is_left_out_and_said():
    data = json.loads(saved_once().text)
    data["conversations"].append({"id": "x", "title": "t", "created_at": 1, "updated_at": 1,
                                  "messages": [{"role": "tool", "content": "?"}]})
    store = kept.read_store(json.dumps(data))
    assert len(store.conversations) == 1
    assert len(store.skipped) == 1 and "role 'tool'" in store.skipped[0]


def test_saving_unchanged_writes_nothing_and_an_empty_chat_is_not_kept():
    first = saved_once()
    again = kept.save(first.store, messages_from_chat(CHAT, LOGPROBS), "Be brief.", SETTINGS,
                      first.current.version(), NOW + 5)
    assert again.text == "" and again.current == first.current
    assert kept.save(first.store, [], "", SETTINGS, None, NOW).text == ""
    assert kept.save(first.store, [], "", SETTINGS, first.current.version(), NOW).text == ""


def test_a_continued_conversation_keeps_its_id_title_and_start():
    first = saved_once()
    longer = [*CHAT, {"role": "user", "content": "And Spain?"}, {"role": "assistant", "content": "Madrid"}]
    second = kept.save(first.store, messages_from_chat(longer), "Be brief.", SETTINGS, first.current.version(),
                       NOW + 10)
    assert second.current.id == first.current.id and second.current.title == first.current.title
    assert second.current.created_at == NOW and second.current.updated_at == NOW + 10
    assert list(kept.read_store(second.text).conversations) == [first.current.id]


def test_two_tabs_changing_one_conversation_keep_both_and_say_so():
    start = saved_once()
    loaded = start.current.version()  # both tabs show this version
    tab_a = kept.save(start.store, messages_from_chat([*CHAT, {"role": "user", "content": "A?"}]), "Be brief.",
                      SETTINGS, loaded, NOW + 1)
    tab_b = kept.save(kept.read_store(tab_a.text), messages_from_chat([*CHAT, {"role": "user", "content": "B?"}]),
                      "Be brief.", SETTINGS, loaded, NOW + 2)
    both = kept.read_store(tab_b.text)
    assert len(both.conversations) == 2
    assert {c.messages[-1]["content"] for c in both.conversations.values()} == {"A?", "B?"}
    assert "another tab" in tab_b.note and "(this tab)" in tab_b.current.title


def test_two_tabs_on_different_conversations_merge():
    tab_a = saved_once()
    tab_b = saved_once(kept.read_store(tab_a.text), [{"role": "user", "content": "Other"}], NOW + 1)
    assert len(kept.read_store(tab_b.text).conversations) == 2


def test_two_saves_of_one_tab_that_cross_are_no_conflict():
    start = saved_once()
    longer = messages_from_chat([*CHAT, {"role": "user", "content": "more"}])
    first = kept.save(start.store, longer, "Be brief.", SETTINGS, start.current.version(), NOW + 1)
    second = kept.save(first.store, [*longer, {"role": "assistant", "content": "ok"}], "Be brief.", SETTINGS,
                       start.current.version(), NOW + 2)  # a save that raced the first one's
    assert len(second.store.conversations) == 1 and not second.note
    same = kept.save(first.store, longer, "Be brief.", SETTINGS, start.current.version(), NOW + 3)
    assert len(same.store.conversations) == 1 and not same.note


def test_deleted_in_another_tab_stays_deleted_unless_changed_here():
    start = saved_once()
    loaded = start.current.version()
    gone = kept.delete(start.store, loaded.id, NOW + 1)
    unchanged = kept.save(kept.read_store(gone.text), messages_from_chat(CHAT, LOGPROBS), "Be brief.", SETTINGS,
                          loaded, NOW + 2)
    assert unchanged.text == "" and "deleted in another tab" in unchanged.note
    changed = kept.save(kept.read_store(gone.text), messages_from_chat([*CHAT, {"role": "user", "content": "x"}]),
                        "Be brief.", SETTINGS, loaded, NOW + 3)
    assert list(kept.read_store(changed.text).conversations) == [loaded.id]


def test_rename_and_its_refusals():
    start = saved_once()
    renamed = kept.rename(start.store, start.current.id, "  Capitals\nof Europe ", NOW + 1)
    assert kept.read_store(renamed.text).newest().title == "Capitals of Europe"
    with pytest.raises(InvalidInputError, match="cannot be blank"):
        kept.rename(start.store, start.current.id, "   ", NOW)
    with pytest.raises(InvalidInputError, match="limit is 200"):
        kept.rename(start.store, start.current.id, "x" * 201, NOW)
    with pytest.raises(InvalidInputError, match="nothing to rename"):
        kept.rename(start.store, "unknown", "t", NOW)


def test_delete_all_works_even_on_unreadable_text():
    assert kept.read_store(kept.delete_all("{broken", NOW).text).conversations == {}
    start = saved_once()
    cleared = kept.delete_all(start.text, NOW + 1)
    assert kept.read_store(cleared.text).conversations == {} and start.current.id in json.loads(cleared.text)["deleted"]


def test_too_many_conversations_are_refused_before_writing(monkeypatch):
    monkeypatch.setattr(kept, "MAX_CONVERSATIONS", 1)
    start = saved_once()
    with pytest.raises(InvalidInputError, match=r"at most 1 conversations.*nothing was saved"):
        saved_once(start.store, [{"role": "user", "content": "another"}])


def test_too_much_text_drops_older_probabilities_first_then_refuses(monkeypatch):
    start = saved_once()
    later = saved_once(start.store, [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "Paris"}],
                       NOW + 1)
    with_probs = len(later.text)
    monkeypatch.setattr(kept, "MAX_STORED_CHARS", with_probs - 10)
    again = saved_once(start.store, [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "Paris"}],
                       NOW + 1)
    stored = kept.read_store(again.text)
    assert stored.conversations[start.current.id].answer_logprobs() is None  # the older one's were dropped
    assert stored.conversations[again.current.id].answer_logprobs() == LOGPROBS
    monkeypatch.setattr(kept, "MAX_STORED_CHARS", 100)
    with pytest.raises(InvalidInputError, match=r"Saving would take .* at most 100.*nothing was saved"):
        saved_once(start.store, [{"role": "user", "content": "Q"}])


def test_default_title_is_the_first_line_shortened():
    assert default_title([{"role": "user", "content": "  Hello\nworld"}]) == "Hello"
    assert default_title([{"role": "user", "content": "word " * 40}]).endswith("…")
    assert len(default_title([{"role": "user", "content": "word " * 40}])) <= 60


def test_export_import_round_trip_of_one():
    conversation = saved_once().current
    name, text = export_one(conversation)
    assert name == "token-lab-what-is-the-capital-of-france.json"
    data = json.loads(text)
    assert data["format"] == ONE and data["messages"] == [{"role": m["role"], "content": m["content"]}
                                                          for m in conversation.messages]
    (back,) = read_import(text.encode(), NOW)
    assert back.id != conversation.id
    assert [(m["role"], m["content"]) for m in back.messages] == [(m["role"], m["content"])
                                                                  for m in conversation.messages]
    assert (back.title, back.system_prompt, back.settings) == (conversation.title, "Be brief.", SETTINGS)


def test_export_import_round_trip_of_all_and_import_continues():
    first = saved_once()
    both = saved_once(first.store, [{"role": "user", "content": "Other"}], NOW + 1)
    _name, text = export_all(both.store)
    assert json.loads(text)["format"] == ALL
    imported = read_import(text.encode(), NOW + 2)
    assert [c.title for c in imported] == ["Other", "What is the capital of France?"]
    added = kept.add(both.store, imported, NOW + 2)
    assert len(kept.read_store(added.text).conversations) == 4
    more = messages_from_chat([*chat_messages(added.current.messages), {"role": "user", "content": "next"}])
    continued = kept.save(added.store, more, "", SETTINGS, added.current.version(), NOW + 3)
    assert continued.current.id == added.current.id and continued.current.messages[-1]["content"] == "next"


def test_a_plain_openai_messages_list_imports_with_its_system_prompt():
    raw = json.dumps([{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}]).encode()
    (conversation,) = read_import(raw, NOW)
    assert conversation.system_prompt == "Be kind." and conversation.settings == ChatSettings()
    assert [m["content"] for m in conversation.messages] == ["Hi", "Hello"]


def test_html_in_a_conversation_stays_text():
    hostile = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
    raw = json.dumps({"title": hostile, "messages": [{"role": "user", "content": hostile}]}).encode()
    (conversation,) = read_import(raw, NOW)
    assert conversation.title == hostile and conversation.messages[0]["content"] == hostile


@pytest.mark.parametrize("raw,match", [
    (b" " * (MAX_IMPORT_BYTES + 1), r"is 4\.0 MB; a conversation file may be at most 4 MB"),
    (b"\xff\xfe\x00junk", "not text"),
    (b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>", "HTML or XML"),
    (b"{\"messages\": [", "not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|not JSON"),
    (b"42", "not a conversation"),
    (b"[1, 2, 3]", "history item 0 is not a message"),
    (b'{"title": "x"}', "not a conversation"),
    (b'{"messages": []}', "has no messages"),
    (b'{"messages": [{"role": "tool", "content": "x"}]}', "role 'tool'"),
    (b'{"messages": [{"role": "user", "content": 5}]}', "must be text"),
    (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "unpaired surrogate"),
    (b'{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}', "only the first"),
    (b'{"messages": [{"role": "user", "content": "a"}], "settings": {"temperature": 3}}',
     r"settings\.temperature must be a number in \[0, 2\]"),
    (b'{"messages": [{"role": "user", "content": "a"}], "settings": {"seed": "x"}}', "seed"),
    (b'{"messages": [{"role": "user", "content": "a"}], "settings": []}', "must be an object"),
    (b'{"messages": [{"role": "user", "content": "a"}], "title": 7}', "title must be text"),
    (b'{"messages": [{"role": "user", "content": "a"}], "version": 9}', "format version the number 9"),
    (b'{"messages": [{"role": "user", "content": "a"}], "format": "chatgpt"}', "has format 'chatgpt'"),
    (b'{"conversations": []}', "non-empty list"),
    (b'{"conversations": [{"messages": [{"role": "user", "content": "a"}]}, 5]}', "Conversation 2 is not"),
])
def test_a_bad_import_is_refused_with_a_sentence(raw, match):
    with pytest.raises(InvalidInputError, match=match) as refused:
        read_import(raw, NOW)
    assert "imported" in str(refused.value) or "Nothing" in str(refused.value)


def test_an_import_past_the_bounds_changes_nothing(monkeypatch):
    start = saved_once()
    monkeypatch.setattr(kept, "MAX_CONVERSATIONS", 1)
    imported = read_import(export_one(start.current)[1].encode(), NOW)
    with pytest.raises(InvalidInputError, match=r"would make 2; this browser keeps at most 1.*nothing was imported"):
        kept.add(start.store, imported, NOW)
    assert list(start.store.conversations) == [start.current.id]


def test_stored_settings_outside_the_controls_are_refused():
    data = json.loads(saved_once().text)
    data["conversations"][0]["settings"]["top_k"] = 5000
    store = kept.read_store(json.dumps(data))
    assert not store.conversations and "top_k" in store.skipped[0]


def test_conversation_ids_are_checked():
    data = saved_once().current.as_stored() | {"id": "<b>x</b>"}
    with pytest.raises(InvalidInputError, match="no valid id"):
        Conversation.from_stored(data, "stored conversation 1")
