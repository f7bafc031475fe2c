"""GGUF export through llama.cpp's converter and quantizer, checked with llama.cpp itself (llama-cpp-python).

The fast tests use small random models that carry real tokenizers (the converter recognises a tokenizer by its
pre-tokenizer, so the character tokenizer of conftest.py will not do); the slow ones export the bundled models.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib.util
import json
from pathlib import Path

import jinja2
import jinja2.sandbox
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from lorakit.config import GGUFConfig
from lorakit.errors import ConfigError, LorakitError
from lorakit.export import gguf as gguf_export
from lorakit.export.gguf import export_gguf, load_gguf, read_metadata, standalone_jinja
from lorakit.runs import write_settings
from lorakit.templates import TEMPLATES, render


def _converter_missing() -> str | None:
    try:
        gguf_export.converter_dir()
    except ConfigError:
        return "llama.cpp's converter scripts are not installed (run `make install-export`)"
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (run `make install-export`; it compiles llama.cpp)"
    return None


pytestmark = pytest.mark.skipif(_converter_missing() is not None, reason=_converter_missing() or "")

CONVERSATION = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France."},
    {"role": "user", "content": "And of Italy? 你好"},
]


@pytest.fixture(scope="module")
def smollm2_tokenizer_dir() -> Path:
    from lorakit.bundled import bundled_path

    return bundled_path("smollm2-135m")


def _small_llama(folder: Path, tokenizer_dir: Path, template_name: str = "chatml", system: str | None = None,
                 thinking: bool | None = None) -> Path:
    """A random 2-layer llama with SmolLM2's real tokenizer and a lorakit template, saved as a model folder."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=True, initializer_range=0.3)
    model = LlamaForCausalLM(config)
    template = dataclasses.replace(TEMPLATES[template_name], system=system, thinking=thinking)
    tokenizer.chat_template = template.jinja
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_settings(folder, "smollm2-135m", "merged", template)
    return folder


def _gguf_prompt_ids(llm, metadata: dict, messages: list[dict]) -> list[int]:
    """The prompt as llama.cpp builds it: the GGUF's own chat template, its tokenizer, its add_bos_token."""
    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    vocab = llm.tokenizer()
    text = environment.from_string(metadata["tokenizer.chat_template"]).render(
        messages=messages, add_generation_prompt=True,
        bos_token=vocab.decode([llm.token_bos()]), eos_token=vocab.decode([llm.token_eos()]))
    return llm.tokenize(text.encode("utf-8"), add_bos=bool(metadata.get("tokenizer.ggml.add_bos_token")), special=True)


def _greedy_gguf(llm, prompt: list[int], count: int) -> list[int]:
    llm.reset()
    llm.eval(prompt)
    produced = []
    for _ in range(count):
        token = int(llm.scores[llm.n_tokens - 1].argmax())
        produced.append(token)
        llm.eval([token])
    return produced


