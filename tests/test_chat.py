"""`lorakit chat`: a REPL with history, system prompt, adapter switching and Ctrl-C, driven in memory and through a
pseudo-terminal as a user would."""

import io
import os
import signal
import sys

import pexpect
import pytest

from lorakit.config import ModelConfig
from lorakit.infer import Chat, GenerationConfig, open_chat, run_chat
from lorakit.templates import resolve_template

from conftest import make_tokenizer
from test_infer import lively_model, random_adapter_run, save_lively_model


@pytest.fixture
def chat():
    tokenizer = make_tokenizer()
    return Chat(lively_model(tokenizer), tokenizer, resolve_template(None, tokenizer),
                GenerationConfig(max_new_tokens=10), model_config=ModelConfig(name="tiny"))


def drive(chat: Chat, *lines: str, show_prompt: bool = False) -> str:
    output = io.StringIO()
    run_chat(chat, io.StringIO("".join(line + "\n" for line in lines)), output, show_prompt=show_prompt)
    return output.getvalue()


def test_two_turns_keep_history_and_system_change_resets_it(chat):
    text = drive(chat, "hello", "and now?", "/system be brief", "hi", "/quit", "never read", show_prompt=True)

    prompts = [block.split("--- end of prompt ---")[0] for block in text.split("--- prompt ---\n")[1:]]
    assert len(prompts) == 3 and text.count("assistant> ") == 3
    first_reply = text.split("assistant> ")[1].split("\n")[0]
    assert first_reply and f"<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n{first_reply}<|im_end|>" \
        in prompts[1]
    assert prompts[1].endswith("<|im_start|>user\nand now?<|im_end|>\n<|im_start|>assistant\n\n")
    assert prompts[2] == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n" \
                         "<|im_start|>assistant\n\n"
    assert "never read" not in text
    assert chat.system == "be brief" and [m["content"] for m in chat.history][0] == "hi"


def test_reset_help_unknown_command_and_end_of_input(chat):
    text = drive(chat, "hello", "/reset", "/help", "/bogus", "/system")
    assert chat.history == [] and "History cleared." in text and "/adapter PATH" in text
    assert "Unknown command /bogus; /help lists the commands." in text and "System prompt: None" in text


class InterruptingOutput(io.StringIO):
    """Raises KeyboardInterrupt on the third piece of a reply, as Ctrl-C would while text streams."""

    def __init__(self) -> None:
        super().__init__()
        self.pieces = 0

    def write(self, text: str) -> int:
        if "assistant> " in self.getvalue() and not text.endswith(("\n", "> ")) and "[stopped]" not in text:
            self.pieces += 1
            if self.pieces == 3:
                raise KeyboardInterrupt
        return super().write(text)


def test_ctrl_c_stops_the_reply_keeps_partial_text_and_the_chat_goes_on(chat):
    output = InterruptingOutput()
    run_chat(chat, io.StringIO("tell me\n/quit\n"), output)
    text = output.getvalue()
    assert "[stopped]" in text and text.rstrip().endswith("you>")
    partial = text.split("assistant> ")[1].split(" [stopped]")[0]
    assert chat.history[0]["content"] == "tell me"
    assert chat.history[1]["content"].startswith(partial) and chat.history[1]["content"]


def test_switching_adapters_and_refusing_one_of_another_base(tmp_path):
    model_dir = save_lively_model(tmp_path / "base")
    run = random_adapter_run(model_dir, tmp_path / "run")
    other_base = tmp_path / "other"
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=len(make_tokenizer()), hidden_size=32, intermediate_size=32,
                                 num_hidden_layers=2, num_attention_heads=2,
                                 num_key_value_heads=1)).save_pretrained(other_base)
    make_tokenizer().save_pretrained(other_base)
    other_run = random_adapter_run(other_base, tmp_path / "other-run")

    chat = open_chat(ModelConfig(name=str(model_dir), dtype="float32", device="cpu"), run,
                     config=GenerationConfig(max_new_tokens=8))
    text = drive(chat, "hello", "/reset", f"/adapter {other_run}", "hello", "/reset", "/adapter base", "hello")

    assert f"was trained on {other_base}, not on {model_dir}" in text
    assert "Now chatting with " + str(model_dir) + " (template:" in text and chat.adapter_dir is None
    with_adapter, after_refusal, base = [reply.split("\nyou> ")[0] for reply in text.split("assistant> ")[1:]]
    assert with_adapter == after_refusal != base
    chat.use_adapter(run)
    assert chat.adapter_dir == run / "adapter" and chat.template.name == "chatml"


def spawn_chat(*args: str) -> pexpect.spawn:
    # Ctrl-C must reach the chat even when pytest runs where SIGINT is ignored (a background job of a script), which
    # a child would inherit: Python then installs no KeyboardInterrupt handler.
    child = pexpect.spawn(sys.executable, ["-m", "lorakit.cli", "chat", *args], encoding="utf-8", timeout=60,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                               "TERM": "dumb"},
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    child.expect_exact("you> ")
    return child


def test_terminal_chat_two_turns_system_change_and_quit(tmp_path):
    model_dir = save_lively_model(tmp_path / "base")
    run = random_adapter_run(model_dir, tmp_path / "run")
    child = spawn_chat("--adapter", str(run), "--temperature", "0", "--max-new-tokens", "12", "--show-prompt",
                       "--device", "cpu")
    assert f"Chatting with {model_dir} + adapter {run / 'adapter'} (template: chatml)" in child.before

    child.sendline("hello")
    child.expect_exact("assistant> ")
    child.expect_exact("you> ")
    first_reply = child.before.strip()
    child.sendline("second question")
    child.expect_exact("--- prompt ---")
    child.expect_exact("--- end of prompt ---")
    second_prompt = child.before.replace("\r\n", "\n")
    child.expect_exact("you> ")
    child.sendline("/system talk like a pirate")
    child.expect_exact("System prompt set; history cleared.")
    child.expect_exact("you> ")
    child.sendline("third")
    child.expect_exact("--- end of prompt ---")
    third_prompt = child.before.replace("\r\n", "\n")
    child.expect_exact("you> ")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()

    assert first_reply
    assert f"user\nhello<|im_end|>\n<|im_start|>assistant\n{first_reply}<|im_end|>" in second_prompt
    assert second_prompt.rstrip().endswith("user\nsecond question<|im_end|>\n<|im_start|>assistant")
    assert "system\ntalk like a pirate" in third_prompt and "hello" not in third_prompt
    assert child.exitstatus == 0


def test_terminal_ctrl_c_stops_a_reply_and_ctrl_d_leaves(tmp_path):
    model_dir = save_lively_model(tmp_path / "base")
    child = spawn_chat("--model", str(model_dir), "--temperature", "0", "--max-new-tokens", "100000")

    child.sendline("tell me everything")
    child.expect_exact("assistant> ")
    child.expect(r"\S")  # the reply has started streaming
    child.sendintr()
    child.expect_exact("[stopped]", timeout=30)
    child.expect_exact("you> ")
    child.sendintr()  # at the prompt: clears the line, does not leave
    child.expect_exact("Ctrl-C clears the line")
    child.expect_exact("you> ")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
