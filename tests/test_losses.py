import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from countclip.losses import CountingContrastiveLoss, clip_loss, count_weights, counting_loss, siglip_loss


def unit(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


def direct_count_loss(i, t, cf, s):
    """The paper's formula in float64, one sample at a time."""
    total = 0.0
    for k in range(len(i)):
        pos = math.exp(s * float(i[k] @ t[k]))
        neg = sum(math.exp(s * float(i[k] @ c)) for c in cf[k])
        total += -math.log(pos / (pos + neg))
    return total / len(i)


@pytest.mark.parametrize("m", [1, 8])
def test_counting_loss_matches_formula_in_float64(m):
    i, t, cf = unit(6, 16, seed=1), unit(6, 16, seed=2), unit(6, m, 16, seed=3)
    scale = 14.3
    got = counting_loss(i, t, cf if m > 1 else cf[:, 0], torch.tensor(scale))
    want = direct_count_loss(i.double(), t.double(), cf.double(), scale)
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_counting_loss_prefers_true_caption():
    i = unit(4, 8, seed=4)
    cf = unit(4, 8, seed=5)
    assert counting_loss(i, i, cf, 50.0) < math.log(2) < counting_loss(i, cf, i, 50.0)


def test_counting_loss_weights_and_empty_batch():
    i, t, cf = unit(3, 8, seed=6), unit(3, 8, seed=7), unit(3, 8, seed=8)
    per = [float(counting_loss(i[k : k + 1], t[k : k + 1], cf[k : k + 1], 10.0)) for k in range(3)]
    w = torch.tensor([1.0, 2.0, 3.0])
    assert float(counting_loss(i, t, cf, 10.0, w)) == pytest.approx(sum(p * x for p, x in zip(per, w.tolist())) / 6)
    empty = unit(0, 8)
    leaf = empty.clone().requires_grad_()
    zero = counting_loss(leaf, leaf, leaf, 10.0)
    zero.backward()
    assert zero.item() == 0.0 and leaf.grad is not None


def test_clip_loss_equals_open_clip_single_process():
    from open_clip.loss import ClipLoss

    i, t = unit(8, 16, seed=9), unit(8, 16, seed=10)
    ours = clip_loss(i, t, torch.tensor(20.0))
    theirs = ClipLoss()(i, t, torch.tensor(20.0))
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)
    # The matching pairs must score lower than shuffled ones.
    assert clip_loss(i, i, 20.0) < clip_loss(i, t, 20.0)


def test_count_weight_schemes():
    hist = {2: 400, 3: 200, 4: 100}
    assert count_weights(hist, "constant")[3] == 1.0
    modal = count_weights(hist, "modal")
    assert (modal[2], modal[3], modal[4]) == (1.0, 2.0, 4.0)
    norm = count_weights(hist, "norm")
    assert np.mean([norm[c] for c in hist]) == pytest.approx(1.0) and norm[4] == pytest.approx(4 * norm[2])
    log = count_weights(hist, "log")
    assert log[4] == pytest.approx(1 + math.log(4))
    assert modal[9] == 4.0  # absent counts get the largest weight
    with pytest.raises(ValueError, match="unknown lambda scheme"):
        count_weights(hist, "cubic")
    with pytest.raises(ValueError, match="non-zero count"):
        count_weights({2: 0}, "norm")


def test_module_returns_named_terms():
    i, t = unit(6, 8, seed=11), unit(6, 8, seed=12)
    is_counting = torch.tensor([True, True, False, False, False, False])
    counts = torch.tensor([3, 5, 0, 0, 0, 0])
    cf = unit(2, 1, 8, seed=13)
    terms = CountingContrastiveLoss(2.0, {3: 1.0, 5: 3.0})(i, t, cf, is_counting, counts, torch.tensor(10.0))
    assert set(terms) == {"clip_loss", "count_loss"}
    want = 2.0 * counting_loss(i[:2], t[:2], cf, 10.0, torch.tensor([1.0, 3.0]))
    assert float(terms["count_loss"]) == pytest.approx(float(want))
    assert set(CountingContrastiveLoss(0.0)(i, t, cf, is_counting, counts, torch.tensor(10.0))) == {"clip_loss"}


def _gathered_worker(rank, world, store, queue, local_loss):
    import torch.distributed as dist

    # A file rendezvous: no port to pick in advance, so nothing else on the machine can take it first.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(0)
    weight = torch.nn.Linear(16, 16, bias=False)
    x_img, x_txt = unit(8, 16, seed=20), unit(8, 16, seed=21)
    rows = slice(rank * 4, rank * 4 + 4)
    img = F.normalize(weight(x_img[rows]), dim=-1)
    txt = F.normalize(weight(x_txt[rows]), dim=-1)
    loss = clip_loss(img, txt, torch.tensor(10.0), local_loss=local_loss)
    loss.backward()
    grad = weight.weight.grad.clone()
    dist.all_reduce(grad)
    grad /= world  # what DDP/FSDP gradient averaging does
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    queue.put((rank, float(loss.detach()), float(mean_loss) / world, grad.numpy()))
    dist.barrier()
    dist.destroy_process_group()
    queue.close()
    queue.join_thread()  # the result is in the pipe
    # Skip the interpreter's teardown: torch's C++ threads occasionally abort it ("terminate called
    # without an active exception", seen in 1 of ~4 full CI runs) after all the work is done.
    os._exit(0)


