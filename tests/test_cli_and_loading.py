"""The `snapdesk` commands and model loading, through their real surfaces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bot.settings import Settings
from engine.base import ModelLoadError
from engine.detokenize import IncrementalDetokenizer
from engine.loading import LoadOptions, load_model


def snapdesk(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(scope="module")
def statement_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("shots") / "statement.png"
    Image.new("RGB", (1920, 1080), "white").save(path)
    return path


def test_tiny_model_command_writes_a_loadable_checkpoint(tmp_path):
    result = snapdesk("tiny-model", str(tmp_path / "tiny"))
    assert result.returncode == 0, result.stderr
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "chat_template.jinja"):
        assert (tmp_path / "tiny" / name).is_file(), name
    config = json.loads((tmp_path / "tiny" / "config.json").read_text())
    assert config["model_type"] == "qwen3_vl"
    assert config["architectures"] == ["Qwen3VLForConditionalGeneration"]


def test_ask_json_reports_reply_and_figures(tiny_model_dir, statement_png):
    result = snapdesk("ask", "--model", str(tiny_model_dir), "--image", str(statement_png),
                      "--max-new-tokens", "8", "--json", "Why was I charged?")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    for key in ("reply", "confidence", "min_token_prob", "prompt_tokens", "completion_tokens", "latency_ms"):
        assert key in answer
    assert 0 < answer["confidence"] <= 1 and answer["min_token_prob"] <= answer["confidence"]
    assert 1 <= answer["completion_tokens"] <= 8
    assert answer["image_tokens"] > 1000  # a 1080p screenshot under the default budget
    assert answer["prompt_tokens"] > answer["image_tokens"]


def test_ask_streams_plain_text_by_default(tiny_model_dir):
    result = snapdesk("ask", "--model", str(tiny_model_dir), "--max-new-tokens", "6", "Where is my parcel?")
    assert result.returncode == 0, result.stderr
    assert "confidence" in result.stderr


@pytest.mark.parametrize(
    "content, reason",
    [(b"<!DOCTYPE html><html><body>not a screenshot</body></html>", "unsupported_format"), (b"", "empty")],
)
def test_ask_refuses_a_bad_image_with_status_2(tiny_model_dir, tmp_path, content, reason):
    fake = tmp_path / "bill.png"
    fake.write_bytes(content)
    result = snapdesk("ask", "--model", str(tiny_model_dir), "--image", str(fake), "Why was I charged?")
    assert result.returncode == 2
    assert reason in result.stderr and "bill.png" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_ask_with_a_missing_image_file_exits_2(tiny_model_dir, tmp_path):
    result = snapdesk("ask", "--model", str(tiny_model_dir), "--image", str(tmp_path / "nope.png"), "hi")
    assert result.returncode == 2 and "cannot read" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "model, expected",
    [
        ("/definitely/not/here", "does not exist"),
        ("Qwen/Qwen3-VL-8B-Instruct", "could not be reached"),
    ],
)
def test_ask_explains_load_failures_in_one_sentence(model, expected):
    result = snapdesk("ask", "--model", model, "hi")
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_loading_refuses_a_directory_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(LoadOptions(model=str(tmp_path)))


def test_loading_refuses_a_checkpoint_of_another_family(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_head=2, n_embd=8).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="not Qwen3-VL"):
        load_model(LoadOptions(model=str(tmp_path)))


def test_loaded_processor_uses_the_configured_image_budget(tiny_model_dir):
    loaded = load_model(LoadOptions(model=str(tiny_model_dir), min_image_tokens=64, max_image_tokens=300))
    size = loaded.processor.image_processor.size
    assert (size.shortest_edge, size.longest_edge) == (64 * 1024, 300 * 1024)
    inputs = loaded.processor(
        text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[Image.new("RGB", (1920, 1080))], return_tensors="pt"
    )
    assert int(inputs["image_grid_thw"][0].prod()) // 4 <= 300
    assert "mm_token_type_ids" in inputs


def test_settings_come_from_environment_and_dotenv(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("SNAPDESK_MODEL=/models/from-dotenv\nSNAPDESK_MAX_BATCH_SIZE=3\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SNAPDESK_MAX_BATCH_SIZE", "5")
    settings = Settings()
    assert settings.model == "/models/from-dotenv"
    assert settings.max_batch_size == 5  # the environment wins over .env
    assert settings.load_options().max_image_tokens == 1280
    assert settings.image_limits().max_pixels == 1280 * 32 * 32


def test_streamed_chinese_text_never_shows_half_characters(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    text = "为什么扣我钱？您的会员已自动续费 88 元。"
    ids = tokenizer.encode(text)
    detokenizer = IncrementalDetokenizer(tokenizer)
    chunks = [detokenizer.add(i) for i in ids] + [detokenizer.flush()]
    assert "".join(chunks) == text == detokenizer.text
    assert all("\ufffd" not in chunk for chunk in chunks)
