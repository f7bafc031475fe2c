"""export/hub.py: what an upload to the Hugging Face Hub sends, its model card, and its errors; never the network."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import save_file
from typer.testing import CliRunner

from lorakit.cli import app as cli_app
from lorakit.config import DataConfig, HubConfig, LoraConfig, ModelConfig, TrainConfig
from lorakit.config.core import save_config
from lorakit.errors import ConfigError, LorakitError
from lorakit.export.hub import upload_to_hub
from lorakit.runs import write_settings
from lorakit.templates import TEMPLATES

REPO = "alice/lumi-tea"
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "lorakit.json", "tokenizer_config.json"}


def _run_folder(tmp_path: Path, base: str = "smollm2-135m") -> Path:
    """A finished LoRA run as training leaves it, written by hand: weights, config, metrics, a checkpoint.

    PEFT records the folder the base was loaded from: for a bundled model, lorakit's cache."""
    run = tmp_path / "outputs" / "lumi"
    adapter = run / "adapter"
    adapter.mkdir(parents=True)
    save_file({"base_model.model.layers.0.q_proj.lora_A.weight": torch.zeros(2, 16)},
              str(adapter / "adapter_model.safetensors"))
    loaded_from = Path(base) if Path(base).is_absolute() else tmp_path / "cache" / base
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2,
                                                             "base_model_name_or_path": str(loaded_from)}))
    (adapter / "tokenizer_config.json").write_text("{}")
    (adapter / "README.md").write_text(f"trained from {tmp_path}/train.jsonl")
    (adapter / ".README.md.tmp").write_text("half written")
    write_settings(adapter, base, "lora", TEMPLATES["chatml"])
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "hi", "response": "hello"}\n')
    save_config(TrainConfig(model=ModelConfig(name=base), data=DataConfig(paths=(str(data),), template="chatml"),
                            output_dir=run, max_steps=2, lora=LoraConfig(rank=2)), run / "config.yaml")
    (run / "metrics.json").write_text(json.dumps({"train_loss": 1.25}))
    (run / "manifest.json").write_text(json.dumps({"data": {"train_examples": 1}, "data_files": {str(data): "0"}}))
    (run / "loss.png").write_bytes(b"\x89PNG fake")
    (run / "README.md").write_text(f"trained from {data}")
    (run / "trainer_state.json").write_text("{}")
    checkpoint = run / "checkpoints" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "optimizer.pt").write_bytes(b"state")
    (checkpoint / "adapter_model.safetensors").write_bytes(b"weights")
    return run


def _tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


class FakeHfApi:
    """Records what lorakit asks of the Hub, and reads every file it would send."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, *, private=None, exist_ok=False, **kwargs):
        FakeHfApi.calls.append(("create_repo", repo_id, private, exist_ok))
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, repo_id, operations, *, commit_message, **kwargs):
        sent = {}
        for op in operations:
            source = op.path_or_fileobj
            sent[op.path_in_repo] = source if isinstance(source, bytes) else Path(source).read_bytes()
        FakeHfApi.calls.append(("create_commit", repo_id, sent, commit_message))


@pytest.fixture
def online(monkeypatch):
    """The Hub looks reachable and a token is set; HfApi is the fake above."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr("huggingface_hub.HfApi", FakeHfApi)
    FakeHfApi.calls = []
    return FakeHfApi


def test_dry_run_of_a_run_lists_the_adapter_and_a_card_with_no_local_path(tmp_path):
    run = _run_folder(tmp_path)
    before = _tree_hash(tmp_path)

    upload = upload_to_hub(HubConfig(source=run, repo_id=REPO, dry_run=True))

    assert upload.url is None
    sizes = {file.path: file.size for file in upload.files}
    assert set(sizes) == ADAPTER_FILES | {"README.md", "loss.png", "metrics.json"}
    assert sizes["adapter_model.safetensors"] == (run / "adapter" / "adapter_model.safetensors").stat().st_size
    assert sizes["README.md"] == len(upload.card.encode())
    assert not any("checkpoint" in path or "optimizer" in path or "tmp" in path for path in sizes)
    card = upload.card
    assert card.startswith("---\n") and "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "library_name: peft" in card and "license: apache-2.0" in card and "- lorakit" in card
    assert f'PeftModel.from_pretrained(base, "{REPO}")' in card and "train_loss: 1.25" in card
    assert "train.jsonl" in card and str(tmp_path) not in card
    assert _tree_hash(tmp_path) == before