def _greedy_hf(model_dir: Path, prompt: list[int], count: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    output = model.generate(torch.tensor([prompt]), max_new_tokens=count, do_sample=False)
    return output[0, len(prompt):].tolist()


def test_f32_export_prompts_and_answers_as_the_hf_model(tmp_path, smollm2_tokenizer_dir):
    model_dir = _small_llama(tmp_path / "merged", smollm2_tokenizer_dir, system="Be brief.")
    result = export_gguf(GGUFConfig(source=model_dir, output=tmp_path / "out" / "model.gguf", outtype="f32"))

    assert result.path.is_file() and result.report_path.is_file()
    assert [p.name for p in result.path.parent.iterdir()] == sorted(["model.gguf", "model.gguf.json"]) or \
        sorted(p.name for p in result.path.parent.iterdir()) == ["model.gguf", "model.gguf.json"]
    metadata = read_metadata(result.path)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    assert metadata["tokenizer.chat_template"] == standalone_jinja(
        dataclasses.replace(TEMPLATES["chatml"], system="Be brief."), tokenizer)[0]
    assert metadata["tokenizer.ggml.eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert metadata["llama.context_length"] == 512 == result.context_length
    assert metadata["general.name"] == "merged"

    llm = load_gguf(result.path, logits_all=True, float32_cache=True)
    trained = dataclasses.replace(TEMPLATES["chatml"], system="Be brief.")
    for messages in (CONVERSATION, CONVERSATION[1:]):  # with a system prompt, and with the run's own
        hf_ids = tokenizer(render(trained, tokenizer, messages, add_generation_prompt=True),
                           add_special_tokens=False)["input_ids"]
        gguf_ids = _gguf_prompt_ids(llm, metadata, messages)
        assert len(gguf_ids) == len(hf_ids)
        assert gguf_ids == hf_ids
    assert _greedy_gguf(llm, hf_ids, 20) == _greedy_hf(model_dir, hf_ids, 20)


def test_template_keeps_its_bos_unless_the_tokenizer_adds_one(smollm2_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir))
    gemma = TEMPLATES["gemma"]
    assert "bos_token" in gemma.jinja
    kept, stripped = standalone_jinja(gemma, tokenizer)  # SmolLM2's tokenizer adds no BOS
    assert not stripped and kept == gemma.jinja
    tokenizer.add_bos_token = True
    without, stripped = standalone_jinja(gemma, tokenizer)
    assert stripped and "bos_token" not in without
    messages = CONVERSATION[1:]
    assert render(dataclasses.replace(gemma, jinja=without), tokenizer, messages) == \
        render(gemma, tokenizer, messages).removeprefix(tokenizer.bos_token)
    llama2 = TEMPLATES["llama2"]  # BOS opens every turn: nothing can be stripped without changing later turns
    assert standalone_jinja(llama2, tokenizer) == (llama2.jinja, False)


def test_thinking_and_system_options_are_baked_into_the_template(smollm2_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir))
    trained = dataclasses.replace(TEMPLATES["qwen3"], thinking=False, system="Answer as a pirate.")
    jinja, _ = standalone_jinja(trained, tokenizer)
    plain = dataclasses.replace(trained, jinja=jinja, thinking=None, system=None)
    messages = CONVERSATION[1:]
    assert render(plain, tokenizer, messages, add_generation_prompt=True) == \
        render(trained, tokenizer, messages, add_generation_prompt=True)
    assert "<think>\n\n</think>" in render(plain, tokenizer, messages, add_generation_prompt=True)


def test_existing_output_is_refused_unless_forced(tmp_path, smollm2_tokenizer_dir):
    model_dir = _small_llama(tmp_path / "merged", smollm2_tokenizer_dir)
    output = tmp_path / "model.gguf"
    output.write_bytes(b"someone's file")
    with pytest.raises(ConfigError, match="already exists.*force"):
        export_gguf(GGUFConfig(source=model_dir, output=output, outtype="f16"))
    assert output.read_bytes() == b"someone's file"
    export_gguf(GGUFConfig(source=model_dir, output=output, outtype="f16", force=True))
    assert read_metadata(output)["general.file_type"] == 1  # MOSTLY_F16


def test_bad_requests_name_what_to_fix(tmp_path, smollm2_tokenizer_dir):
    with pytest.raises(ConfigError, match="outtype must be one of"):
        GGUFConfig(source=tmp_path, output=tmp_path / "x.gguf", outtype="q4_k_z")
    with pytest.raises(ConfigError, match="adapter-only GGUF"):
        GGUFConfig(source=tmp_path, output=tmp_path / "x.gguf", outtype="q4_k_m", adapter_only=True)
    with pytest.raises(ConfigError, match=r"\.gguf file name"):
        export_gguf(GGUFConfig(source=tmp_path, output=tmp_path / "x.bin"))
    with pytest.raises(ConfigError, match="does not exist"):
        export_gguf(GGUFConfig(source=tmp_path / "nowhere", output=tmp_path / "x.gguf"))

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "smollm2-135m"}))
    with pytest.raises(ConfigError, match="no adapter_model.safetensors"):
        export_gguf(GGUFConfig(source=adapter, output=tmp_path / "a.gguf", adapter_only=True))
    model_dir = _small_llama(tmp_path / "merged", smollm2_tokenizer_dir)
    with pytest.raises(ConfigError, match="adapter_only needs an adapter"):
        export_gguf(GGUFConfig(source=model_dir, output=tmp_path / "a.gguf", adapter_only=True))
    assert not list(tmp_path.glob("*.gguf*")) and not list(tmp_path.glob(".*.tmp"))


