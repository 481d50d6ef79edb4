"""countclip.export: the open_clip folder loads in stock open_clip (a fresh interpreter, no countclip)
with the same features as countclip's own load; countclip loads local-dir: folders itself."""

import json
import subprocess
import sys

import pytest
import torch

from countclip.cli import main
from countclip.config import ConfigError
from countclip.export import CONFIG_NAME, WEIGHTS_NAME, export_folder
from countclip.model import ModelConfig, create_model
from countclip.output_folder import OUTPUT_MARKER

# Runs with only open_clip imported: countclip-tiny is not registered there, so the folder alone
# must say what the model is.
STOCK_LOAD = """
import sys, torch, open_clip
folder, inputs, out = sys.argv[1:]
assert "countclip-tiny" not in open_clip.list_models()
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + folder)
tokenizer = open_clip.get_tokenizer("local-dir:" + folder)
data = torch.load(inputs, weights_only=True)
model.eval()
with torch.no_grad():
    image = model.encode_image(data["image"], normalize=True)
    text = model.encode_text(tokenizer(["two circles", "ten red stars on a grey background"]), normalize=True)
torch.save({"image": image, "text": text, "size": preprocess.transforms[1].size,
            "countclip_imported": any(m.startswith("countclip") for m in sys.modules)}, out)
"""


@pytest.fixture(scope="module")
def folder(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "countclip-tiny"
    export_folder(str(checkpoints / "b.pt"), "countclip-tiny", out, metrics={"count_accuracy": 0.433})
    return out


def test_the_folder_loads_in_a_fresh_interpreter_with_only_open_clip(folder, checkpoints, tmp_path):
    torch.manual_seed(1)
    image = torch.randn(3, 3, 64, 64)
    torch.save({"image": image}, tmp_path / "inputs.pt")
    proc = subprocess.run([sys.executable, "-c", STOCK_LOAD, str(folder), str(tmp_path / "inputs.pt"),
                           str(tmp_path / "out.pt")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stock = torch.load(tmp_path / "out.pt", weights_only=True)
    assert not stock["countclip_imported"] and tuple(stock["size"]) == (64, 64)
    ours, _, tokenizer = create_model(ModelConfig(arch="countclip-tiny", pretrained=str(checkpoints / "b.pt")))
    ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(stock["image"], ours.encode_image(image, normalize=True))
        text = tokenizer(["two circles", "ten red stars on a grey background"])
        torch.testing.assert_close(stock["text"], ours.encode_text(text, normalize=True))


def test_the_folder_holds_open_clips_layout_and_a_model_card(folder):
    assert sorted(p.name for p in folder.iterdir()) == [OUTPUT_MARKER, "README.md", CONFIG_NAME, WEIGHTS_NAME]
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["model_cfg"]["vision_cfg"]["image_size"] == 64 and config["model_cfg"]["embed_dim"] == 64
    assert {"size", "mean", "std", "interpolation", "resize_mode"} <= set(config["preprocess_cfg"])
    card = (folder / "README.md").read_text()
    assert "library_name: open_clip" in card and "| count_accuracy | 0.4330 |" in card and "b.pt" in card


def test_countclip_loads_local_dir_and_exports_it_again(folder, checkpoints, tmp_path):
    from_folder, _, tokenizer = create_model(ModelConfig(pretrained=f"local-dir:{folder}"))
    from_file, _, _ = create_model(ModelConfig(pretrained=str(checkpoints / "b.pt")))
    assert from_folder.logit_scale.shape == (1,) and tokenizer(["x"]).shape == (1, 24)  # FSDP-ready, like any load
    torch.testing.assert_close(from_folder.state_dict(), from_file.state_dict())
    again = tmp_path / "again"
    export_folder(f"local-dir:{folder}", "ViT-B-32", again)  # a folder brings its own architecture
    assert json.loads((again / CONFIG_NAME).read_text())["model_cfg"] == json.loads((folder / CONFIG_NAME).read_text())["model_cfg"]


def test_bad_folders_and_offline_hub_names_get_clear_errors(folder, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="holds no open_clip_config.json"):
        create_model(ModelConfig(pretrained=f"local-dir:{tmp_path / 'nowhere'}"))
    monkeypatch.delenv("COUNTCLIP_OFFLINE", raising=False)
    with pytest.raises(ConfigError, match="COUNTCLIP_OFFLINE=0"):
        create_model(ModelConfig(pretrained="hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / CONFIG_NAME).write_text((folder / CONFIG_NAME).read_text())
    (broken / WEIGHTS_NAME).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a loadable open_clip folder"):
        create_model(ModelConfig(pretrained=f"local-dir:{broken}"))


def test_cli_export_writes_the_folder_or_says_what_is_wrong(checkpoints, tmp_path, capsys):
    assert main(["export", str(checkpoints / "a.pt"), "--arch", "countclip-tiny", "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / WEIGHTS_NAME).is_file() and "local-dir:" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "none.pt"), "--out", str(tmp_path / "n")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "n").exists()