def test_a_run_from_a_local_base_names_no_folder(tmp_path, online):
    base = tmp_path / "tiny-base"
    base.mkdir()
    upload = upload_to_hub(HubConfig(source=_run_folder(tmp_path, base=str(base)), repo_id=REPO))
    assert str(tmp_path) not in upload.card and "<the base model: tiny-base>" in upload.card
    assert "base_model:" not in upload.card  # a local folder is no Hub id
    sent = online.calls[1][2]
    assert str(tmp_path).encode() not in b"".join(sent.values())
    assert json.loads(sent["adapter_config.json"])["base_model_name_or_path"] == "tiny-base"
    assert json.loads(sent["lorakit.json"])["base_model"] == "tiny-base"


def test_a_merged_model_folder_uploads_whole_with_a_transformers_card(tmp_path):
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "config.json").write_text("{}")
    save_file({"w": torch.zeros(2)}, str(merged / "model.safetensors"))
    (merged / "README.md").write_text("old card")
    write_settings(merged, "Qwen/Qwen3-0.6B", "lora", TEMPLATES["chatml"])

    upload = upload_to_hub(HubConfig(source=merged, repo_id=REPO, dry_run=True))

    assert {file.path for file in upload.files} == {"config.json", "model.safetensors", "lorakit.json", "README.md"}
    assert "base_model: Qwen/Qwen3-0.6B" in upload.card and "library_name: transformers" in upload.card
    assert f'AutoModelForCausalLM.from_pretrained("{REPO}")' in upload.card and "old card" not in upload.card


def test_dry_run_of_gguf_file_and_ollama_folder(tmp_path):
    gguf = tmp_path / "lumi-Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    (tmp_path / "unrelated.txt").write_text("not part of it")

    upload = upload_to_hub(HubConfig(source=gguf, repo_id=REPO, dry_run=True))

    assert [(file.path, file.size) for file in upload.files] == [("README.md", len(upload.card.encode())),
                                                                  ("lumi-Q4_K_M.gguf", 64)]
    assert f"llama-cli -hf {REPO}\n" in upload.card and f"ollama run hf.co/{REPO}\n" in upload.card
    assert "- gguf" in upload.card and "Q4_K_M" in upload.card

    ollama = tmp_path / "ollama"
    ollama.mkdir()
    for quant in ("Q4_K_M", "Q8_0"):
        (ollama / f"lumi-{quant}.gguf").write_bytes(b"GGUF")
    (ollama / "Modelfile").write_text(f"FROM {ollama}/lumi-Q4_K_M.gguf\nPARAMETER stop <|im_end|>\n")
    (ollama / "README.md").write_text("ollama create lumi")
    write_settings(ollama, "gemma3-270m", "lora", TEMPLATES["chatml"])
    upload = upload_to_hub(HubConfig(source=ollama, repo_id=REPO, dry_run=True))
    assert {file.path for file in upload.files} == {"lumi-Q4_K_M.gguf", "lumi-Q8_0.gguf", "Modelfile",
                                                     "lorakit.json", "README.md"}
    assert f"ollama run hf.co/{REPO}:Q8_0" in upload.card and f"llama-cli -hf {REPO}:Q4_K_M" in upload.card
    assert "base_model: google/gemma-3-270m" in upload.card and "license: gemma" in upload.card
    assert dict((file.path, file.size) for file in upload.files)["Modelfile"] == len(
        "FROM ./lumi-Q4_K_M.gguf\nPARAMETER stop <|im_end|>\n")  # no local path goes up


