"""Log-likelihood routes of served models and the capability probe.

The vLLM (``prompt_logprobs``), SGLang (``/generate`` with ``logprob_start_len``) and legacy
``echo`` routes are tested against :class:`RouteFake`, a small loopback HTTP server of these
tests' own that implements those documented request/response shapes over a toy "model"
(tokens = whitespace-led words; a token's log-prob depends on the words before it). They
are NOT verified against a real vLLM or SGLang here (no GPU on this machine). The
``forced_tokens`` route is tested against the real llama.cpp server (``attrlens serve``) on
loopback, compared with the local embedded model on the same GGUF.
"""

from __future__ import annotations

import json
import re
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from attrlens.errors import CapabilityError, InputError, ParameterError
from attrlens.games.served import MaskedPrompt, ServedGame
from attrlens.models.openai import OpenAIBackend
from attrlens.models.routes import (
    PROBE_ORDER,
    ScoreQuery,
    make_route,
    probe_routes,
)

KEY_WORDS = ("France", "capital", "Paris")


def toy_tokens(text: str) -> list[str]:
    """Whitespace-led word tokens (the fake model's tokenizer); text == "".join(tokens)."""
    return re.findall(r"\s*\S+|\s+$", text)


def toy_logprob(prefix: str, token: str) -> float:
    """log p(token | prefix) of the fake model: shorter tokens and prompts mentioning the
    key words make it likelier."""
    missing = sum(w not in prefix for w in KEY_WORDS)
    return -0.05 * len(token.strip()) - 0.3 * missing - 0.01


def truth(prompt: str, output: str) -> np.ndarray:
    """The fake model's per-token log-probs of ``output`` after ``prompt``."""
    toks = toy_tokens(prompt + output)
    out, pos, start = [], 0, len(prompt)
    for t in toks:
        if pos + len(t) > start:
            out.append(toy_logprob((prompt + output)[:pos], t))
        pos += len(t)
    return np.asarray(out)


