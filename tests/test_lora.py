"""LoRA through peft: only adapters train, the export is stock open_clip, bad targets fail early,
and FSDP2 on 2 gloo ranks trains the adapters exactly as one process does."""

import os

import numpy as np
import pytest
import torch

from countclip.config import ConfigError
from countclip.lora import LoraConfig, attention_targets, has_lora, resolve_targets, trainable_parameters
from countclip.model import ModelConfig, check_for_training, create_model, export_checkpoint, skeleton


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    from countclip.world.files import write_clean_dataset

    out = str(tmp_path_factory.mktemp("lora") / "dataset")
    write_clean_dataset(out, seed=11, rows=96, image_size=64, counting_share=0.4)
    return out


def lora_model(targets, seed=0):
    torch.manual_seed(seed)
    model, preprocess, tokenizer = create_model(ModelConfig(lora=LoraConfig(rank=4, alpha=8, targets=targets)))
    return model, preprocess, tokenizer


def perturb_adapters(model, seed=1):
    """Give every B a non-zero value, as training would (B starts at 0: the model is unchanged)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def test_only_the_adapters_of_both_towers_train(small_dataset):
    from countclip.data.batches import TrainingStream
    from countclip.train import LossConfig, TrainConfig, train

    model, preprocess, tokenizer = lora_model(["c_fc", "c_proj"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert any(n.startswith("visual.") for n in trainable) and any(n.startswith("transformer.") for n in trainable)
    count, total = trainable_parameters(model)
    assert count == 2 * 2 * 2 * (4 * 128 + 512 * 4)  # 2 towers x 2 blocks x (c_fc + c_proj), rank 4
    assert count / total < 0.01
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(steps=3, batch_size=16, counting_fraction=0.25, log_every=1, loss=LossConfig(count_lambda=1.0))
    train(cfg, model, tokenizer, TrainingStream.for_training(small_dataset, cfg, preprocess))
    for name, p in model.named_parameters():
        assert torch.equal(before[name], p.detach()) == (name not in trainable), name  # frozen stay, adapters move


@pytest.mark.parametrize("targets", [["c_fc", "c_proj"], ["attn", "c_fc", "c_proj"]])
def test_export_merges_adapters_into_stock_open_clip_weights(targets, tmp_path):
    import open_clip

    model, _, tokenizer = lora_model(targets)
    perturb_adapters(model)
    export_checkpoint(model, tmp_path / "merged.pt")
    assert has_lora(model)  # the export leaves the training model as it was
    state = torch.load(tmp_path / "merged.pt", weights_only=True)
    plain, _, _ = create_model(ModelConfig())
    assert set(state) == set(plain.state_dict())  # stock names: no base_layer, no lora_A/B
    stock, _, _ = open_clip.create_model_and_transforms("countclip-tiny", pretrained=str(tmp_path / "merged.pt"))
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    texts = tokenizer(["two red circles", "three squares", "a cat"])
    model.eval()
    with torch.no_grad():
        want_i, want_t = model.encode_image(images), model.encode_text(texts)
        got_i, got_t = stock.encode_image(images), stock.encode_text(texts)
        untuned = plain.encode_image(images)
    torch.testing.assert_close(got_i, want_i, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_t, want_t, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(untuned, want_i, atol=1e-3)  # the adapters did change the function


def test_bad_targets_and_losses_fail_before_training():
    tree = skeleton("countclip-tiny")
    with pytest.raises(ConfigError, match=r"'q_proj' names no module of this model; module names LoRA can adapt here: "
                                          r"\['attn', 'c_fc', 'c_proj', 'conv1', 'token_embedding'\]"):
        resolve_targets(tree, LoraConfig(targets=["c_fc", "q_proj"]))
    with pytest.raises(ConfigError, match="'mlp' names modules LoRA cannot adapt"):
        resolve_targets(tree, LoraConfig(targets=["mlp"]))
    with pytest.raises(ConfigError, match="out_proj is never called"):
        LoraConfig(targets=["out_proj"])
    with pytest.raises(ConfigError, match="rank must be >= 1"):
        LoraConfig(rank=0)
    assert len(resolve_targets(tree, LoraConfig())["c_fc"]) == 4  # 2 blocks in each tower
    assert attention_targets(tree, LoraConfig(targets=["attn", "c_fc"])) == [
        "visual.transformer.resblocks.0.attn", "visual.transformer.resblocks.1.attn",
        "transformer.resblocks.0.attn", "transformer.resblocks.1.attn"]
    with pytest.raises(ConfigError, match="loss.contrastive siglip needs a model with a logit bias"):
        check_for_training(ModelConfig(arch="countclip-tiny"), "siglip")
    assert check_for_training(ModelConfig(arch="countclip-tiny-sigmoid"), "siglip") == {}
    with pytest.raises(ConfigError, match="'nope' names no module"):
        check_for_training(ModelConfig(lora=LoraConfig(targets=["nope"])), "clip")


def _fsdp_lora_worker(rank, world, store, queue):
    import torch.distributed as dist

    from countclip.distributed import shard_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    model, _, tokenizer = lora_model(["c_fc", "c_proj"])
    perturb_adapters(model)
    model = shard_model(model, "fsdp", torch.device("cpu"))
    losses = _two_steps(model, tokenizer, slice(rank * 4, rank * 4 + 4))
    mean = torch.tensor(losses)
    dist.all_reduce(mean)
    queue.put((rank, (mean / world).tolist()))
    dist.barrier()
    dist.destroy_process_group()
    queue.close()
    queue.join_thread()
    os._exit(0)  # skip torch's occasionally aborting teardown (see tests/test_losses.py)


def _two_steps(model, tokenizer, rows):
    from countclip.losses import clip_loss

    g = torch.Generator().manual_seed(3)
    images = torch.randn(8, 3, 64, 64, generator=g)[rows]
    texts = tokenizer([f"{w} circles" for w in ("two", "three", "four", "five", "six", "seven", "eight", "nine")])[rows]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(2):
        image_features, text_features, scale = model(images, texts)
        loss = clip_loss(image_features, text_features, scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def test_lora_under_fsdp2_on_two_ranks_matches_one_process(tmp_path):
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    torch.multiprocessing.start_processes(_fsdp_lora_worker, args=(2, tmp_path / "rendezvous", queue), nprocs=2,
                                          join=True, start_method="spawn")
    results = sorted(queue.get(timeout=120) for _ in range(2))
    model, _, tokenizer = lora_model(["c_fc", "c_proj"])
    perturb_adapters(model)
    want = _two_steps(model, tokenizer, slice(0, 8))
    for _rank, losses in results:
        np.testing.assert_allclose(losses, want, rtol=1e-4)