def test_sources_it_cannot_upload_say_what_is_accepted(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"empty holds nothing to upload .* a \.gguf file"):
        upload_to_hub(HubConfig(source=tmp_path / "empty", repo_id=REPO, dry_run=True))
    with pytest.raises(ConfigError, match="does not exist"):
        upload_to_hub(HubConfig(source=tmp_path / "missing", repo_id=REPO, dry_run=True))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a .gguf file"):
        upload_to_hub(HubConfig(source=tmp_path / "notes.txt", repo_id=REPO, dry_run=True))
    (tmp_path / "half" / "adapter").mkdir(parents=True)
    (tmp_path / "half" / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds no weights"):
        upload_to_hub(HubConfig(source=tmp_path / "half", repo_id=REPO, dry_run=True))
    with pytest.raises(ConfigError, match="repo_id must be OWNER/NAME"):
        HubConfig(source=tmp_path, repo_id="no-owner")


def test_upload_sends_exactly_the_planned_files_in_one_commit(tmp_path, online):
    run = _run_folder(tmp_path)
    before = _tree_hash(tmp_path)

    upload = upload_to_hub(HubConfig(source=run, repo_id=REPO, private=True, commit_message="Lumi v1"))

    assert upload.url == f"https://huggingface.co/{REPO}"
    (_, repo_id, private, exist_ok), (_, commit_repo, sent, message) = online.calls
    assert (repo_id, private, exist_ok, commit_repo, message) == (REPO, True, True, REPO, "Lumi v1")
    assert set(sent) == {file.path for file in upload.files}
    assert sent["README.md"].decode() == upload.card
    assert sent["adapter_model.safetensors"] == (run / "adapter" / "adapter_model.safetensors").read_bytes()
    assert b"hf_test_token" not in b"".join(sent.values()) and str(tmp_path).encode() not in b"".join(sent.values())
    # PEFT's local cache path became the Hub id, so AutoPeftModel finds the base from the Hub
    peft_config = json.loads(sent["adapter_config.json"])
    assert peft_config == {"peft_type": "LORA", "r": 2,
                           "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    assert sizes_match(upload, sent)
    assert _tree_hash(tmp_path) == before


def sizes_match(upload, sent) -> bool:
    return {file.path: file.size for file in upload.files} == {path: len(data) for path, data in sent.items()}


def test_offline_says_nothing_was_uploaded(tmp_path, online, monkeypatch):
    run = _run_folder(tmp_path)
    before = _tree_hash(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(LorakitError, match="cannot be reached .*HF_HUB_OFFLINE.*nothing was uploaded.*dry_run=true"):
        upload_to_hub(HubConfig(source=run, repo_id=REPO))
    assert online.calls == [] and _tree_hash(tmp_path) == before


def _connection_errors() -> list[Exception]:
    errors: list[Exception] = [ConnectionError("[Errno 101] Network is unreachable")]
    try:
        import httpx2

        errors.append(httpx2.ConnectError("[Errno -3] Temporary failure in name resolution"))
    except ImportError:
        pass
    return errors


@pytest.mark.parametrize("error", _connection_errors(), ids=lambda error: type(error).__name__)
def test_a_connection_error_says_nothing_was_uploaded(tmp_path, online, monkeypatch, error):
    def unreachable(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(FakeHfApi, "create_repo", unreachable)
    run = _run_folder(tmp_path)
    before = _tree_hash(tmp_path)
    with pytest.raises(LorakitError, match="Hub cannot be reached .*nothing was uploaded"):
        upload_to_hub(HubConfig(source=run, repo_id=REPO))
    assert _tree_hash(tmp_path) == before


def test_no_token_says_how_to_log_in(tmp_path, online, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(LorakitError, match="No Hugging Face token.*hf auth login.*HF_TOKEN"):
        upload_to_hub(HubConfig(source=_run_folder(tmp_path), repo_id=REPO))
    assert online.calls == []


def test_cli_dry_run_prints_files_and_card(tmp_path):
    run = _run_folder(tmp_path)
    result = CliRunner().invoke(cli_app, ["export", "hub", str(run), "--repo-id", REPO, "--dry-run"],
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    for text in ("adapter_model.safetensors", "loss.png", "README.md", "library_name: peft",
                 f'PeftModel.from_pretrained(base, "{REPO}")', "nothing was uploaded"):
        assert text in result.output
    assert "checkpoint" not in result.output


def test_cli_upload_prints_the_url(tmp_path, online):
    result = CliRunner().invoke(cli_app, ["export", "hub", str(_run_folder(tmp_path)), "--repo-id", REPO,
                                          "--private"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert f"Uploaded to https://huggingface.co/{REPO}" in result.output
    assert online.calls[0][2] is True and online.calls[1][3] == "Upload with lorakit"


def test_cli_offline_is_one_line_naming_the_flag(tmp_path, monkeypatch, capsys):
    from lorakit.cli import main

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr("sys.argv", ["lorakit", "export", "hub", str(_run_folder(tmp_path)), "--repo-id", REPO])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("LorakitError: The Hugging Face Hub cannot be reached") and "(or --dry-run)" in error


def test_the_real_client_blocked_offline_is_the_same_clear_error(tmp_path, monkeypatch):
    """huggingface_hub's own offline guard (it refuses every request before sending it) ends in lorakit's message."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "is_offline_mode", lambda: True)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    with pytest.raises(LorakitError, match=r"cannot be reached \(OfflineModeIsEnabled"):
        upload_to_hub(HubConfig(source=_run_folder(tmp_path), repo_id=REPO))