class RouteFake:
    """Loopback server speaking the chosen routes' documented shapes.

    routes: subset of {"prompt_logprobs", "echo", "sglang"}; ``broken``: routes that
    answer 200 with empty log-probs. Records each request body in ``bodies``.
    """

    def __init__(self, routes: set[str], *, broken: set[str] = frozenset()):
        self.routes = set(routes)
        self.broken = set(broken)
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # vLLM: /v1/completions with prompt_logprobs (dict per position, None at position 0)
    def _prompt_logprobs(self, body: dict[str, Any]) -> dict[str, Any]:
        text = body["prompt"]
        toks = toy_tokens(text)
        plp: list[Any] = [None]
        pos = len(toks[0])
        for i, t in enumerate(toks[1:], start=1):
            entry = {str(1000 + i): {"logprob": toy_logprob(text[:pos], t), "rank": 1,
                                     "decoded_token": t}}
            plp.append({} if "prompt_logprobs" in self.broken else entry)
            pos += len(t)
        return {"id": "cmpl-1", "object": "text_completion", "model": body["model"],
                "choices": [{"index": 0, "text": " x", "logprobs": None,
                             "finish_reason": "length", "prompt_logprobs": plp}],
                "usage": {"prompt_tokens": len(toks), "completion_tokens": 1}}

    # legacy completions with echo: tokens, token_logprobs, text_offset (prompt + generated)
    def _echo(self, body: dict[str, Any]) -> dict[str, Any]:
        text = body["prompt"]
        toks = toy_tokens(text) + [" x"]
        offs, lps, pos = [], [], 0
        for i, t in enumerate(toks):
            offs.append(pos)
            lps.append(None if i == 0 else toy_logprob((text + " x")[:pos], t))
            pos += len(t)
        lp = {"tokens": toks, "token_logprobs": lps, "text_offset": offs,
              "top_logprobs": None}
        if "echo" in self.broken:
            lp = {"tokens": [], "token_logprobs": [], "text_offset": []}
        return {"choices": [{"index": 0, "text": text + " x", "logprobs": lp,
                             "finish_reason": "length"}]}

    # SGLang native /generate: meta_info.input_token_logprobs from logprob_start_len on,
    # [logprob, token_id, text], the start position's log-prob empty (None)
    def _sglang(self, body: dict[str, Any]) -> dict[str, Any]:
        text = body["text"]
        toks = toy_tokens(text)
        start = int(body.get("logprob_start_len", 0))
        entries, pos = [], 0
        for i, t in enumerate(toks):
            if i >= start:
                lp = None if i == start else toy_logprob(text[:pos], t)
                entries.append([lp, 1000 + i, t])
            pos += len(t)
        if "sglang" in self.broken:
            entries = []
        return {"text": "", "meta_info": {"prompt_tokens": len(toks),
                                          "input_token_logprobs": entries,
                                          "output_token_logprobs": []}}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _send(self, code: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    self._send(200, {"data": [{"id": "toy"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.bodies.append((self.path, body))
                if self.path == "/v1/completions":
                    if "prompt_logprobs" in body and "prompt_logprobs" in owner.routes:
                        return self._send(200, owner._prompt_logprobs(body))
                    if body.get("echo") and "echo" in owner.routes:
                        return self._send(200, owner._echo(body))
                    if owner.routes & {"prompt_logprobs", "echo"}:  # a plain completion
                        return self._send(200, {"choices": [{"text": " x", "index": 0}]})
                if self.path == "/generate" and "sglang" in owner.routes:
                    return self._send(200, owner._sglang(body))
                self._send(404, {"error": {"message": "File Not Found"}})

        return H


@pytest.fixture()
def make_fake():
    made: list[RouteFake] = []

    def make(routes: set[str], **kw: Any) -> tuple[RouteFake, OpenAIBackend]:
        fake = RouteFake(routes, **kw)
        made.append(fake)
        return fake, OpenAIBackend(fake.url + "/v1", "toy", cache=False, max_retries=0)

    yield make
    for f in made:
        f.close()


PROMPT = "<|user|>\nWhat is the capital of France?\n<|assistant|>\n"
OUTPUT = "The capital is Paris."


@pytest.mark.parametrize("name", ["prompt_logprobs", "echo", "sglang"])
def test_route_reads_the_outputs_log_probs(make_fake, name):
    fake, be = make_fake({name})
    count = (lambda t: len(toy_tokens(t))) if name == "sglang" else None
    route = make_route(name, be, count_tokens=count)
    s = route.score(ScoreQuery(PROMPT, OUTPUT))
    np.testing.assert_allclose(s.logprobs, truth(PROMPT, OUTPUT), atol=1e-12)
    assert "".join(s.tokens).endswith(OUTPUT)  # a straddling token counts with the output
    if name == "sglang":  # before the output (a token early: "\n" + "The" merge here);
        # that position's log-prob comes back empty and is not used; one request only
        assert fake.bodies[-1][1]["logprob_start_len"] == len(toy_tokens(PROMPT)) - 2
        assert len(fake.bodies) == 1


def test_sglang_without_a_token_counter_asks_from_the_start(make_fake):
    fake, be = make_fake({"sglang"})
    s = make_route("sglang", be).score(ScoreQuery(PROMPT, OUTPUT))
    np.testing.assert_allclose(s.logprobs, truth(PROMPT, OUTPUT))
    assert fake.bodies[-1][1]["logprob_start_len"] == 0
    # a counter that overshoots (a different tokenizer): falls back to the whole prompt
    s2 = make_route("sglang", be, count_tokens=lambda t: 10_000).score(
        ScoreQuery(PROMPT, OUTPUT))
    np.testing.assert_allclose(s2.logprobs, truth(PROMPT, OUTPUT))


def test_probe_order_and_choice(make_fake):
    _, be = make_fake({"prompt_logprobs", "echo", "sglang"})
    r, rep = probe_routes(be)
    assert r.name == "prompt_logprobs" == rep.chosen
    _, be2 = make_fake({"echo", "sglang"})
    assert probe_routes(be2)[0].name == "sglang"
    _, be3 = make_fake({"echo"})
    r3, rep3 = probe_routes(be3)
    assert r3.name == "echo"
    assert set(rep3.missing) == {"prompt_logprobs", "sglang"}
    assert PROBE_ORDER[:3] == ("prompt_logprobs", "sglang", "echo")


def test_probe_is_one_request_per_route_and_once_per_backend(make_fake):
    fake, be = make_fake({"echo"})
    probe_routes(be)
    # prompt_logprobs (a plain completion back), sglang (404), echo: 3 requests
    assert len(fake.bodies) == 3
    probe_routes(be)
    assert len(fake.bodies) == 3


def test_probe_conclusion_is_cached_so_a_rerun_sends_nothing(make_fake, tmp_path):
    """A rerun (a new backend on the same endpoint and model, same call cache) sends no
    probe request at all: not the failed prompt_logprobs/sglang ones, not the echo one."""
    from attrlens.models.cache import CallCache

    cache = CallCache(tmp_path / "calls.sqlite")
    fake, _ = make_fake({"echo"})
    first = OpenAIBackend(fake.url + "/v1", "toy", cache=cache, max_retries=0)
    r1, rep1 = probe_routes(first)
    assert r1.name == "echo" and len(fake.bodies) == 3
    again = OpenAIBackend(fake.url + "/v1", "toy", cache=cache, max_retries=0)
    r2, rep2 = probe_routes(again)
    assert r2.name == "echo"
    assert rep2.as_dict() == rep1.as_dict()
    assert len(fake.bodies) == 3  # nothing sent
    assert again.counters["api_calls"] == 0


def test_broken_route_is_refused_loudly(make_fake):
    _, be = make_fake({"prompt_logprobs", "echo"}, broken={"prompt_logprobs"})
    with pytest.warns(UserWarning, match="prompt_logprobs.*refused.*empty"):
        r, rep = probe_routes(be)
    assert r.name == "echo" and "prompt_logprobs" in rep.broken
    _, be2 = make_fake({"prompt_logprobs", "echo"}, broken={"prompt_logprobs"})
    with pytest.raises(CapabilityError, match="broken log-probs on the route 'prompt_logprobs'"):
        probe_routes(be2, "prompt_logprobs")


def test_explicit_route_the_server_lacks_names_the_ones_it_has(make_fake):
    _, be = make_fake({"echo", "sglang"})
    with pytest.raises(CapabilityError) as err:
        probe_routes(be, "forced_tokens")
    msg = str(err.value)
    assert "does not offer the route 'forced_tokens'" in msg
    assert "It has: sglang, echo" in msg
    assert "\n" not in msg


def test_unknown_and_non_scoring_routes(make_fake):
    _, be = make_fake({"echo"})
    with pytest.raises(ParameterError, match="Unknown route 'ech'.*Did you mean 'echo'"):
        make_route("ech", be)
    with pytest.raises(ParameterError, match="gsmile"):
        make_route("generate", be)


def _masked_prompt() -> MaskedPrompt:
    from attrlens.text.prompt import Prompt
    from attrlens.text.segment import segment

    text = "What is the capital of France?"
    pr = Prompt(text=text, chat=False, regions=((0, len(text)),), messages=None,
                region_messages=())
    toks = toy_tokens(text)
    offsets, pos = [], 0
    for t in toks:
        offsets.append((pos, pos + len(t)))
        pos += len(t)
    return MaskedPrompt(pr, segment(text, pr.regions, offsets, "word"))


def test_served_game_counts_memoises_and_orders_by_prefix(make_fake):
    fake, _ = make_fake({"echo"})
    # one request at a time, so the server sees the send order
    be = OpenAIBackend(fake.url + "/v1", "toy", cache=False, max_retries=0, concurrency=1)
    route = make_route("echo", be)
    game = ServedGame(route, _masked_prompt(), " Paris.")
    n = game.n_features
    masks = np.ones((n + 1, n), dtype=bool)
    for i in range(n):
        masks[i + 1, i] = False
    rng = np.random.default_rng(0)
    shuffled = masks[rng.permutation(len(masks))]
    vals = game(shuffled)
    for z, v in zip(shuffled, vals):
        assert v == pytest.approx(truth(game.prompt.text(z), " Paris.").mean())
    sent = [b["prompt"] for p, b in fake.bodies]
    # sent in lexicographic mask order (kept first): the full prompt first, then the
    # prompts that keep the longest prefix
    assert sent[0] == "What is the capital of France? Paris."
    assert sent == [game.prompt.text(z) + " Paris." for z in
                    sorted(masks.tolist(), key=lambda r: [not x for x in r])]
    c = game.cost()
    assert (c.value_calls, c.api_calls, c.cached_calls) == (n + 1, n + 1, 0)
    game(masks)  # memo: no new calls
    assert game.cost().api_calls == n + 1
    # France/capital removed -> the output is less likely: LOO finds them
    loo = vals[np.argmax(shuffled.all(1))] - np.asarray(
        [game(np.where(np.arange(n) == i, False, True)[None])[0] for i in range(n)])
    labels = [f.label.strip() for f in game.prompt.features]
    top = {labels[i] for i in np.argsort(-loo)[:2]}
    assert top == {"capital", "France?"}


def test_served_game_uses_the_call_cache(make_fake, tmp_path):
    fake, _ = make_fake({"echo"})
    be = OpenAIBackend(fake.url + "/v1", "toy", cache_dir=tmp_path, max_retries=0)
    g1 = ServedGame(make_route("echo", be), _masked_prompt(), " Paris.")
    z = np.ones((2, g1.n_features), dtype=bool)
    z[1, 0] = False
    g1(z)
    g2 = ServedGame(make_route("echo", be), _masked_prompt(), " Paris.")
    g2(z)
    assert (g2.cost().api_calls, g2.cost().cached_calls) == (0, 2)


def test_served_game_concurrency(make_fake):
    fake, _ = make_fake({"echo"})
    be = OpenAIBackend(fake.url + "/v1", "toy", cache=False, concurrency=3)
    game = ServedGame(make_route("echo", be), _masked_prompt(), " Paris.")
    masks = np.random.default_rng(1).random((12, game.n_features)) > 0.5
    vals = game(masks)
    assert np.isfinite(vals).all() and len(fake.bodies) == len({m.tobytes() for m in masks})


# ---- the real llama.cpp server -----------------------------------------------------------
#: |mean log-prob per output token, served (llama.cpp, Q4_1 kernels) - local (transformers,
#: the same GGUF dequantised to float32)|: measured 0.009-0.048 nats on the prompts below
QUANT_TOL = 0.1
#: prompts explained with the local model's own greedy answer (word features). Measured
#: Spearman(local LOO, served LOO): 1.00 and 0.96; a third prompt ("Name a primary colour.
#: The sky is blue and grass is green.") gave 0.90 and a given output "Tom has two apples
#: left." 0.85: features with near-zero effects swap ranks under the quantisation difference
PROMPTS = [
    "What is the capital of France? Answer in one word.",
    "Tom has three apples and eats one. How many apples does Tom have left?",
]


@pytest.fixture(scope="module")
def llama_backend(llama_server):
    with OpenAIBackend(llama_server.base_url, llama_server.model_name, cache=False) as be:
        yield be


@pytest.mark.integration
def test_probe_on_llama_cpp_picks_forced_tokens(llama_backend):
    with warnings.catch_warnings(), OpenAIBackend(
        llama_backend.base_url, llama_backend.model, cache=False
    ) as backend:
        warnings.simplefilter("error")  # llama.cpp must not look like a broken route
        r, rep = probe_routes(backend)
    assert r.name == "forced_tokens"
    assert set(rep.missing) == {"prompt_logprobs", "sglang", "echo"}
    with pytest.raises(CapabilityError, match="It has: forced_tokens, top_logprobs"):
        probe_routes(llama_backend, "sglang")


@pytest.mark.integration
def test_forced_tokens_matches_local_model_and_loo_ranks_alike(llama_backend, default_model):
    from scipy.stats import spearmanr

    from attrlens import api
    from attrlens.games.served import served_game

    for prompt in PROMPTS:
        loc = api.explain(prompt, model=default_model, method="loo")
        output = loc.output_text
        inputs, scoring = api.prepare(prompt, model=default_model, output=output)
        full = np.ones((1, inputs.n_features), dtype=bool)
        game, _ = served_game(inputs, llama_backend, "forced_tokens")
        served, local = float(game(full)[0]), float(scoring(full)[0])
        assert game.n_output_tokens == len(inputs.output_ids)
        assert abs(served - local) <= QUANT_TOL, (prompt, served, local)
        srv = api.explain(prompt, model=default_model, method="loo", output=output,
                          target_backend=llama_backend, route="forced_tokens")
        assert srv.params["route"] == "forced_tokens"
        assert srv.cost["api_calls"] >= inputs.n_features + 1
        assert spearmanr(loc.scores, srv.scores).statistic >= 0.9, (prompt, loc.scores,
                                                                   srv.scores)


@pytest.mark.integration
def test_target_the_server_cannot_give_is_refused(llama_backend, default_model):
    from attrlens import api

    with pytest.raises(ParameterError, match="full distribution"):
        api.explain("Hi there", model=default_model, method="loo", output=" Hello",
                    target="kl", target_backend=llama_backend)


@pytest.mark.integration
def test_top_logprobs_route_records_its_list_and_floor(llama_backend, default_model):
    from attrlens import api

    a = api.explain("Is the sky blue? Answer yes or no.", model=default_model, method="loo",
                    output="Yes", target_backend=llama_backend, route="top_logprobs")
    assert a.params["route"] == "top_logprobs"
    d = a.extra["route_details"]
    assert d["top_k"] == 20 and d["fewest_received"] == 20 and d["floor"] == -100.0
    assert d["floored_short_list"] == 0
    # a value at the floor is one the server's list did not hold: counted, and only those
    assert d["floored"] == sum(abs(s) > 50 for s in a.scores)


@pytest.mark.integration
def test_top_logprobs_route_needs_a_one_token_output(llama_backend, default_model):
    from attrlens import api

    with pytest.raises(InputError, match="one-token outputs"):
        api.explain("Is the sky blue? Answer yes or no.", model=default_model, method="loo",
                    output="Absolutely not, it is green", target_backend=llama_backend,
                    route="top_logprobs")


def test_white_box_method_on_a_served_output_stands_in_only_when_asked(make_fake, tiny_model):
    """gilot, gradient and attention methods read the local model's internals: on a served
    model's output they ran on the local model without a word; now the local model stands
    in only with route='surrogate', the result and the terminal say so."""
    import io

    from rich.console import Console

    import attrlens
    from attrlens.report.terminal import render

    fake, be = make_fake({"echo"})
    text = "What is the capital of France?"
    for method in ("attention", "ig", "gilot"):
        with pytest.raises(ParameterError, match=f"'{method}'.*--route surrogate"):
            attrlens.explain(text, model=tiny_model, method=method, output=" Paris",
                             chat=False, target_backend=be)
    a = attrlens.explain(text, model=tiny_model, method="attention", output=" Paris",
                         chat=False, target_backend=be, route="surrogate")
    ref = attrlens.explain(text, model=tiny_model, method="attention", output=" Paris",
                           chat=False)
    np.testing.assert_allclose(a.scores, ref.scores, atol=1e-6)
    assert a.params["route"] == "surrogate" and a.model["id"] == "toy"
    assert "surrogate of the served model" in a.model["scored_by"]
    assert fake.bodies == []  # the served model was not asked anything
    out = io.StringIO()
    render(a, console=Console(file=out, width=200))
    assert re.search(r"^by +the local model .*surrogate of the served model", out.getvalue(),
                     re.MULTILINE)
    with pytest.raises(ParameterError, match="cannot run through a served route"):
        attrlens.explain(text, model=tiny_model, method="attention", output=" Paris",
                         chat=False, target_backend=be, route="echo")


class _TopListBackend:
    """A chat backend whose first token's top list is ``top`` (a dict), for the
    top_logprobs route on its own."""

    public_url = "http://127.0.0.1:1/v1"
    root_public_url = "http://127.0.0.1:1"

    def __init__(self, top: dict[str, float]):
        self.top = top

    def chat_many(self, messages, **kw):
        from attrlens.models.openai import Completion, TokenLogprob

        tok = TokenLogprob(token=next(iter(self.top)), logprob=0.0, top=dict(self.top))
        return [Completion(text=tok.token, tokens=[tok], prompt_tokens=1, completion_tokens=1,
                           cached=False, finish_reason="stop", raw={}) for _ in messages]


def test_top_logprobs_route_says_when_the_server_sent_a_shorter_list():
    from attrlens.models.routes import TopLogprobsRoute

    q = ScoreQuery(PROMPT, "No", ({"role": "user", "content": "Is it?"},))
    full = {"Yes": -0.3, **{f"t{j}": -5.0 - j for j in range(18)}, "No": -2.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a full list: no warning
        route = TopLogprobsRoute(_TopListBackend(full))
        assert route.score_many([q, q])[0].logprobs.tolist() == [-2.0]
        # 20 asked and 20 sent without the output: the floor is the route's rule, no warning
        other = {k: v for k, v in full.items() if k != "No"} | {"Maybe": -9.0}
        route20 = TopLogprobsRoute(_TopListBackend(other))
        assert route20.score_many([q])[0].logprobs.tolist() == [-100.0]
        assert route20.details()["floored"] == 1
        assert route20.details()["floored_short_list"] == 0
    # a server that sent 1 of the 20 asked: the output is floored, and it is said
    short = TopLogprobsRoute(_TopListBackend({"Yes": -0.3}))
    with pytest.warns(UserWarning, match=r"sent 1 of the 20 top log-probs.*floor -100"):
        vals = short.score_many([q, q, q])
    assert [v.logprobs.tolist() for v in vals] == [[-100.0]] * 3
    assert short.details() == {"top_k": 20, "fewest_received": 1, "floor": -100.0,
                               "floored": 3, "floored_short_list": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per route
        short.score_many([q])
    assert route.details()["floored"] == 0 and route.details()["fewest_received"] == 20


def test_forced_tokens_says_whether_the_server_stopped_early_or_ignored_the_grammar():
    from attrlens.models.routes import ForcedTokensRoute, _Broken

    route = ForcedTokensRoute(_TopListBackend({"x": 0.0}))
    route._ids["abc"] = (5, 6, 7)
    q = ScoreQuery(PROMPT, "abc")

    def probs(*ids):
        return {"completion_probabilities": [{"id": i, "logprob": -0.5, "token": "t"}
                                             for i in ids]}

    assert route.parse(q, probs(5, 6, 7)).logprobs.tolist() == [-0.5] * 3
    with pytest.raises(_Broken, match=r"stopped after 2 of the 3 forced tokens"):
        route.parse(q, probs(5, 6))
    with pytest.raises(_Broken, match="ignored the grammar"):
        route.parse(q, probs(5, 9, 7))