@pytest.mark.parametrize("local_loss", [True, False])
def test_gathered_clip_loss_on_two_ranks_equals_single_process(local_loss, tmp_path):
    """2 gloo processes, 4 rows each == one process on the 8 rows: loss and averaged gradients."""
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    torch.multiprocessing.start_processes(
        _gathered_worker, args=(2, tmp_path / "rendezvous", queue, local_loss), nprocs=2, join=True, start_method="spawn"
    )
    results = sorted(queue.get(timeout=60) for _ in range(2))

    torch.manual_seed(0)
    weight = torch.nn.Linear(16, 16, bias=False)
    img = F.normalize(weight(unit(8, 16, seed=20)), dim=-1)
    txt = F.normalize(weight(unit(8, 16, seed=21)), dim=-1)
    single = clip_loss(img, txt, torch.tensor(10.0))
    single.backward()
    for _rank, loss, mean_loss, grad in results:
        assert mean_loss == pytest.approx(float(single), rel=1e-5)
        if not local_loss:
            assert loss == pytest.approx(float(single), rel=1e-5)
        np.testing.assert_allclose(grad, weight.weight.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_siglip_term_equals_open_clip_siglip_loss_and_keeps_the_count_term():
    from open_clip.loss import SigLipLoss

    i, t = unit(8, 16, seed=30), unit(8, 16, seed=31)
    scale, bias = torch.tensor([10.0]), torch.tensor([-10.0])
    is_counting = torch.tensor([True, True, True] + [False] * 5)
    counts = torch.tensor([3, 4, 5, 0, 0, 0, 0, 0])
    cf = unit(3, 2, 16, seed=32)
    terms = CountingContrastiveLoss(2.0, contrastive="siglip")(i, t, cf, is_counting, counts, scale, bias)
    assert set(terms) == {"siglip_loss", "count_loss"}
    assert float(terms["siglip_loss"]) == pytest.approx(float(SigLipLoss()(i, t, scale, bias)), rel=1e-6)
    # L_count is the paper's softmax on s<i,t> + b: the bias cancels, so it equals the CLIP run's term.
    clip_terms = CountingContrastiveLoss(2.0)(i, t, cf, is_counting, counts, scale)
    assert float(terms["count_loss"]) == pytest.approx(float(clip_terms["count_loss"]), rel=1e-6)
    assert float(siglip_loss(i, i, scale, bias)) < float(siglip_loss(i, t, scale, bias))
    with pytest.raises(ValueError, match="needs the model's logit bias"):
        CountingContrastiveLoss(1.0, contrastive="siglip")(i, t, cf, is_counting, counts, scale)
    with pytest.raises(ValueError, match="unknown contrastive loss 'sigmoid'"):
        CountingContrastiveLoss(1.0, contrastive="sigmoid")


def _siglip_worker(rank, world, store, queue):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(0)
    weight = torch.nn.Linear(16, 16, bias=False)
    bias = torch.nn.Parameter(torch.tensor([-10.0]))
    rows = slice(rank * 4, rank * 4 + 4)
    img = F.normalize(weight(unit(8, 16, seed=40)[rows]), dim=-1)
    txt = F.normalize(weight(unit(8, 16, seed=41)[rows]), dim=-1)
    loss = siglip_loss(img, txt, torch.tensor([10.0]), bias)
    loss.backward()
    grads = torch.cat([weight.weight.grad.flatten(), bias.grad.flatten()])
    dist.all_reduce(grads)
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    queue.put((rank, float(mean_loss) / world, (grads / world).numpy()))
    dist.barrier()
    dist.destroy_process_group()
    queue.close()
    queue.join_thread()
    os._exit(0)  # as in _gathered_worker: skip torch's occasionally aborting teardown


def test_siglip_loss_on_two_ranks_equals_open_clip_on_the_whole_batch(tmp_path):
    """2 gloo processes, 4 rows each (open_clip's neighbour exchange) == SigLipLoss in one process on
    the 8 rows: the loss averaged over ranks and the averaged gradients of weights and bias."""
    from open_clip.loss import SigLipLoss

    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    torch.multiprocessing.start_processes(_siglip_worker, args=(2, tmp_path / "rendezvous", queue), nprocs=2,
                                          join=True, start_method="spawn")
    results = sorted(queue.get(timeout=60) for _ in range(2))

    torch.manual_seed(0)
    weight = torch.nn.Linear(16, 16, bias=False)
    bias = torch.nn.Parameter(torch.tensor([-10.0]))
    img = F.normalize(weight(unit(8, 16, seed=40)), dim=-1)
    txt = F.normalize(weight(unit(8, 16, seed=41)), dim=-1)
    single = SigLipLoss()(img, txt, torch.tensor([10.0]), bias)
    single.backward()
    want = torch.cat([weight.weight.grad.flatten(), bias.grad.flatten()]).numpy()
    for _rank, mean_loss, grads in results:
        assert mean_loss == pytest.approx(float(single.detach()), rel=1e-5)
        np.testing.assert_allclose(grads, want, rtol=1e-4, atol=1e-6)
