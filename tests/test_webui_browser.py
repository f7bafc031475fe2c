"""The web UI in a real headless Chromium (Debian's, through Playwright): train, re-attach, stop, switch language.

Screenshots of the page in English and Chinese go to docs/webui/.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the web UI needs gradio (pip install 'lorakit[webui]')")
playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("needs Debian's chromium (apt-get install chromium; `make install-webui`)", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "webui"
RECORDS = [{"instruction": f"say {w}", "output": f"{w}."} for w in ("hi", "yes", "no", "cat", "dog", "sun")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tmp_path, tiny_model_dir):
    (tmp_path / "train.json").write_text(json.dumps(RECORDS))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "LORAKIT_CACHE": str(tmp_path / "cache"), "GRADIO_ANALYTICS_ENABLED": "False"}
    log = (tmp_path / "webui.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "lorakit.cli", "webui", "--port", str(port)], cwd=tmp_path,
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.5)
    yield url, tmp_path
    from lorakit.jobs import list_jobs, stop_job

    for job in list_jobs(tmp_path / "outputs"):
        if job.state == "running":
            stop_job(job.folder, grace_seconds=5)
    os.killpg(process.pid, 15)
    process.wait(30)


# How many points the loss plot's line has drawn: Vega draws each line as one SVG path, "M x,y L x,y L ...".
LINE_POINTS = """() => { const line = document.querySelector('#loss-plot .mark-line path');
                         return line ? (line.getAttribute('d').match(/L/g) || []).length + 1 : 0; }"""


def step(page) -> int:
    text = page.locator("#status").inner_text()
    return int(text.split("Step ")[1].split("/")[0]) if "Step " in text else -1


@pytest.mark.slow  # a web server, a training job and a browser (~60 s on 2 cores)
def test_train_reattach_stop_and_switch_language(server):
    url, workdir = server
    DOCS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(url)
        fill_train_form(page, "tiny-llama", max_steps=100000)
        page.locator("#estimate-memory").click()  # the estimate before starting, weights not loaded
        page.wait_for_function("document.querySelector('#message')?.innerText.includes('GiB available')",
                               timeout=60_000)
        page.locator("#start").click()
        page.wait_for_function("document.querySelector('#status')?.innerText.includes('Step ')", timeout=120_000)
        run_dir = workdir / "outputs" / "webui-run"
        deadline = time.monotonic() + 120
        while sum("loss" in json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()) < 3:
            assert time.monotonic() < deadline, "the loss curve gained no points"
            time.sleep(0.5)
        page.wait_for_function(f"({LINE_POINTS})() >= 3", timeout=60_000)  # the line is drawn, not just the axes
        drawn = page.evaluate(LINE_POINTS)
        page.screenshot(path=str(DOCS / "train-en.png"), full_page=True)

        page.reload()
        page.wait_for_function("document.querySelector('#status')?.innerText.includes('Step ')", timeout=60_000)
        assert page.locator("#run input").input_value() == "webui-run"  # re-attached to the running job
        before = step(page)
        time.sleep(3)
        assert step(page) > before  # still training after the page went away
        page.wait_for_function(f"({LINE_POINTS})() > {drawn}", timeout=60_000)  # the plot gains points

        page.locator("#stop").click()
        page.wait_for_function("document.querySelector('#message')?.innerText.includes('every process exited')",
                               timeout=90_000)
        page.wait_for_function("document.querySelector('#status')?.innerText.includes('stopped')", timeout=30_000)

        page.get_by_label("中文").check()
        page.wait_for_function("document.querySelector('#start')?.innerText.includes('开始')", timeout=30_000)
        assert "学习率" in page.content()
        page.wait_for_function("document.querySelector('#status')?.innerText.includes('已停止')", timeout=30_000)
        page.screenshot(path=str(DOCS / "train-zh.png"), full_page=True)
        browser.close()


def _gguf_tools_missing() -> str | None:
    import importlib.util

    from lorakit.errors import ConfigError
    from lorakit.export.gguf import converter_dir

    try:
        converter_dir()
    except ConfigError:
        return "llama.cpp's converter scripts are not installed (run `make install-export`)"
    return None if importlib.util.find_spec("llama_cpp") else "llama-cpp-python is not installed (make install-export)"


def _small_llama(folder: Path) -> Path:
    """A random 2-layer llama with SmolLM2's real tokenizer (llama.cpp's converter needs a tokenizer it knows)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lorakit.bundled import bundled_path

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(bundled_path("smollm2-135m")))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=True, initializer_range=0.3)  # peaked logits: varied replies
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _answers(page, chatbot: str) -> list[str]:
    return [text.strip() for text in page.locator(f"#{chatbot} .bot-row").all_inner_texts()]


