"""Pictures of a model (rws samples): the panels hold what they claim, the picture is
written, and a data set that is not images is refused."""
import subprocess
import sys

import numpy as np
import torch

from rws import samples, zoo


def test_panels_show_the_data_layers_probabilities():
    # P_0 with zero weights: p(x | h_1) = sigmoid(b) whatever h_1 is
    model = zoo.build("sbn:3", 16)
    with torch.no_grad():
        model.p_layers[0].W.zero_()
        model.p_layers[0].b.copy_(torch.linspace(-3, 3, 16))
    x = (torch.rand(10, 16, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    pics = samples.panels(model, x, 6)
    want = torch.sigmoid(torch.linspace(-3, 3, 16)).expand(6, 16)
    assert torch.allclose(pics["dreams"], want) and torch.allclose(pics["reconstructions"], want)
    assert torch.equal(pics["data"], x[[0, 2, 4, 5, 7, 9]])          # spread over the set
    binary = samples.panels(model, x, 6, binary=True)
    assert set(binary["dreams"].unique().tolist()) <= {0.0, 1.0}


def test_grid_places_each_image_in_its_cell():
    images = torch.arange(4.0).repeat_interleave(4).view(4, 4) / 3      # 4 images of 2x2
    g = samples.grid(images, 2, cols=2)
    assert g.shape == (5, 5)
    assert g[0, 0] == 0 and g[0, 3] == images[1, 0] and g[3, 0] == images[2, 0]
    assert g[2, 2] == 0.5                                                # the gap


def rws(*args):
    return subprocess.run([sys.executable, "-m", "rws", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_rws_samples_writes_a_picture_of_a_trained_run(tmp_path):
    rng = np.random.default_rng(0)
    bars = (rng.random((300, 16)) < 0.3).astype(np.uint8)              # 4x4 images
    np.savez(tmp_path / "img.npz", train=bars[:200], valid=bars[200:250], test=bars[250:])
    p = rws("train", "--data", tmp_path / "img.npz", "--model", "sbn:4", "--epochs", "1",
            "--valid-k", "2", "--test-k", "2", "--out", tmp_path / "run", "--threads", "1")
    assert p.returncode == 0, p.stderr
    p = rws("samples", tmp_path / "run" / "checkpoint.pt", "--out", tmp_path / "s.png", "-n", "9")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "pixel probabilities" in p.stdout


def test_rws_samples_refuses_data_that_is_not_images(tmp_path):
    p = rws("train", "--data", "dna", "--model", "sbn:4", "--epochs", "1", "--valid-k", "2",
            "--test-k", "2", "--out", tmp_path / "run", "--threads", "1")
    assert p.returncode == 0, p.stderr
    p = rws("samples", tmp_path / "run" / "checkpoint.pt", "--out", tmp_path / "s.png")
    assert p.returncode == 2 and "not an image data set" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
