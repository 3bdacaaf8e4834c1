"""The OpenAI-compatible endpoint client, generator and judge, against a real HTTP server on 127.0.0.1.

The server below is a stand-in for the external boundary (a hosted LLM API): a small
OpenAI-compatible chat-completions server started by the tests, answering over real HTTP so the
`openai` client's timeouts, retries and parsing run for real. It can be scripted to fail
(HTTP errors, slow responses), and as a judge it gives rule-based verdicts in ragas's JSON shapes.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from tasks.answering import EndpointAnswerer
from tasks.endpoint import EndpointError
from tasks.evaluation import NO_CONTEXT, NO_JUDGE, comparison_table, evaluate_candidate
from tasks.indexing import build_index
from tasks.metrics import ragas_judge_scores
from tasks.models import embedding_model_dir
from tasks.prompts import build_messages
from tasks.retrieval import Retriever
from tasks.settings import EndpointConfig, EvaluationConfig, GenerationConfig, IndexConfig, load_config

GEN = GenerationConfig(max_new_tokens=12, batch_size=2, stop=["###"])
DOCS = pd.DataFrame({"doc_id": ["d1", "d2"], "title": ["T4", "Office"],
                     "text": ["The TideWatch T4 buoy weighs 212 kg.", "The Kellsport office opens at 8 am."]})
QA = pd.DataFrame({"qa_id": ["q1", "q2", "q3"],
                   "question": ["How heavy is the T4 buoy?", "When does the Kellsport office open?",
                                "What does the TideWatch T4 weigh?"],
                   "answer": [["212 kg"], ["8 am"], ["212 kg"]], "doc_id": ["d1", "d2", "d1"]})
REPLIES = {"heavy": "212 kg\nIt is heavy.", "open": "9 pm ### because", "weigh": "212 kg"}


class FakeOpenAI:
    """OpenAI-compatible /v1/chat/completions on 127.0.0.1; `script` sets how successive requests fail."""

    def __init__(self, reply: Callable[[dict], str], script: list[tuple[str, float]] | None = None):
        self.reply, self.script, self.requests = reply, list(script or []), []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.requests.append(body)
                    action, value = owner.script.pop(0) if owner.script else ("ok", 0)
                try:
                    if action == "sleep":
                        time.sleep(value)
                    elif action == "status":
                        # retry-after-ms: as real APIs do, tell the client to retry soon (keeps the test short)
                        error = {"error": {"message": f"scripted {int(value)}"}}
                        self._send(int(value), error, {"retry-after-ms": "20"})
                        return
                    text = owner.reply(body)
                    self._send(200, {
                        "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": text}}],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}})
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on a slow response

            def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def generator_reply(body: dict) -> str:
    question = body["messages"][-1]["content"]
    return next(text for key, text in REPLIES.items() if key in question)


def _endpoint(url: str, **kw) -> EndpointConfig:
    return EndpointConfig.model_validate({"base_url": url, "model": "big-llm", "timeout_s": 5, "max_retries": 2,
                                          "price_per_1k_input_tokens": 0.5, "price_per_1k_output_tokens": 2.0, **kw})


@pytest.fixture(scope="module")
def retriever(tmp_path_factory) -> Retriever:
    cfg = IndexConfig(root=tmp_path_factory.mktemp("index"), top_k=1)
    return Retriever(build_index(DOCS, "fp", cfg).path, cfg)


@pytest.fixture
def generator() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(generator_reply) as server:
        yield server


def test_rag_answers_from_endpoint_with_same_prompt_usage_and_latency(generator, retriever):
    answerer = EndpointAnswerer(_endpoint(generator.url), GEN, retriever=retriever, top_k=1)
    answers = answerer.answer(QA["question"].tolist())
    assert [a.text for a in answers] == ["212 kg", "9 pm", "212 kg"]  # first line; cut at the stop string
    assert [a.sources for a in answers] == [["d1"], ["d2"], ["d1"]]
    sent = sorted(generator.requests, key=lambda b: b["messages"][-1]["content"])
    expected = sorted((build_messages(a.question, [h.text for h in a.passages], GEN) for a in answers),
                      key=lambda m: m[-1]["content"])
    assert [b["messages"] for b in sent] == expected
    assert all(b["model"] == "big-llm" and b["max_tokens"] == 12 and b["temperature"] == 0 and b["stop"] == ["###"]
               for b in sent)
    for a in answers:
        assert (a.prompt_tokens, a.new_tokens) == (100, 10)
        assert a.api_cost_usd == pytest.approx(100 / 1000 * 0.5 + 10 / 1000 * 2.0)
        assert 0 < a.retrieval_ms <= a.latency_ms and a.ttft_ms is None and a.finish_reason == "stop"


def test_retries_after_http_500_then_succeeds():
    with FakeOpenAI(generator_reply, [("status", 500), ("status", 503)]) as server:
        answers = EndpointAnswerer(_endpoint(server.url), GEN).answer(["When does the office open?"])
    assert answers[0].text == "9 pm"
    assert len(server.requests) == 3


def test_retries_after_timeout_then_succeeds():
    with FakeOpenAI(generator_reply, [("sleep", 2.0)]) as server:
        answers = EndpointAnswerer(_endpoint(server.url, timeout_s=0.3), GEN).answer(["How heavy is it?"])
    assert answers[0].text == "212 kg"
    assert len(server.requests) == 2


def test_clear_error_once_retries_are_exhausted():
    with FakeOpenAI(generator_reply, [("status", 500)] * 3) as server, \
            pytest.raises(EndpointError, match=r"127\.0\.0\.1:\d+/v1/chat/completions \(model big-llm\) failed: "
                                               r"HTTP 500 after 2 retries: .*scripted 500"):
        EndpointAnswerer(_endpoint(server.url), GEN).answer(["How heavy is it?"])
    assert len(server.requests) == 3


def test_client_errors_are_not_retried():
    with FakeOpenAI(generator_reply, [("status", 401)]) as server, \
            pytest.raises(EndpointError, match=r"HTTP 401 \(not retryable\)"):
        EndpointAnswerer(_endpoint(server.url), GEN).answer(["How heavy is it?"])
    assert len(server.requests) == 1


def test_timeouts_exhausted_name_the_timeout():
    with FakeOpenAI(generator_reply, [("sleep", 2.0)] * 2) as server, \
            pytest.raises(EndpointError, match=r"timed out \(timeout_s=0.3\) after 1 retries"):
        EndpointAnswerer(_endpoint(server.url, timeout_s=0.3, max_retries=1), GEN).answer(["How heavy is it?"])
    assert len(server.requests) == 2


def test_unreachable_endpoint_is_named():
    with FakeOpenAI(generator_reply) as server:
        url = server.url
    with pytest.raises(EndpointError, match=rf"{re.escape(url)}/chat/completions .* could not connect after 0 retries"):
        EndpointAnswerer(_endpoint(url, max_retries=0), GEN).answer(["How heavy is it?"])


def test_missing_api_key_variable_is_named(monkeypatch):
    monkeypatch.delenv("RAGTUNE_TEST_KEY", raising=False)
    with pytest.raises(EndpointError, match="RAGTUNE_TEST_KEY"):
        EndpointAnswerer(_endpoint("http://127.0.0.1:9/v1", api_key_env="RAGTUNE_TEST_KEY"), GEN)


def test_api_key_is_sent_as_bearer_token(monkeypatch, generator):
    seen = []
    generator.reply = lambda body: seen.append(body) or "212 kg"
    monkeypatch.setenv("RAGTUNE_TEST_KEY", "sk-test")
    answerer = EndpointAnswerer(_endpoint(generator.url, api_key_env="RAGTUNE_TEST_KEY"), GEN)
    assert answerer.client.client.api_key == "sk-test"
    assert answerer.answer(["How heavy is it?"])[0].text == "212 kg" and seen


def judge_reply(body: dict) -> str:
    """Rule-based judge in ragas's JSON shapes: a statement is supported if it occurs in the context,
    and an answer statement is a true positive if it equals a reference statement."""
    schema, prompt = body["messages"][0]["content"], body["messages"][-1]["content"]
    given = json.loads(prompt.rsplit("input: ", 1)[1].rsplit("Output:", 1)[0])
    if '"ClassificationWithReason"' in schema:
        truth = [s.lower() for s in given["ground_truth"]]
        return json.dumps({
            "TP": [{"statement": s, "reason": "in reference"} for s in given["answer"] if s.lower() in truth],
            "FP": [{"statement": s, "reason": "not in reference"} for s in given["answer"] if s.lower() not in truth],
            "FN": [{"statement": s, "reason": "missed"} for s in given["ground_truth"]
                   if s.lower() not in [a.lower() for a in given["answer"]]]})
    if '"NLIStatementOutput"' in schema:
        return json.dumps({"statements": [{"statement": s, "reason": "rule",
                                           "verdict": int(s.lower() in given["context"].lower())}
                                          for s in given["statements"]]})
    return json.dumps({"statements": [given["answer"]]})


def test_ragas_llm_metrics_use_the_judge_endpoint():
    rows = [{"user_input": "When does the office open?", "response": response, "reference": "8 am",
             "retrieved_contexts": ["The Kellsport office opens at 8 am."],
             "reference_contexts": ["The Kellsport office opens at 8 am."]} for response in ("8 am", "9 pm")]
    with FakeOpenAI(judge_reply) as judge:
        scores = ragas_judge_scores(rows, _endpoint(judge.url, model="judge"), embedding_model_dir(IndexConfig()))
        assert {b["model"] for b in judge.requests} == {"judge"}
    assert scores["faithfulness"] == [1.0, 0.0]
    correct, wrong = scores["answer_correctness"]
    assert correct == pytest.approx(1.0)  # 0.75 × claim F1 (1) + 0.25 × similarity (1)
    assert 0 < wrong < 0.25  # claim F1 0: only the similarity part remains


def test_judge_that_never_answers_usefully_is_an_error():
    rows = [{"user_input": "q", "response": "a", "reference": "a", "retrieved_contexts": ["a"],
             "reference_contexts": ["a"]}]
    with FakeOpenAI(lambda body: "not json") as judge, pytest.raises(EndpointError, match=re.escape(judge.url)):
        ragas_judge_scores(rows, _endpoint(judge.url, max_retries=0), embedding_model_dir(IndexConfig()))


def test_judge_metrics_absent_without_judge_and_present_with_one(generator, retriever):
    docs = dict(zip(DOCS["doc_id"], DOCS["text"], strict=True))
    answerer = EndpointAnswerer(_endpoint(generator.url), GEN, retriever=retriever, top_k=1)
    no_judge = evaluate_candidate("rag", answerer, QA, docs, EvaluationConfig(ragas=False, bootstrap_samples=50),
                                  embedding_model_dir(IndexConfig()), seed=0)
    assert no_judge.absent == {"faithfulness": NO_JUDGE, "answer_correctness": NO_JUDGE}
    assert "faithfulness" not in no_judge.metrics and "faithfulness" not in no_judge.per_question
    assert comparison_table([no_judge]).loc[0, "answer_correctness"] == "absent: no judge endpoint configured"
    assert no_judge.metrics["cost_per_1k_queries"] > 1000 * (100 / 1000 * 0.5 + 10 / 1000 * 2.0)  # tokens + compute

    with FakeOpenAI(judge_reply) as judge:
        cfg = EvaluationConfig(ragas=False, bootstrap_samples=50, judge=_endpoint(judge.url, model="judge"))
        judged = evaluate_candidate("rag", answerer, QA, docs, cfg, embedding_model_dir(IndexConfig()), seed=0)
    assert judged.absent == {}
    assert judged.per_question["faithfulness"].tolist() == [1.0, 0.0, 1.0]  # "9 pm" is not in its passage
    assert judged.metrics["faithfulness"] == pytest.approx(2 / 3)
    assert "faithfulness_ci_low" in judged.metrics and "answer_correctness" in judged.metrics


def test_closed_book_candidate_has_no_faithfulness_even_with_a_judge(generator):
    docs = dict(zip(DOCS["doc_id"], DOCS["text"], strict=True))
    with FakeOpenAI(judge_reply) as judge:
        cfg = EvaluationConfig(ragas=False, bootstrap_samples=50, judge=_endpoint(judge.url, model="judge"))
        report = evaluate_candidate("base", EndpointAnswerer(_endpoint(generator.url), GEN), QA, docs, cfg,
                                    embedding_model_dir(IndexConfig()), seed=0)
    assert report.absent == {"faithfulness": NO_CONTEXT}
    assert report.per_question["answer_correctness"].notna().all() and "faithfulness" not in report.metrics


def test_endpoint_and_judge_are_configurable_by_override():
    cfg = load_config("configs/default.yaml", [
        "generation.endpoint={base_url: 'http://127.0.0.1:8000/v1', model: big, price_per_1k_output_tokens: 0.6}",
        "evaluation.judge={base_url: 'http://127.0.0.1:8001/v1', model: judge, api_key_env: JUDGE_KEY}"])
    assert cfg.generation.endpoint.model == "big" and cfg.generation.endpoint.price_per_1k_output_tokens == 0.6
    assert cfg.evaluation.judge.api_key_env == "JUDGE_KEY" and cfg.evaluation.judge.max_retries == 3
    assert load_config("configs/default.yaml").evaluation.judge is None


def test_registered_rag_model_generates_with_the_endpoint(generator, retriever, tiny_model_dir, tmp_path):
    """The served model answers through the configured endpoint, exactly as the rag candidate was evaluated."""
    import mlflow

    from tasks.promotion import CandidateBundle, log_and_register

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = load_config("configs/default.yaml", [
        f"base_model={{path: '{tiny_model_dir}'}}", f"mlflow.tracking_uri={uri}", "index.top_k=1",
        f"generation.endpoint={{base_url: '{generator.url}', model: big-llm}}", "generation.stop=['###']"])
    previous = mlflow.get_tracking_uri()
    try:
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.create_experiment("served-rag", artifact_location=str(tmp_path / "artifacts"))
        with mlflow.start_run(experiment_id=experiment):
            log_and_register(CandidateBundle("rag", None, str(retriever.index_dir), {"test_set": "t"}), cfg, True)
        model = mlflow.pyfunc.load_model(f"models:/{cfg.champion.model_name}@champion")
    finally:
        mlflow.set_tracking_uri(previous)
    out = model.predict(pd.DataFrame({"question": QA["question"]}))
    assert out["answer"].tolist() == ["212 kg", "9 pm", "212 kg"]
    assert [json.loads(s) for s in out["sources"]] == [["d1"], ["d2"], ["d1"]]
    assert len(generator.requests) == 3 and all(b["model"] == "big-llm" for b in generator.requests)