@pytest.mark.slow  # a web server, a short training job, two models chatting, a GGUF export (~1-2 min on 2 cores)
@pytest.mark.skipif(_gguf_tools_missing() is not None, reason=_gguf_tools_missing() or "")
def test_train_then_chat_side_by_side_and_export_gguf(server):
    url, workdir = server
    _small_llama(workdir / "small-llama")
    DOCS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(url)
        fill_train_form(page, "small-llama", max_steps=3)
        page.locator("#start").click()
        wait_for_job_end(page, "#status", workdir / "outputs" / "webui-run", workdir)

        page.get_by_role("tab", name="Chat").click()
        page.locator("#chat-refresh").click()  # the run that just finished joins the adapter choices
        page.wait_for_function("document.querySelector('#chat-adapter input')?.value === 'outputs/webui-run'",
                               timeout=30_000)
        page.locator("#chat-side-by-side input").check()
        page.locator("#chat-temperature input[type=number]").fill("0")
        page.locator("#chat-max-new-tokens input[type=number]").fill("24")
        page.locator("#chat-input textarea").fill("say hi")
        page.locator("#chat-send").click()
        page.wait_for_function("document.querySelector('#chat-status')?.innerText.includes('right:')",
                               timeout=180_000)
        deadline = time.monotonic() + 180
        while not (all(_answers(page, "chat-a")) and _answers(page, "chat-a") and all(_answers(page, "chat-b"))
                   and _answers(page, "chat-b")):
            assert time.monotonic() < deadline, "the two answers did not both appear"
            time.sleep(0.5)
        assert "say hi" in page.locator("#chat-a").inner_text() and "say hi" in page.locator("#chat-b").inner_text()
        page.screenshot(path=str(DOCS / "chat-en.png"), full_page=True)

        page.get_by_role("tab", name="Export").click()
        page.locator("#export-refresh").click()
        page.wait_for_function("document.querySelector('#export-run input')?.value === 'outputs/webui-run'",
                               timeout=30_000)
        page.get_by_label("gguf", exact=True).check()
        pick(page, "#export-type", "q8_0")
        page.locator("#export-start").click()
        wait_for_job_end(page, "#export-status", workdir / "outputs" / "webui-run" / "exports", workdir)
        page.wait_for_function("document.querySelector('#export-checks')?.innerText.includes('gguf_q8_0')",
                               timeout=30_000)
        checks = page.locator("#export-checks").inner_text()
        assert "Merge check" in checks and "Held-out perplexity" in checks
        assert (workdir / "outputs" / "webui-run" / "exports" / "model-q8_0.gguf").is_file()
        page.screenshot(path=str(DOCS / "export-en.png"), full_page=True)

        page.get_by_label("中文").check()
        page.wait_for_function("document.querySelector('#export-start')?.innerText.includes('导出')", timeout=30_000)
        page.wait_for_function("document.querySelector('#export-checks')?.innerText.includes('合并校验')",
                               timeout=30_000)
        page.screenshot(path=str(DOCS / "export-zh.png"), full_page=True)
        page.get_by_role("tab", name="对话").click()
        page.wait_for_function("document.querySelector('#chat-send')?.innerText.includes('发送')", timeout=30_000)
        page.screenshot(path=str(DOCS / "chat-zh.png"), full_page=True)
        browser.close()


def wait_for_job_end(page, status: str, folder: Path, workdir: Path, timeout_s: float = 300) -> None:
    """Wait until the job shown in `status` ends; unless it finished, fail with what the page and the logs say."""
    ended = " || ".join(f"text.includes('{state}')" for state in ("finished", "failed", "stopped", "interrupted"))
    try:
        page.wait_for_function(f"(() => {{ const text = document.querySelector('{status}')?.innerText || ''; "
                               f"return {ended}; }})()", timeout=timeout_s * 1000)
    except playwright.TimeoutError:
        pass
    text = page.locator(status).inner_text()
    if "finished" not in text:
        logs = {path.name: path.read_text(errors="replace")[-3000:] for path in
                [*sorted(folder.glob("*.log")), workdir / "webui.log"] if path.is_file()}
        pytest.fail(f"the job in {folder} did not finish: the page says {text!r}; logs: {logs}")


def open_page(driver, url: str):
    browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(url)
    return browser, page


def pick(page, selector: str, value: str) -> None:
    """Type `value` into a dropdown (one that takes typed values) and confirm it."""
    page.locator(f"{selector} input").fill(value)
    page.locator(f"{selector} input").press("Enter")


def fill_train_form(page, model: str, max_steps: int) -> None:
    """The Train tab's form for a short run of `model` on train.json (chatml, batch 2)."""
    pick(page, "#field-model", model)
    page.locator("#field-data_path textarea").fill("train.json")
    pick(page, "#field-template", "chatml")
    page.locator("#field-max_steps input").fill(str(max_steps))
    page.locator("#field-batch_size input").fill("2")


def switch_to_chinese(page, check_selector: str, chinese: str) -> None:
    page.get_by_label("中文").check()
    page.wait_for_function(f"document.querySelector('{check_selector}')?.innerText.includes('{chinese}')",
                           timeout=30_000)


