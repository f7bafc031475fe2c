"""Adapter inspection: norms, singular values and effective ranks of saved LoRA updates, without the base model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from rich.console import Console

from conftest import make_model
from lorakit.errors import ConfigError
from lorakit.eval.adapter_inspect import (effective_rank, energy_rank, format_adapter_report, inspect_adapter,
                                          update_singular_values)


def _saved_adapter(tmp_path, vocab_size, rank=4, alpha=8, use_rslora=False, rank_one=False, **extra):
    """A tiny llama with LoRA on q_proj/v_proj/down_proj whose A and B hold known values; saved, and the pairs."""
    model = make_model("llama", vocab_size)
    config = LoraConfig(r=rank, lora_alpha=alpha, use_rslora=use_rslora,
                        target_modules=["q_proj", "v_proj", "down_proj"], **extra)
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(1)
    known = {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            lora_a, lora_b = module.lora_A["default"].weight, module.lora_B["default"].weight
            with torch.no_grad():
                lora_a.copy_(torch.randn(lora_a.shape, generator=generator))
                if rank_one:
                    column = torch.randn(lora_b.shape[0], 1, generator=generator)
                    lora_b.copy_(column * torch.arange(1.0, rank + 1))  # every column a multiple of one vector
                else:
                    lora_b.copy_(torch.randn(lora_b.shape, generator=generator))
            known[name.removeprefix("base_model.model.")] = (lora_a.detach().clone(), lora_b.detach().clone())
    folder = tmp_path / "adapter"
    peft_model.save_pretrained(folder)
    return folder, known


def test_norms_and_ranks_match_the_full_update(tmp_path, tiny_tokenizer):
    folder, known = _saved_adapter(tmp_path, len(tiny_tokenizer))

    report = inspect_adapter(folder)

    assert {module.name for module in report.modules} == set(known)
    assert len(report.modules) == 6  # 2 layers x (q_proj, v_proj, down_proj)
    for module in report.modules:
        lora_a, lora_b = known[module.name]
        delta = (8 / 4) * lora_b.double() @ lora_a.double()
        assert module.scaling == 2.0
        assert module.shape == tuple(delta.shape)
        assert module.frobenius_norm == pytest.approx(float(torch.linalg.matrix_norm(delta)), rel=1e-9)
        assert module.spectral_norm == pytest.approx(float(torch.linalg.matrix_norm(delta, ord=2)), rel=1e-9)
        s = torch.linalg.svdvals(delta)[:4]
        p = s / s.sum()
        assert module.effective_rank == pytest.approx(math.exp(-float((p * p.log()).sum())), rel=1e-9)
        energy = (s ** 2).cumsum(0) / (s ** 2).sum()
        assert module.energy_rank == int((energy < 0.9).sum()) + 1
    down = next(module for module in report.modules if module.name == "model.layers.1.mlp.down_proj")
    assert (down.layer, down.kind) == (1, "mlp.down_proj")
    totals = report.layer_totals()
    layer0 = [module.frobenius_norm for module in report.modules if module.layer == 0]
    assert totals[0] == pytest.approx(math.sqrt(sum(norm ** 2 for norm in layer0)))


def test_rank_one_update_has_effective_rank_one(tmp_path, tiny_tokenizer):
    folder, _ = _saved_adapter(tmp_path, len(tiny_tokenizer), rank_one=True)

    report = inspect_adapter(folder)

    for module in report.modules:
        assert module.effective_rank == pytest.approx(1.0, abs=1e-6)
        assert module.energy_rank == 1
        assert module.spectral_norm == pytest.approx(module.frobenius_norm, rel=1e-9)


def test_rslora_scaling_is_alpha_over_sqrt_rank(tmp_path, tiny_tokenizer):
    folder, known = _saved_adapter(tmp_path, len(tiny_tokenizer), rank=4, alpha=8, use_rslora=True)

    report = inspect_adapter(folder)

    assert report.use_rslora
    module = report.modules[0]
    lora_a, lora_b = known[module.name]
    assert module.scaling == pytest.approx(8 / 2)
    assert module.frobenius_norm == pytest.approx(float(torch.linalg.matrix_norm(4.0 * lora_b.double()
                                                                                 @ lora_a.double())))


def test_per_module_rank_and_alpha_patterns(tmp_path, tiny_tokenizer):
    folder, known = _saved_adapter(tmp_path, len(tiny_tokenizer), rank=4, alpha=8, rank_pattern={"v_proj": 2},
                                   alpha_pattern={"down_proj": 32})

    by_kind = {module.kind: module for module in inspect_adapter(folder).modules if module.layer == 0}

    assert (by_kind["self_attn.v_proj"].rank, by_kind["self_attn.v_proj"].scaling) == (2, 4.0)
    assert (by_kind["mlp.down_proj"].rank, by_kind["mlp.down_proj"].scaling) == (4, 8.0)
    lora_a, lora_b = known["model.layers.0.mlp.down_proj"]
    assert by_kind["mlp.down_proj"].frobenius_norm == pytest.approx(
        float(torch.linalg.matrix_norm(8.0 * lora_b.double() @ lora_a.double())))


def test_writes_json_markdown_and_heatmap(tmp_path, tiny_tokenizer):
    folder, _ = _saved_adapter(tmp_path, len(tiny_tokenizer))
    output = tmp_path / "inspect"

    report = inspect_adapter(folder, output)

    data = json.loads((output / "inspect.json").read_text())
    assert len(data["modules"]) == 6 and set(data["layer_totals"]) == {"0", "1"}
    markdown = (output / "inspect.md").read_text()
    assert "| model.layers." in markdown and "## Per-layer totals" in markdown
    assert (output / "update_norms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    console = Console(record=True, width=200)
    console.print(format_adapter_report(report))
    assert "self_attn.q_proj" in console.export_text()


def test_embeddings_lm_head_dora_and_modules_to_save(tmp_path, tiny_tokenizer):
    folder, _ = _saved_adapter(tmp_path, len(tiny_tokenizer), use_dora=False,
                               modules_to_save=["post_attention_layernorm"])
    model = make_model("llama", len(tiny_tokenizer))
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["embed_tokens", "lm_head", "q_proj"], use_dora=False)
    peft_model = get_peft_model(model, config)
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name or "lora_embedding" in name:
            torch.nn.init.normal_(parameter)
    embedding_dir = tmp_path / "with-embeddings"
    peft_model.save_pretrained(embedding_dir)

    report = inspect_adapter(embedding_dir)
    by_name = {module.name: module for module in report.modules}
    assert by_name["model.embed_tokens"].shape == (len(tiny_tokenizer), 16)
    assert by_name["model.embed_tokens"].layer is None and by_name["lm_head"].kind == "lm_head"
    assert all(module.frobenius_norm > 0 for module in report.modules)
    assert any("saved whole" in note for note in report.notes)
    assert inspect_adapter(folder).saved_weights  # the layer norms from modules_to_save

    dora = get_peft_model(make_model("llama", len(tiny_tokenizer)),
                          LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], use_dora=True))
    dora.save_pretrained(tmp_path / "dora")
    dora_report = inspect_adapter(tmp_path / "dora", tmp_path / "dora-out")
    assert dora_report.use_dora and all(module.dora for module in dora_report.modules)
    assert any("zero" in note for note in dora_report.notes)  # lora_B untrained
    assert dora_report.modules[0].effective_rank == 0.0


def test_core_singular_values_match_full_svd():
    generator = torch.Generator().manual_seed(0)
    lora_a, lora_b = torch.randn(3, 50, generator=generator), torch.randn(40, 3, generator=generator)

    values = update_singular_values(lora_a, lora_b)

    assert torch.allclose(values, torch.linalg.svdvals(lora_b.double() @ lora_a.double())[:3])
    assert effective_rank(torch.tensor([2.0, 2.0, 2.0, 2.0])) == pytest.approx(4.0)
    assert energy_rank(torch.tensor([3.0, 1.0, 0.0])) == 1  # 9/10 of the energy
    assert energy_rank(torch.zeros(3)) == 0


def test_keys_with_the_adapter_name_are_read_alike(tmp_path, tiny_tokenizer):
    from safetensors.torch import load_file, save_file

    folder, _ = _saved_adapter(tmp_path, len(tiny_tokenizer))
    weights = folder / "adapter_model.safetensors"
    named = {key.replace(".weight", ".default.weight"): tensor for key, tensor in load_file(weights).items()}
    plain = inspect_adapter(folder)
    save_file(named, weights)

    assert inspect_adapter(folder).modules == plain.modules


def test_non_adapter_folder_is_a_config_error(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="not a LoRA adapter folder"):
        inspect_adapter(tiny_model_dir)
    with pytest.raises(ConfigError, match="does not exist"):
        inspect_adapter(tmp_path / "missing")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    with pytest.raises(ConfigError, match="no weights"):
        inspect_adapter(tmp_path / "half")


def test_lorakit_output_folder_is_accepted(tmp_path, tiny_tokenizer):
    folder, _ = _saved_adapter(tmp_path, len(tiny_tokenizer))

    assert inspect_adapter(folder.parent).adapter_dir == folder
