"""`lorakit data generate` against a scripted OpenAI-compatible server on loopback: replies with reasoning blocks,
code fences, trailing commas, malformed and truncated JSON, a 429, a 500 and a timeout; a run killed with SIGKILL
and started again writes every record exactly once."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import make_model, make_tokenizer
from typer.testing import CliRunner

from lorakit.cli import app
from lorakit.config import DataConfig, EndpointConfig, GenerateConfig, JudgeSettings
from lorakit.data import load_conversations
from lorakit.data.chunks import Document, chunk_documents, read_documents
from lorakit.data.generate import clients, generate_dataset, preview_generation
from lorakit.errors import ConfigError, DataError
from lorakit.llm_client import ChatClient, parse_json_reply, strip_think

SRC = Path(__file__).resolve().parents[1] / "src"

# One Markdown section per behaviour of the scripted server; each section becomes one chunk.
SECTIONS = {
    "ALPHA": ["What is the alpha stone?", "Who found the alpha stone?"],
    "THINK": ["Why does the river think?"],
    "FENCE": ["What is a fence for?", "Is this question truncated?"],
    "MALFORMED": None,
    "FLAKY": ["What is flaky?"],
    "RATE": ["What is a rate limit?"],
    "FIVEHUNDRED": ["What is five hundred?"],
    "SLOW": ["What is slow?"],
    "TWIN1": ["What is the twin?"],
    "TWIN2": ["What is the twin?"],
}


def _document() -> str:
    return "\n\n".join(f"# Section {marker.lower()}\n\n{marker}: a short paragraph about {marker.lower()}, which "
                       f"the scripted server recognises by its marker." for marker in SECTIONS)


# Far above what a reply takes on a loaded machine; the scripted SLOW reply waits longer still.
CLIENT_TIMEOUT = 4.0


class ScriptedServer:
    """A tiny OpenAI-compatible /v1/chat/completions whose replies depend only on the request's content (and, for
    the flaky behaviours, on how often that content was asked)."""

    def __init__(self, delay: float = 0.0):
        self.delay, self.seen, self.log, self.lock = delay, Counter(), [], threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, payload, headers = server.reply(body)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for key, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def reply(self, body: dict) -> tuple[int, dict, dict]:
        prompt = body["messages"][-1]["content"]
        with self.lock:
            self.seen[prompt] += 1
            count = self.seen[prompt]
        time.sleep(self.delay)
        marker = re.search(r"\n([A-Z0-9]+): a short paragraph", prompt)
        marker = marker[1] if marker else ""
        if count == 1 and marker == "RATE":
            return self._record(429, {"error": {"message": "slow down"}}, {"retry-after-ms": "10"})
        if count == 1 and marker == "FIVEHUNDRED" and "[Rubric]" not in prompt:
            return self._record(500, {"error": {"message": "oops"}}, {"retry-after-ms": "10"})
        late = count == 1 and marker == "SLOW"
        text, finish = self._text(prompt, marker, count)
        usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4,
                 "total_tokens": len(prompt) // 4 + len(text) // 4}
        answer = self._record(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                    "usage": usage, "choices": [{"index": 0, "finish_reason": finish, "message": {
                                        "role": "assistant", "content": text}}]}, {}, late)
        if late:  # recorded on arrival, so the log is complete whenever the run ends
            time.sleep(CLIENT_TIMEOUT + 3)  # the client gives up on this reply and asks again
        return answer

    def _record(self, status: int, payload: dict, headers: dict, late: bool = False) -> tuple[int, dict, dict]:
        with self.lock:
            self.log.append((status, None if late else payload.get("usage")))
        return status, payload, headers

    @staticmethod
    def _text(prompt: str, marker: str, count: int) -> tuple[str, str]:
        if "[Rubric]" in prompt:
            if "five hundred" in prompt:
                return "I like it.", "stop"
            score = 3 if "Who found" in prompt else 8
            verdict = f'```json\n{{"score": {score}, "reason": "scripted",}}\n```'
            return (f"<think>weighing it</think>{verdict}" if marker == "THINK" else verdict), "stop"
        if "[Question]" in prompt:
            question = prompt.split("[Question]\n")[1].split("\n")[0]
            if "truncated" in question:
                return '{"answer": "cut sh', "length"
            return f"The answer to '{question}' is in the {marker.lower()} paragraph.", "stop"
        if prompt.startswith("Summarise"):
            return f"<think>short</think>A summary of {marker.lower()}.", "stop"
        if "multi-turn conversation" in prompt:
            turns = [{"role": "user", "content": f"Tell me about {marker.lower()}."},
                     {"role": "assistant", "content": "It is a marker."},
                     {"role": "user", "content": "Why?"}, {"role": "assistant", "content": "The server says so."}]
            return json.dumps({"messages": turns}), "stop"
        questions = SECTIONS.get(marker, ["What is the twin?"] if marker.startswith("TWIN") else None)
        if questions is None or (marker == "FLAKY" and count == 1):
            return "Sorry, here are some questions: 1. what? 2. why?", "stop"
        reply = json.dumps({"questions": questions})
        if marker == "THINK":
            return f'<think>Maybe {{"questions": ["wrong"]}}?</think>\n{reply}', "stop"
        if marker == "FENCE":
            return "Here you go:\n```json\n" + reply[:-2] + ",],}\n```\nDone.", "stop"
        return reply, "stop"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    scripted = ScriptedServer()
    yield scripted
    scripted.close()


def _config(server, tmp_path, **changes) -> GenerateConfig:
    document = tmp_path / "docs" / "notes.md"
    if not document.exists():
        document.parent.mkdir(parents=True)
        document.write_text(_document(), encoding="utf-8")
    generator = EndpointConfig(base_url=server.url, model="gen-1", timeout=CLIENT_TIMEOUT, max_retries=2,
                               concurrency=3, **changes.pop("generator", {}))
    values = {"input": document.parent, "output_dir": tmp_path / "out", "generator": generator,
              "judge": JudgeSettings(model="judge-1", threshold=6), "chunk_chars": 400, "chunk_overlap": 0,
              **changes}
    return GenerateConfig(**values)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_replies_are_parsed_retried_judged_and_counted(server, tmp_path):
    config = _config(server, tmp_path)

    report = generate_dataset(config, *clients(config))

    assert (report.chunks, report.items, report.generated, report.kept) == (10, 12, 10, 8)
    assert report.rejected == {"score below 6": 1, "unusable generation reply": 2, "unusable judge reply": 1}
    assert report.parse_failures == 3  # malformed questions, a truncated answer, a judge reply without JSON
    assert report.retried_replies == 4  # each of those asked twice, and FLAKY's first reply
    assert report.scores == {"3": 1, "8": 8} and report.complete
    assert report.requests == len(server.log)  # the 429, the 500 and the timed-out request counted
    statuses = [status for status, _ in server.log]
    assert (statuses.count(429), statuses.count(500)) == (3, 2)  # the first of each RATE and FIVEHUNDRED request
    assert report.prompt_tokens == sum(usage["prompt_tokens"] for _, usage in server.log if usage)
    out = config.output_dir
    kept = _lines(out / "generated.jsonl")
    assert [record["instruction"] for record in kept] == [
        "What is the alpha stone?", "Why does the river think?", "What is a fence for?", "What is flaky?",
        "What is a rate limit?", "What is slow?", "What is the twin?", "What is the twin?"]
    assert kept[0]["_source"].endswith("notes.md") and kept[0]["_generator"] == "gen-1"
    assert (kept[0]["_judge"], kept[0]["_score"], kept[0]["_reason"]) == ("judge-1", 8.0, "scripted")
    text = Path(kept[0]["_source"]).read_text(encoding="utf-8")
    start, end = kept[0]["_span"]
    assert "ALPHA" in text[start:end] and kept[0]["_chunk"] == f"{kept[0]['_source']}:{start}-{end}"
    rejects = {(record["reason"], record.get("error")) for record in _lines(out / "rejects.jsonl")}
    assert ("score below 6", None) in rejects
    raw = {record["raw"] for record in _lines(out / "rejects.jsonl") if record["reason"] != "unusable judge reply"}
    assert "Sorry, here are some questions: 1. what? 2. why?" in raw and '{"answer": "cut sh' in raw
    saved = json.loads((out / "generate_report.json").read_text())
    assert saved["kept"] == 8 and (out / "scores.png").stat().st_size > 1000
    conversations, _ = load_conversations(DataConfig(paths=("generated",), dataset_dir=out))
    assert len(conversations) == 8 and conversations[0].messages[1]["content"].startswith("The answer to")


@pytest.mark.parametrize("output_format, output_file", [("sharegpt", None), ("openai", None),
                                                        ("alpaca", "qa.json")])
def test_every_output_format_loads_through_the_registry(server, tmp_path, output_format, output_file):
    config = _config(server, tmp_path, output_format=output_format, max_chunks=2, mode="qa",
                     output_file=output_file)

    generate_dataset(config, *clients(config))

    conversations, _ = load_conversations(DataConfig(paths=("generated",), dataset_dir=config.output_dir))
    assert [c.messages[0]["content"] for c in conversations] == ["What is the alpha stone?",
                                                                 "Why does the river think?"]
    if output_file is not None:  # one JSON array, not JSON lines
        records = json.loads((config.output_dir / output_file).read_text(encoding="utf-8"))
        assert [record["instruction"] for record in records] == [c.messages[0]["content"] for c in conversations]
        assert not (config.output_dir / "generated.jsonl").exists()
    with pytest.raises(ConfigError, match="output_file must be a file name ending in .jsonl or .json"):
        _config(server, tmp_path, output_file="sub/qa.csv")


def test_changed_settings_are_refused_threshold_is_not_and_force_starts_over(server, tmp_path):
    config = _config(server, tmp_path, max_chunks=1)
    generate_dataset(config, *clients(config))
    requests = len(server.log)

    with pytest.raises(ConfigError, match="other settings \\(they differ in: chunk_chars\\).*force=true"):
        changed = _config(server, tmp_path, max_chunks=1, chunk_chars=300)
        generate_dataset(changed, *clients(changed))
    stricter = _config(server, tmp_path, max_chunks=1, judge=JudgeSettings(model="judge-1", threshold=9))
    report = generate_dataset(stricter, *clients(stricter))
    assert (report.kept, report.resumed, len(server.log)) == (0, 2, requests)  # nothing asked again
    forced = _config(server, tmp_path, max_chunks=1, chunk_chars=300, force=True)
    assert generate_dataset(forced, *clients(forced)).resumed == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("x")
    with pytest.raises(ConfigError, match="already holds other files"):
        elsewhere = _config(server, tmp_path, output_dir=tmp_path / "other")
        generate_dataset(elsewhere, *clients(elsewhere))


def test_a_spent_request_budget_stops_early_and_a_rerun_goes_on(server, tmp_path):
    config = _config(server, tmp_path, max_chunks=2, generator={"max_requests": 3})

    first = generate_dataset(config, *clients(config))

    assert not first.complete and "max_requests" in first.stopped
    assert first.run_requests == first.requests == len(server.log) <= 3 + 2  # the judge has its own budget
    config = _config(server, tmp_path, max_chunks=2)
    report = generate_dataset(config, *clients(config))
    assert report.complete and (report.items, report.kept) == (3, 2) and report.resumed >= 1
    # The report counts what both runs used, and this run's own apart.
    assert report.requests == len(server.log) and report.run_requests == len(server.log) - first.requests
    assert report.prompt_tokens == sum(usage["prompt_tokens"] for _, usage in server.log if usage)
    assert report.run_prompt_tokens == report.prompt_tokens - first.prompt_tokens > 0
    assert json.loads((config.output_dir / "generate_report.json").read_text())["requests"] == len(server.log)


def test_summary_dialogue_continuation_and_custom_modes(server, tmp_path):
    template = tmp_path / "prompt.j2"
    template.write_text("From {{ source }} ({{ language }}):\n{{ chunk }}\nWrite one Q&A as JSON.")
    config = _config(server, tmp_path, mode="continuation", judge=JudgeSettings(enabled=False), max_chunks=3)

    report = generate_dataset(config, *clients(config))

    assert (report.items, report.kept, report.requests) == (2, 2, 0)  # continuation asks no model
    kept = _lines(config.output_dir / "generated.jsonl")
    assert kept[0]["instruction"].startswith("Continue the following text.") and "THINK:" in kept[0]["output"]
    summary = _config(server, tmp_path, mode="summary", output_dir=tmp_path / "summary", max_chunks=2)
    assert generate_dataset(summary, *clients(summary)).kept == 2
    assert _lines(summary.output_dir / "generated.jsonl")[1]["output"] == "A summary of think."
    dialogue = _config(server, tmp_path, mode="dialogue", output_dir=tmp_path / "dialogue", max_chunks=1,
                       output_format="sharegpt")
    assert generate_dataset(dialogue, *clients(dialogue)).kept == 1
    conversations, _ = load_conversations(DataConfig(paths=("generated",), dataset_dir=dialogue.output_dir))
    assert [message["role"] for message in conversations[0].messages] == ["user", "assistant"] * 2
    custom = _config(server, tmp_path, mode="custom", template=template, output_dir=tmp_path / "custom",
                     max_chunks=1)
    chunks, items = preview_generation(custom, *clients(custom))
    assert len(chunks) == 1 and items[0]["error"] and not (tmp_path / "custom").exists()  # preview writes nothing
    with pytest.raises(ConfigError, match="mode custom needs template"):
        _config(server, tmp_path, mode="custom")


def test_chunks_follow_headings_paragraphs_and_chinese_sentences(tmp_path):
    text = ("# 第一回\n\n灵根育孕源流出，心性修持大道生。盖闻天地之数，有十二万九千六百岁为一元。"
            "将一元分为十二会，乃子、丑、寅、卯、辰、巳、午、未、申、酉、戌、亥之十二支也！\n\n"
            "# Chapter 2\n\nIt was the best of times. It was the worst of times! Was it? Yes.\n\nShort.")
    chunks = chunk_documents([Document("book.md", text)], max_chars=40, overlap=12)

    assert all(text[chunk.start:chunk.end] == chunk.text and len(chunk.text) <= 40 for chunk in chunks)
    assert [chunk.heading for chunk in chunks][0] == "第一回" and chunks[-1].heading == "Chapter 2"
    assert chunks[0].language == "zh" and chunks[-1].language == "en"
    assert all(chunk.text.rstrip().endswith(("。", "！", ".", "!", "?", "生。")) or chunk.text.endswith("Short.")
               or chunk.text.startswith("#") for chunk in chunks)
    assert not any("第一回" in chunk.text and "Chapter" in chunk.text for chunk in chunks)  # never across a heading
    assert any(a.end > b.start for a, b in zip(chunks, chunks[1:]) if a.source == b.source)  # some overlap
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"body": 1}\n')
    with pytest.raises(DataError, match="bad.jsonl, line 2: needs a string field 'text'"):
        read_documents(tmp_path / "bad.jsonl")


def _pdf(pages: list[list[str]]) -> bytes:
    """A PDF of `pages`, each a list of text lines in Helvetica, written out by hand (pypdf reads PDFs but does
    not typeset text): catalog, page tree, font, then a page and its content stream per page, and the xref table."""
    count = len(pages)
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % (4 + 2 * n) for n in range(count)),
                                                             count),
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for number, lines in enumerate(pages):
        escaped = [line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for line in lines]
        stream = ("BT /F1 12 Tf 16 TL 72 720 Td " + " T* ".join(f"({line}) Tj" for line in escaped) + " ET").encode()
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> "
                       b">> /Contents %d 0 R >>" % (5 + 2 * number))
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_pdf_chunks_keep_their_page_span_into_each_record(tmp_path):
    pages = [["The alpha stone lies by the river.", "It was found in spring."], ["The beta stone is red."],
             ["The gamma stone is the largest of the three stones and sits on the hill above the old mill. "
              "Nobody has ever moved it. It is said to be older than the village itself."]]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "stones.pdf").write_bytes(_pdf(pages))

    documents = read_documents(tmp_path / "docs")
    chunks = chunk_documents(documents, max_chars=100)

    assert len(documents) == 1 and "The beta stone is red." in documents[0].text
    assert all(documents[0].text[chunk.start:chunk.end] == chunk.text for chunk in chunks)
    assert "alpha stone" in chunks[0].text and "beta stone" in chunks[0].text and chunks[0].pages == (1, 2)
    assert len(chunks) >= 3 and all(chunk.pages == (3, 3) for chunk in chunks[1:])
    assert "gamma" in chunks[1].text and "village" in chunks[-1].text
    config = GenerateConfig(input=tmp_path / "docs", output_dir=tmp_path / "out", chunk_chars=100, chunk_overlap=0,
                            mode="continuation", judge=JudgeSettings(enabled=False),
                            generator=EndpointConfig(base_url="http://unused.test/v1", model="none"))
    generate_dataset(config, *clients(config))  # continuation asks no model
    assert [record["_pages"] for record in _lines(config.output_dir / "generated.jsonl")] == [[3, 3]] * (
        len(chunks) - 1)
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    with pytest.raises(DataError, match="broken.pdf: not a readable PDF"):
        read_documents(tmp_path / "broken.pdf")


def test_docx_headings_paragraphs_and_tables_become_chunks(tmp_path):
    import docx

    document = docx.Document()
    document.add_heading("Returns", level=1)
    document.add_paragraph("Items can be returned within 30 days of delivery.")
    table = document.add_table(rows=2, cols=2)
    for row, cells in zip(table.rows, [("item", "days"), ("shoes", "30")]):
        for cell, text in zip(row.cells, cells):
            cell.text = text
    document.add_heading("Shipping", level=2)
    document.add_paragraph("Orders ship within two working days.")
    document.save(tmp_path / "policy.docx")

    documents = read_documents(tmp_path / "policy.docx")
    chunks = chunk_documents(documents, max_chars=200)

    assert documents[0].text == ("# Returns\n\nItems can be returned within 30 days of delivery.\n\n"
                                 "item | days\nshoes | 30\n\n## Shipping\n\nOrders ship within two working days.")
    assert [chunk.heading for chunk in chunks] == ["Returns", "Shipping"] and chunks[0].pages is None
    assert "shoes | 30" in chunks[0].text and "ship within" in chunks[1].text


def test_reply_parsing_is_tolerant():
    assert strip_think("<think>a {\"x\": 1}</think>\n answer") == "answer"
    assert strip_think("<think>never closed {\"x\": 1}") == ""
    assert strip_think("cut</think>rest") == "rest"
    assert parse_json_reply('Sure:\n```json\n{"a": [1, 2,],}\n```') == {"a": [1, 2]}
    assert parse_json_reply('<think>{"a": 0}</think> text {"a": 1} more') == {"a": 1}
    assert parse_json_reply('["q1", "q2",]', list) == ["q1", "q2"]
    assert parse_json_reply('{"a": "unterminated') is None


def test_a_killed_run_restarted_writes_every_record_exactly_once(tmp_path):
    slow = ScriptedServer(delay=0.05)
    try:
        docs = tmp_path / "docs"
        docs.mkdir()
        (docs / "book.md").write_text("\n\n".join(
            f"# Part {n}\n\nTWIN{n}: a short paragraph about part {n}, which the scripted server recognises."
            for n in range(1, 13)), encoding="utf-8")
        args = [sys.executable, "-m", "lorakit.cli", "data", "generate", "-i", str(docs), "-o", str(tmp_path / "out"),
                "--base-url", slow.url, "--model", "gen-1", "generator.concurrency=2", "chunk_chars=300",
                "chunk_overlap=0"]
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        checkpoint = tmp_path / "out" / "checkpoint.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if checkpoint.exists() and checkpoint.read_text().count('"index": 0') >= 4:
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert not (tmp_path / "out" / "generated.jsonl").exists()  # killed mid-way
        finished = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        assert finished.returncode == 0, finished.stdout + finished.stderr
    finally:
        slow.close()

    records = _lines(tmp_path / "out" / "generated.jsonl")
    assert len(records) == 12 and len({record["_chunk"] for record in records}) == 12
    assert [record["instruction"] for record in records] == ["What is the twin?"] * 12  # identical, all kept
    items = [line for line in _lines(checkpoint)[1:] if line.get("index", "questions") != "questions"]
    assert sorted(Counter((line["chunk"], line["index"]) for line in items).values()) == [1] * 12
    assert "from the checkpoint" in finished.stdout
    report = json.loads((tmp_path / "out" / "generate_report.json").read_text())
    # The killed run's recorded requests count too: the totals exceed the resumed run's own.
    assert report["run_requests"] < report["requests"] <= len(slow.log)
    assert report["run_prompt_tokens"] < report["prompt_tokens"]


def test_preview_shows_chunks_and_the_first_records_as_written(server, tmp_path):
    config = _config(server, tmp_path)
    output = config.output_dir

    result = CliRunner().invoke(app, ["data", "generate", "-i", str(config.input), "-o", str(output),
                                      "--base-url", server.url, "--model", "gen-1", "--judge-model", "judge-1",
                                      "chunk_chars=400", "chunk_overlap=0", "--preview"])

    assert result.exit_code == 0, result.output
    assert "--- chunk" in result.output and "10 chunks in all; the first 3 records" in result.output
    records = [json.loads(block) for block in re.findall(r"^\{\n.*?^\}$", result.output, re.S | re.M)]
    assert [record["kept"] for record in records] == [True, False, True]  # the second scores 3
    assert records[0]["instruction"] == "What is the alpha stone?" and records[0]["_score"] == 8.0
    assert records[1]["reason"] == "score below 6"
    assert not output.exists()  # nothing written
    asked = sum(server.seen.values())
    assert asked <= 8  # the first two chunks only, not the whole corpus
    both = CliRunner().invoke(app, ["data", "generate", "-i", str(config.input), "-o", str(output), "--model", "m",
                                    "--local", "smollm2-135m"])
    assert isinstance(both.exception, ConfigError) and "Give --local MODEL" in str(both.exception)


def _tiny_local_model(folder: Path) -> Path:
    """A tiny random llama with the test tokenizer, saved as a model folder; its context fits whole prompts."""
    tokenizer = make_tokenizer()
    model = make_model("llama", len(tokenizer))
    model.config.max_position_embeddings = 4096  # rotary positions: any length runs
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_local_model_generates_and_judges_on_the_same_road(tmp_path):
    """`backend: local`: the generator and the judge are a model loaded here, answered by lorakit's own batched
    generation. A random model writes garbage: every reply must still be accounted for, as with an endpoint."""
    model_dir = _tiny_local_model(tmp_path / "tiny")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.md").write_text("\n\n".join(f"# Part {n}\n\nPart {n} is a short paragraph about the number {n}."
                                                for n in range(1, 4)), encoding="utf-8")
    generator = EndpointConfig(backend="local", model=str(model_dir), max_tokens=8, concurrency=2)
    config = GenerateConfig(input=docs, output_dir=tmp_path / "qa", generator=generator, chunk_chars=100,
                            chunk_overlap=0, temperature=0.0)
    generator_client, judge_client = clients(config)
    assert judge_client.model is generator_client.model  # loaded once
    try:
        report = generate_dataset(config, generator_client, judge_client)
        continuation = replace(config, mode="continuation", output_dir=tmp_path / "continued")
        continued = generate_dataset(continuation, generator_client, judge_client)
    finally:
        generator_client.close()

    assert report.chunks == report.items == 3 and report.kept == report.generated == 0  # no JSON in garbage
    assert report.rejected == {"unusable generation reply": 3} and report.parse_failures == 3
    assert report.requests == report.retried_replies * 2 == 6  # each chunk's questions asked twice
    assert 0 < report.completion_tokens <= report.requests * 8 and report.prompt_tokens > 100 * report.requests
    rejects = _lines(config.output_dir / "rejects.jsonl")
    assert len(rejects) == 3 and all(isinstance(line["raw"], str) and line["error"] for line in rejects)
    assert rejects[0]["_generator"] == str(model_dir)
    assert continued.items == 2 and continued.rejected == {"unusable judge reply": 2}  # judged, never dropped
    assert continued.requests == 4 and continued.completion_tokens > 0
    checkpoint = _lines(continuation.output_dir / "checkpoint.jsonl")
    assert checkpoint[0]["settings"]["judge"]["endpoint"] == {"backend": "local", "model": str(model_dir),
                                                              "adapter": None}


def test_a_local_generator_with_an_adapter(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model_dir = _tiny_local_model(tmp_path / "tiny")
    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                             LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    adapted.save_pretrained(tmp_path / "adapter")
    docs = tmp_path / "notes.txt"
    docs.write_text("A short note about adapters, long enough to be one chunk of its own.", encoding="utf-8")
    generator = EndpointConfig(backend="local", model=str(model_dir), adapter=tmp_path / "adapter", max_tokens=4,
                               concurrency=1)
    config = GenerateConfig(input=docs, output_dir=tmp_path / "out", generator=generator, mode="summary",
                            judge=JudgeSettings(enabled=False))
    generator_client, _ = clients(config)
    try:
        report = generate_dataset(config, generator_client, None)
    finally:
        generator_client.close()

    assert report.items == 1 and report.kept + sum(report.rejected.values()) == 1 and report.requests in (1, 2)
    written = _lines(config.output_dir / ("generated.jsonl" if report.kept else "rejects.jsonl"))
    assert written[0]["_generator"] == f"{model_dir} + {tmp_path / 'adapter'}"
    with pytest.raises(ConfigError, match="adapter is set but backend is openai"):
        EndpointConfig(base_url="http://x.test/v1", model="m", adapter=tmp_path / "adapter")
    with pytest.raises(ConfigError, match="backend must be one of openai, local"):
        EndpointConfig(backend="locale", model="m")


def test_the_judge_shares_the_one_client():
    from lorakit.eval.judge import OpenAIJudge

    assert issubclass(OpenAIJudge, ChatClient)


@pytest.mark.slow
def test_generate_against_lorakit_serve_then_train_on_the_output(tmp_path):
    """The whole road over real HTTP: `lorakit serve` of the bundled SmolLM2-135M summarises a Chinese
    public-domain passage (tests/fixtures/generate), every reply is accounted for, and `lorakit train` fits
    the generated records (with continuation records of the English and Chinese texts) for a few steps, unedited.
    A 135M model's summaries are poor and often cut off at max_tokens (then rejected): the road is what is tested."""
    from lorakit.config import ModelConfig, load_config
    from lorakit.serve import Engine, create_app, load_endpoints
    from lorakit.serve import ServeConfig as ServerConfig
    from lorakit.train import run_training
    from test_serve import running

    fixtures = Path(__file__).parent / "fixtures" / "generate"
    model, endpoints = load_endpoints(ServerConfig(model=ModelConfig(name="smollm2-135m")))
    with running(create_app(Engine(model, max_batch_size=2), endpoints)) as base_url:
        # A long timeout: on a loaded machine a 64-token reply may take minutes, and a timed-out request is retried.
        generator = EndpointConfig(base_url=f"{base_url}/v1", model="smollm2-135m", max_tokens=64, concurrency=2,
                                   timeout=1800.0)
        summary = GenerateConfig(input=fixtures / "xiyouji.md", output_dir=tmp_path / "data", generator=generator,
                                 mode="summary", judge=JudgeSettings(enabled=False), output_format="openai",
                                 dataset_name="summaries", temperature=0.0)
        report = generate_dataset(summary, *clients(summary))

    assert report.chunks == report.items == 1 and report.kept + sum(report.rejected.values()) == 1
    assert report.requests in (1, 2) and report.completion_tokens > 0
    summaries = _lines(tmp_path / "data" / "summaries.jsonl")
    assert all(record["messages"][0]["content"].startswith("请概括") for record in summaries)  # Chinese prompts
    continuation = GenerateConfig(input=fixtures, output_dir=tmp_path / "more", generator=generator,
                                  mode="continuation", judge=JudgeSettings(enabled=False), chunk_chars=300,
                                  chunk_overlap=0, output_format="openai", dataset_name="continuations")
    assert generate_dataset(continuation, *clients(continuation)).kept >= 3
    paths = ["continuations", *([str(tmp_path / "data" / "summaries.jsonl")] if summaries else [])]
    config = load_config(Path(__file__).parents[1] / "configs" / "smollm2-lora.yaml", [
        f"data.paths=[{', '.join(paths)}]", f"data.dataset_dir={tmp_path / 'more'}", "data.val_size=0",
        f"output_dir={tmp_path / 'run'}", "max_steps=2", "batch_size=2", "lora.rank=4", "logging_steps=1"])
    output_dir = run_training(config, progress=False)
    assert (output_dir / "adapter" / "adapter_config.json").is_file()