@pytest.mark.slow  # a web server and a browser (~30 s on 2 cores)
def test_data_tab_flags_a_bad_record_with_its_line(server):
    url, workdir = server
    upload = workdir / "upload.jsonl"
    upload.write_text("".join(json.dumps(record) + "\n" for record in RECORDS[:2]) + '{"instruction": "say no"}\n'
                      + json.dumps(RECORDS[2]) + "\n")  # line 3 has no answer
    DOCS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as driver:
        browser, page = open_page(driver, url)
        page.get_by_role("tab", name="Data").click()
        pick(page, "#data-model", "tiny-llama")
        pick(page, "#data-template", "chatml")
        page.locator("#data-max_seq_len input").fill("64")
        page.locator("#data-upload input[type=file]").set_input_files(str(upload))
        page.wait_for_function("document.querySelector('#data-problems')?.innerText.includes('line 3')",
                               timeout=120_000)
        assert "missing" in page.locator("#data-problems").inner_text().lower()
        assert "upload.jsonl, line 3" in page.locator("#data-check textarea").input_value()
        assert "alpaca" in page.locator("#data-summary").inner_text()
        page.wait_for_selector("#data-examples .highlighted", timeout=60_000)  # the trained part
        page.screenshot(path=str(DOCS / "data-en.png"), full_page=True)

        switch_to_chinese(page, "#data-inspect", "检查并预览")
        page.screenshot(path=str(DOCS / "data-zh.png"), full_page=True)

        page.locator("#data-use").click()  # the Train tab's data field now names the uploaded file
        page.get_by_role("tab", name="训练").click()
        page.wait_for_function("document.querySelector('#field-data_path textarea')?.value === "
                               "'outputs/webui-uploads/upload.jsonl'", timeout=30_000)
        browser.close()


@pytest.mark.slow  # a web server, an evaluation job and a browser (~60 s on 2 cores)
def test_evaluate_tab_runs_an_evaluation_job_and_shows_its_report(server):
    url, workdir = server
    DOCS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as driver:
        browser, page = open_page(driver, url)
        page.get_by_role("tab", name="Evaluate").click()
        pick(page, "#eval-base", "tiny-llama")
        pick(page, "#eval-held_out", "train.json")
        page.locator("#eval-limit input").fill("2")
        page.locator("#eval-start").click()
        page.wait_for_function("document.querySelector('#eval-message')?.innerText.includes('webui-eval')",
                               timeout=60_000)
        wait_for_job_end(page, "#eval-status", workdir / "outputs" / "eval" / "webui-eval", workdir)
        page.wait_for_function("document.querySelector('#eval-scores')?.innerText.includes('perplexity')",
                               timeout=30_000)
        assert "Evaluation report" in page.locator("#eval-summary").inner_text()
        assert (workdir / "outputs" / "eval" / "webui-eval" / "report.json").is_file()
        page.wait_for_function("document.querySelector('#eval-predictions')?.innerText.includes('say')",
                               timeout=30_000)  # per-sample predictions, with their prompts
        page.screenshot(path=str(DOCS / "evaluate-en.png"), full_page=True)

        page.reload()  # a reopened page lists the past evaluation and shows its report
        page.get_by_role("tab", name="Evaluate").click()
        page.wait_for_function("document.querySelector('#eval-scores')?.innerText.includes('perplexity')",
                               timeout=60_000)
        switch_to_chinese(page, "#eval-start", "评估")
        page.wait_for_function("document.querySelector('#eval-status')?.innerText.includes('已完成')",
                               timeout=30_000)
        page.screenshot(path=str(DOCS / "evaluate-zh.png"), full_page=True)
        browser.close()


@pytest.mark.slow  # a web server, a training job and a browser (~40 s on 2 cores)
def test_closing_the_browser_mid_training_leaves_the_steps_advancing(server):
    url, workdir = server
    progress = workdir / "outputs" / "webui-run" / "progress.json"

    def completed() -> int:
        try:
            return int(json.loads(progress.read_text()).get("completed", -1))
        except (OSError, ValueError):
            return -1

    with playwright.sync_playwright() as driver:
        browser, page = open_page(driver, url)
        fill_train_form(page, "tiny-llama", max_steps=100000)
        page.locator("#start").click()
        # Wait for the job from its run folder: the live view is the other test's subject, and a loaded machine
        # may leave the page's 1 s refresh behind while the job is already training.
        deadline = time.monotonic() + 180
        while completed() < 1:
            message = page.locator("#message").inner_text()
            assert time.monotonic() < deadline, f"no training step; the page says: {message}"
            time.sleep(0.5)
        browser.close()  # no page is left to poll or hold the job

    before = completed()
    deadline = time.monotonic() + 60
    while completed() <= before + 2:
        assert time.monotonic() < deadline, f"training stalled at step {completed()} after the browser closed"
        time.sleep(0.5)
