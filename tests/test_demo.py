"""The demo's road (answer, train, answer again) on a tiny model, so `make demo` cannot break unnoticed."""

from dataclasses import replace

import lorakit.demo as demo
from lorakit.config import ModelConfig


def test_demo_answers_before_and_after_training(tiny_model_dir, tmp_path, monkeypatch):
    real_config = demo.demo_config

    def tiny_config(output_dir, model_name):
        config = real_config(output_dir, model_name)
        return replace(config, model=ModelConfig(name=str(tiny_model_dir), dtype="bfloat16"), max_steps=2,
                       data=replace(config.data, template="chatml"))

    monkeypatch.setattr(demo, "demo_config", tiny_config)
    rows = demo.run_demo(tmp_path / "demo", "tiny")

    assert len(rows) == 8 and all(isinstance(r.base, str) and isinstance(r.tuned, str) for r in rows)
    assert {r.expect for r in rows} >= {"Lumi", "露米"}
    assert (tmp_path / "demo" / "adapter" / "adapter_model.safetensors").is_file()
