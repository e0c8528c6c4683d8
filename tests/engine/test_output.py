"""Incremental detokenization: the windowed deltas add up to the whole output's text."""

from __future__ import annotations

import json

import pytest

from engine_pod.engine.output import OutputProcessor
from engine_pod.engine.request import Request
from engine_pod.model.base import SamplingParams
from engine_pod.model.tiny import ensure_tiny_model
from engine_pod.model.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(ensure_tiny_model())


@pytest.mark.parametrize(
    "text", ["plain ascii words", "naïve café — 東京 🙂 ok", "  spaces\n\tand tabs  ", "🙂🙂"]
)
def test_streamed_deltas_equal_the_decoded_output(tok, text: str) -> None:
    """Byte-level tokens split multi-byte characters: no delta holds a replacement char, and
    the deltas joined are the decode of every token (what a non-streaming answer holds)."""
    proc = OutputProcessor(tok, max_model_len=4096)
    ids = tok.encode(text)
    r = Request("r", [1], SamplingParams(max_tokens=1000, ignore_eos=True))
    deltas = []
    for t in ids:
        r.output_token_ids.append(t)
        deltas.append(proc.process_token(r).text)
    assert "".join(deltas) == tok.decode(ids) == r.text
    assert not any("\ufffd" in d for d in deltas)
    assert r.detok_read == len(ids)  # the window moved to the end: O(1) a token


def test_detokenizing_a_long_output_decodes_a_short_window_each_token(tok) -> None:
    proc = OutputProcessor(tok, max_model_len=1 << 16)
    lengths: list[int] = []
    decode = tok.decode

    class Counting:
        eos_token_id = tok.eos_token_id

        def decode(self, ids):
            lengths.append(len(ids))
            return decode(ids)

    proc.tokenizer = Counting()
    r = Request("r", [1], SamplingParams(max_tokens=1 << 16, ignore_eos=True))
    ids = tok.encode("wörds and 東京 " * 200)
    for t in ids:
        r.output_token_ids.append(t)
        proc.process_token(r)
    assert r.text == decode(ids) and len(ids) > 3000
    assert max(lengths) <= 8  # a character's bytes plus one token of context, never the output


def test_stop_string_cuts_the_streamed_text(tok) -> None:
    proc = OutputProcessor(tok, max_model_len=4096)
    r = Request("r", [1], SamplingParams(max_tokens=1000, stop=("END",)))
    out = []
    for t in tok.encode("abc ENDxyz"):
        r.output_token_ids.append(t)
        o = proc.process_token(r)
        out.append(o.text)
        if r.is_finished:
            break
    assert "".join(out) == "abc " and r.finish_reason.value == "stop"


def test_text_held_for_a_stop_string_is_sent_with_an_abort(tok) -> None:
    """An abort (a pause, a client) ends the stream with the held-back text: the deltas add
    up to every token's text. (A real engine core on the light replica's runner.)"""
    from engine_pod.config import EngineConfig
    from engine_pod.engine.core import EngineCore
    from engine_pod.model.synthetic import SyntheticModelRunner

    sent: list[dict] = []
    core = EngineCore(EngineConfig(runner="synthetic"), SyntheticModelRunner(), sent.append)
    r = Request("r", [1, 2, 3], SamplingParams(max_tokens=1000, stop=("STOP!",)))
    core.add_request(r)
    text = ""
    for t in tok.encode("hello ST"):  # tokens as the engine's steps would append them
        r.output_token_ids.append(t)
        text += core.outputs.process_token(r).text
    assert len(text) < len("hello ST")  # the tail could start "STOP!": held back
    assert core.abort(["r"]) == (["r"], [])
    flat = json.dumps(sent[-1])  # the stream's last message, as the API server gets it
    assert "hello ST"[len(text) :] in flat and '"abort"' in flat