def test_unknown_architecture_is_named(tmp_path, smollm2_tokenizer_dir):
    model_dir = _small_llama(tmp_path / "merged", smollm2_tokenizer_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["LorakitToyForCausalLM"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="does not know the architecture LorakitToyForCausalLM"):
        export_gguf(GGUFConfig(source=model_dir, output=tmp_path / "out" / "model.gguf"))
    assert list((tmp_path / "out").iterdir()) == []


def test_a_failing_write_leaves_nothing(tmp_path, smollm2_tokenizer_dir, monkeypatch):
    model_dir = _small_llama(tmp_path / "merged", smollm2_tokenizer_dir)
    real_quantize = gguf_export.quantize

    def disk_full(source: Path, target: Path, outtype: str) -> None:
        target.write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(gguf_export, "quantize", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_gguf(GGUFConfig(source=model_dir, output=tmp_path / "out" / "model.gguf", outtype="q4_k_m"))
    assert list((tmp_path / "out").iterdir()) == []
    assert real_quantize is not disk_full


def test_k_quant_goes_through_llama_cpp_quantizer_and_reports_perplexity(tmp_path, smollm2_tokenizer_dir):
    model_dir = _small_llama(tmp_path / "merged", smollm2_tokenizer_dir)
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("\n".join(json.dumps({"instruction": f"Count to {n}.", "output": " ".join(
        str(i) for i in range(1, n + 1))}) for n in range(3, 9)) + "\n")
    result = export_gguf(GGUFConfig(source=model_dir, output=tmp_path / "model.q4_k_m.gguf", outtype="q4_k_m",
                                    perplexity_data=held_out))
    assert read_metadata(result.path)["general.file_type"] == 15  # MOSTLY_Q4_K_M
    assert set(result.perplexity) == {"hf", "gguf_f16", "gguf_q4_k_m"}
    # llama.cpp's f16 scores the same tokens as the float32 HF model, within f16's rounding.
    assert result.perplexity["gguf_f16"] == pytest.approx(result.perplexity["hf"], rel=0.02)
    saved = json.loads(result.report_path.read_text())
    assert saved["perplexity"] == result.perplexity and saved["path"] == "model.q4_k_m.gguf"


def _linked_model_folder(model_dir: Path, folder: Path, name: str, template) -> Path:
    """A model folder whose weights link to `model_dir`'s and whose tokenizer carries `template`, as a merge leaves."""
    folder.mkdir()
    for item in model_dir.iterdir():
        if item.suffix == ".safetensors" or item.name in ("config.json", "generation_config.json"):
            (folder / item.name).symlink_to(item)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.chat_template = template.jinja
    tokenizer.save_pretrained(folder)
    write_settings(folder, name, "merged", template)
    return folder


@pytest.mark.slow
def test_bundled_smollm2_f16_matches_transformers(tmp_path, smollm2_tokenizer_dir):
    """The real model: the prompt tokens and 20 greedy tokens of an f16 GGUF equal the HF model's."""
    source = _linked_model_folder(smollm2_tokenizer_dir, tmp_path / "smollm2", "smollm2-135m", TEMPLATES["chatml"])
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    result = export_gguf(GGUFConfig(source=source, output=tmp_path / "smollm2.f16.gguf", outtype="f16"))
    assert result.template == "chatml"
    llm = load_gguf(result.path, logits_all=True, float32_cache=True)
    metadata = read_metadata(result.path)
    conversation = [*CONVERSATION[:3], {"role": "user", "content": "Now write a short poem about Rome."}]
    hf_ids = tokenizer(render(TEMPLATES["chatml"], tokenizer, conversation, add_generation_prompt=True),
                       add_special_tokens=False)["input_ids"]
    gguf_ids = _gguf_prompt_ids(llm, metadata, conversation)
    assert len(gguf_ids) == len(hf_ids) and gguf_ids == hf_ids
    answer = _greedy_hf(smollm2_tokenizer_dir, hf_ids, 24)
    assert len(answer) == 24 and tokenizer.eos_token_id not in answer  # a reply long enough to compare
    assert _greedy_gguf(llm, hf_ids, 24) == answer


def test_library_error_for_a_converter_crash(tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_export, "converter_dir", lambda: tmp_path)
    (tmp_path / "convert_hf_to_gguf.py").write_text("import sys\nprint('boom: bad tensor', file=sys.stderr)\n"
                                                    "sys.exit(3)\n")
    with pytest.raises(LorakitError, match="(?s)exit status 3.*boom: bad tensor"):
        gguf_export._run_converter("convert_hf_to_gguf.py", [])


def test_ollama_folder_holds_the_gguf_and_a_modelfile_that_names_it(tmp_path, smollm2_tokenizer_dir):
    from lorakit.config import OllamaConfig
    from lorakit.export.ollama import export_ollama

    model_dir = _small_llama(tmp_path / "merged", smollm2_tokenizer_dir, system="Be brief.")
    result = export_ollama(OllamaConfig(source=model_dir, output=tmp_path / "My Model", quant="f16"))
    assert sorted(p.name for p in result.folder.iterdir()) == sorted(
        ["Modelfile", "README.md", "my-model.f16.gguf", "my-model.f16.gguf.json"])
    modelfile = result.modelfile.read_text()
    assert modelfile.startswith("FROM ./my-model.f16.gguf\n")
    assert "PARAMETER num_ctx 512\n" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert 'SYSTEM "Be brief."' in modelfile or 'SYSTEM """Be brief."""' in modelfile
    assert "ollama create my-model -f Modelfile" in (result.folder / "README.md").read_text()
    with pytest.raises(ConfigError, match="already exists"):
        export_ollama(OllamaConfig(source=model_dir, output=result.folder, quant="f16"))
    assert not list(tmp_path.glob(".*tmp*"))


def _random_adapter(base_dir: Path, adapter_dir: Path) -> Path:
    """A LoRA adapter on `base_dir` with random, non-zero B matrices, saved as a lorakit adapter folder."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base_dir)),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.2)
    model.save_pretrained(adapter_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    tokenizer.save_pretrained(adapter_dir)
    write_settings(adapter_dir, str(base_dir), "lora", TEMPLATES["chatml"])
    return adapter_dir


def test_adapter_only_gguf_on_the_base_answers_as_the_merged_gguf(tmp_path, smollm2_tokenizer_dir):
    base = _small_llama(tmp_path / "base", smollm2_tokenizer_dir)
    adapter = _random_adapter(base, tmp_path / "run" / "adapter")
    base_gguf = export_gguf(GGUFConfig(source=base, output=tmp_path / "base.gguf", outtype="f32"))
    lora_gguf = export_gguf(GGUFConfig(source=adapter, output=tmp_path / "lora.gguf", outtype="f32",
                                       adapter_only=True))
    merged_gguf = export_gguf(GGUFConfig(source=adapter, output=tmp_path / "merged.gguf", outtype="f32"))
    assert read_metadata(lora_gguf.path)["general.type"] == "adapter"
    assert merged_gguf.merged_onto == "full"

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    prompt = tokenizer(render(TEMPLATES["chatml"], tokenizer, CONVERSATION, add_generation_prompt=True),
                       add_special_tokens=False)["input_ids"]
    merged = _greedy_gguf(load_gguf(merged_gguf.path, logits_all=True, float32_cache=True), prompt, 12)
    with_lora = _greedy_gguf(load_gguf(base_gguf.path, logits_all=True, lora_path=lora_gguf.path,
                                       float32_cache=True), prompt, 12)
    plain_base = _greedy_gguf(load_gguf(base_gguf.path, logits_all=True, float32_cache=True), prompt, 12)
    assert with_lora == merged
    assert plain_base != merged  # the adapter changes the answer, so the equality above means something


@pytest.mark.slow
def test_a_trained_smollm2_adapter_ships_through_every_route(tmp_path):
    """Train a few steps on the demo set, then f16, merge, q8_0, q4_k_m, LoRA-only and Ollama, each checked."""
    from dataclasses import replace

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lorakit.config import OllamaConfig
    from lorakit.demo import demo_config
    from lorakit.export.ollama import export_ollama
    from lorakit.train import run_training

    config = demo_config(tmp_path / "run")
    config = replace(config, epochs=1, max_steps=4, batch_size=4, data=replace(config.data, val_size=8,
                                                                                template="chatml",
                                                                                system="Answer briefly."))
    run = run_training(config, progress=False)
    f16 = export_gguf(GGUFConfig(source=run, output=tmp_path / "tuned.f16.gguf", outtype="f16"), progress=False)
    assert f16.merged_onto == "full" and f16.template is not None

    tokenizer = AutoTokenizer.from_pretrained(str(run / "adapter"))
    trained = _template_of(run)
    assert trained.system == "Answer briefly."
    messages = [*CONVERSATION[1:3], {"role": "user", "content": "Now write a short poem about Rome."}]
    ids = tokenizer(render(trained, tokenizer, messages, add_generation_prompt=True),
                    add_special_tokens=False)["input_ids"]
    llm = load_gguf(f16.path, logits_all=True, float32_cache=True)
    assert _gguf_prompt_ids(llm, read_metadata(f16.path), messages) == ids  # the run's system prompt is baked in

    from lorakit.model import resolve_model_path

    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(resolve_model_path("smollm2-135m")),
                                          str(run / "adapter"))
    answer = reference.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)[0, len(ids):].tolist()
    assert len(answer) == 20
    assert _greedy_gguf(llm, ids, 20) == answer
    llm.close()
    del reference

    from lorakit.config import MergeConfig
    from lorakit.export.merge import merge_adapter

    merged_folder = merge_adapter(MergeConfig(source=run, output=tmp_path / "merged", dtype="float32"))
    assert merged_folder.merged_onto == "full" and merged_folder.kl_divergence < 1e-3
    plain_load = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))  # no PEFT, no lorakit
    assert plain_load.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)[0, len(ids):].tolist() == answer
    del plain_load

    quantized = {}
    for outtype in ("q8_0", "q4_k_m"):
        quantized[outtype] = export_gguf(GGUFConfig(source=run, output=tmp_path / f"tuned.{outtype}.gguf",
                                                    outtype=outtype), progress=False)
        load_gguf(quantized[outtype].path).close()
    for outtype, result in quantized.items():
        figures = result.perplexity
        assert set(figures) == {"hf", "gguf_f16", f"gguf_{outtype}"}, figures
        assert figures["gguf_f16"] == pytest.approx(figures["hf"], rel=0.05)
        print(f"{outtype}: perplexity on the run's held-out records {figures}")
    assert quantized["q8_0"].perplexity["gguf_q8_0"] == pytest.approx(quantized["q8_0"].perplexity["hf"], rel=0.05)

    base_f16 = export_gguf(GGUFConfig(source=Path(resolve_model_path("smollm2-135m")), output=tmp_path / "base.gguf",
                                      outtype="f16"), progress=False)
    lora = export_gguf(GGUFConfig(source=run, output=tmp_path / "lora.gguf", adapter_only=True, outtype="f16"),
                       progress=False)
    with_lora = load_gguf(base_f16.path, logits_all=True, lora_path=lora.path, float32_cache=True)
    merged = load_gguf(f16.path, logits_all=True, float32_cache=True)
    assert _greedy_gguf(with_lora, ids, 10) == _greedy_gguf(merged, ids, 10)

    ollama = export_ollama(OllamaConfig(source=run, output=tmp_path / "ollama", quant="q8_0"), progress=False)
    modelfile = ollama.modelfile.read_text()
    assert modelfile.startswith(f"FROM ./{ollama.model_gguf.name}\n") and ollama.model_gguf.is_file()
    assert "PARAMETER num_ctx 8192" in modelfile and 'SYSTEM "Answer briefly."' in modelfile


def _template_of(run: Path):
    from lorakit.runs import open_run

    return open_run(run).template(AutoTokenizer.from_pretrained(str(run / "adapter")))


@pytest.mark.slow
def test_a_trained_gemma3_adapter_merges_and_ships_as_gguf_with_one_bos(tmp_path):
    """Gemma's tokenizer adds BOS and its template writes one: the GGUF's template leaves it to the tokenizer.

    A few training steps on the demo set, then: the merge check passes and the merged folder answers a multi-turn
    chat as base + adapter does; the f16 GGUF prompts with the same ids (one BOS) and answers the same 20 tokens;
    the LoRA-only GGUF on the base's f16 GGUF answers as the merged one; q8_0 and q4_k_m report perplexity.
    """
    from dataclasses import replace

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lorakit.bundled import bundled_path
    from lorakit.config import MergeConfig
    from lorakit.demo import demo_config
    from lorakit.export.merge import merge_adapter
    from lorakit.train import run_training

    gemma_dir = bundled_path("gemma3-270m")
    config = demo_config(tmp_path / "run", "gemma3-270m")
    config = replace(config, epochs=1, max_steps=4, batch_size=4, data=replace(config.data, val_size=8,
                                                                                template="gemma"))
    run = run_training(config, progress=False)
    tokenizer = AutoTokenizer.from_pretrained(str(run / "adapter"))
    trained = _template_of(run)
    conversation = [*CONVERSATION[:3], {"role": "user", "content": "Now write a short poem about Rome."}]
    hf_ids = tokenizer(render(trained, tokenizer, conversation, add_generation_prompt=True),
                       add_special_tokens=False)["input_ids"]
    assert hf_ids.count(tokenizer.bos_token_id) == 1
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(gemma_dir), dtype=torch.float32),
                                          str(run / "adapter"))
    with torch.inference_mode():
        answer = reference.generate(torch.tensor([hf_ids]), max_new_tokens=20, do_sample=False)[0, len(hf_ids):]
        with reference.disable_adapter():
            plain = reference.generate(torch.tensor([hf_ids]), max_new_tokens=20, do_sample=False)
    answer = answer.tolist()
    assert len(answer) == 20
    assert plain[0, len(hf_ids):].tolist() != answer  # the adapter changes the answer: the checks below mean something
    del reference, plain

    merged = merge_adapter(MergeConfig(source=run, output=tmp_path / "merged", dtype="float32"))
    assert merged.merged_onto == "full" and merged.kl_divergence < 1e-3
    merged_model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    with torch.inference_mode():
        merged_answer = merged_model.generate(torch.tensor([hf_ids]), max_new_tokens=20, do_sample=False)
    assert merged_answer[0, len(hf_ids):].tolist() == answer
    del merged_model

    f16 = export_gguf(GGUFConfig(source=run, output=tmp_path / "tuned.f16.gguf", outtype="f16"), progress=False)
    metadata = read_metadata(f16.path)
    assert f16.bos_stripped_from_template and metadata["tokenizer.ggml.add_bos_token"] is True
    assert "bos_token" not in metadata["tokenizer.chat_template"]
    llm = load_gguf(f16.path, logits_all=True, float32_cache=True)
    gguf_ids = _gguf_prompt_ids(llm, metadata, conversation)
    assert len(gguf_ids) == len(hf_ids) and gguf_ids == hf_ids
    assert _greedy_gguf(llm, hf_ids, 20) == answer
    merged_tokens = _greedy_gguf(llm, hf_ids, 10)
    llm.close()

    base = _linked_model_folder(gemma_dir, tmp_path / "gemma", "gemma3-270m", trained)
    base_f16 = export_gguf(GGUFConfig(source=base, output=tmp_path / "base.f16.gguf", outtype="f16"), progress=False)
    lora = export_gguf(GGUFConfig(source=run, output=tmp_path / "lora.gguf", adapter_only=True, outtype="f16"),
                       progress=False)
    with_lora = load_gguf(base_f16.path, logits_all=True, lora_path=lora.path, float32_cache=True)
    assert _greedy_gguf(with_lora, hf_ids, 10) == merged_tokens
    with_lora.close()

    for outtype in ("q8_0", "q4_k_m"):
        result = export_gguf(GGUFConfig(source=run, output=tmp_path / f"tuned.{outtype}.gguf", outtype=outtype),
                             progress=False)
        load_gguf(result.path).close()
        figures = result.perplexity
        assert set(figures) == {"hf", "gguf_f16", f"gguf_{outtype}"}, figures
        assert figures["gguf_f16"] == pytest.approx(figures["hf"], rel=0.05)
        print(f"gemma3 {outtype}: perplexity on the run's held-out records {figures}")
