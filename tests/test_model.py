import pytest
import torch

from countclip import storage
from countclip.config import ConfigError
from countclip.model import ModelConfig, create_model, export_checkpoint


def test_tiny_architecture_is_fsdp_ready(tiny_model):
    model, preprocess, tokenizer = tiny_model
    assert model.logit_scale.shape == (1,)  # FSDP rejects 0-dim parameters
    assert tokenizer(["two dogs"]).shape == (1, 24)
    image = torch.zeros(1, 3, 64, 64)
    features, _, scale = model(image, tokenizer(["two dogs"]))
    assert features.shape == (1, 64) and torch.allclose(features.norm(dim=-1), torch.ones(1))


def test_export_loads_in_stock_open_clip(tiny_model, tmp_path):
    import open_clip

    model, _, tokenizer = tiny_model
    path = tmp_path / "tiny.pt"
    export_checkpoint(model, path)
    assert torch.load(path, weights_only=True)["logit_scale"].shape == ()
    stock, _, _ = open_clip.create_model_and_transforms("countclip-tiny", pretrained=str(path))
    image, text = torch.randn(2, 3, 64, 64), tokenizer(["two dogs", "three cats"])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(stock.encode_image(image), model.encode_image(image))
        torch.testing.assert_close(stock.encode_text(text), model.encode_text(text))
    ours, _, _ = create_model(ModelConfig(pretrained=str(path)))
    torch.testing.assert_close(ours.logit_scale.detach(), model.logit_scale.detach())


def test_load_from_s3(tiny_model, s3, tmp_path, monkeypatch):
    model, _, _ = tiny_model
    monkeypatch.setenv("COUNTCLIP_CACHE", str(tmp_path / "cache"))
    export_checkpoint(model, f"s3://{s3}/models/tiny.pt")
    loaded, _, _ = create_model(ModelConfig(pretrained=f"s3://{s3}/models/tiny.pt"))
    torch.testing.assert_close(loaded.visual.proj.detach(), model.visual.proj.detach())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_model(ModelConfig(pretrained=f"s3://{s3}/models/missing.pt"))


def test_bad_names_and_files_get_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown architecture 'ViT-Q-99'"):
        create_model(ModelConfig(arch="ViT-Q-99"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_model(ModelConfig(pretrained=str(tmp_path / "nope.pt")))
    with pytest.raises(ConfigError, match="neither a pretrained tag"):
        create_model(ModelConfig(pretrained="laion9000"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"corrupt.pt is not a readable PyTorch \(torch.save\) file"):
        create_model(ModelConfig(pretrained=str(corrupt)))
    wrong = tmp_path / "wrong.pt"
    storage.write_bytes(wrong, b"")
    torch.save({"visual.proj": torch.zeros(3)}, wrong)
    with pytest.raises(ValueError, match=r"wrong.pt does not fit countclip-tiny: 1 tensor\(s\) of other shapes, \d+ missing"):
        create_model(ModelConfig(pretrained=str(wrong)))
    for name, content, message in [("empty.pt", {}, "holds an empty mapping"), ("tensor.pt", torch.ones(2), "holds a Tensor"),
                                   ("list.pt", [1], "holds a list")]:
        torch.save(content, tmp_path / name)
        with pytest.raises(ValueError, match=f"{name} {message}, not a state dict"):
            create_model(ModelConfig(pretrained=str(tmp_path / name)))
    (tmp_path / "zero.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"zero.pt is empty \(0 bytes\)"):
        create_model(ModelConfig(pretrained=str(tmp_path / "zero.pt")))
    with pytest.raises(ValueError, match="is a folder, not a checkpoint file"):
        create_model(ModelConfig(pretrained=str(tmp_path)))
    with pytest.raises(ConfigError, match="model.precision"):
        ModelConfig(precision="fp8")
