"""Your own image folder (ceag.app.data.images): layout, attributes, pixels, errors, the CLI path."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import ceag.app.data as data
from ceag.app.cli import main
from ceag.app.data import load_images
from ceag.errors import UsageError


def _write(root, n_per_class: int = 20, size=(8, 8), seed: int = 0):
    """Two classes of RGB squares (red-ish / blue-ish + noise) and an attributes CSV."""
    rng = np.random.default_rng(seed)
    rows = []
    for c, colour in (("blue", (0, 0, 200)), ("red", (200, 0, 0))):
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            px = np.clip(np.array(colour) + rng.normal(0, 30, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / c / f"{i:03d}.png")
            rows.append({"file": f"{c}/{i:03d}.png", "tone": rng.choice(["light", "dark"]), "age": int(rng.integers(18, 80))})
    pd.DataFrame(rows).to_csv(root.parent / "attributes.csv", index=False)
    return root, root.parent / "attributes.csv"


@pytest.fixture
def folder(tmp_path):
    return _write(tmp_path / "photos")


def test_load_images(folder):
    root, attrs = folder
    ds = load_images(root, attrs, "tone,age:bins=40", test_fraction=0.25)
    assert ds.class_names == ("blue", "red") and ds.input_shape == (3, 8, 8)
    assert set(ds.group_names) <= {"dark/<40", "dark/40+", "light/<40", "light/40+"}
    assert len(ds.train) + len(ds.test) == 40
    x = ds.train.tensors[0]
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)  # standardised on train
    # red images have a higher red channel than blue ones
    y = ds.train.tensors[1]
    assert x[y == 1, 0].mean() > x[y == 0, 0].mean()


def test_class_as_group_resize_and_greyscale(folder, tmp_path):
    root, attrs = folder
    ds = load_images(root, attrs, "class", image_size=(4, 6))
    assert ds.group_names == ("blue", "red") and ds.input_shape == (3, 4, 6)
    grey = tmp_path / "grey" / "g"
    for c in ("a", "b"):
        (grey / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((5, 5), 40 * i, np.uint8), mode="L").save(grey / c / f"{i}.png")
    pd.DataFrame({"file": [f"{c}/{i}.png" for c in "ab" for i in range(3)]}).to_csv(tmp_path / "g.csv", index=False)
    assert load_images(grey, tmp_path / "g.csv", "class", test_fraction=0.3).input_shape == (1, 5, 5)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda df: df.iloc[1:], "has no row for 1 image"),
        (lambda df: pd.concat([df, pd.DataFrame([{"file": "red/999.png", "tone": "dark", "age": 3}])]), "not in the folder"),
        (lambda df: df.drop(columns="tone"), "has no column 'tone'"),
        (lambda df: df.rename(columns={"file": "path"}), "has no 'file' column"),
        (lambda df: pd.concat([df, df.iloc[:1]]), "has two rows"),
    ],
)
def test_attribute_mismatches_name_a_file(folder, edit, message):
    root, attrs = folder
    edit(pd.read_csv(attrs)).to_csv(attrs, index=False)
    with pytest.raises(UsageError, match=message):
        load_images(root, attrs, "tone")


def test_bad_folders_and_images(folder, tmp_path):
    root, attrs = folder
    with pytest.raises(UsageError, match="does not exist"):
        load_images(tmp_path / "none", attrs, "tone")
    (root / "red" / "000.png").write_bytes(b"not an image")
    with pytest.raises(UsageError, match="000.png cannot be read"):
        load_images(root, attrs, "tone")


def test_cli_runs_an_image_folder(folder, tmp_path, capsys):
    root, attrs = folder
    argv = [
        "compare",
        "--data",
        str(root),
        "--attributes",
        str(attrs),
        "--groups",
        "tone",
        "--methods",
        "nft,ceag",
        "--seeds",
        "0",
        "--hidden",
        "16",
        "--dense-epochs",
        "1",
        "--pruning-epochs",
        "1",
        "--mitigation-epochs",
        "1",
        "--batch-size",
        "8",
        "--min-count",
        "2",
        "--no-progress",
        "--no-plots",
        "--output",
        str(tmp_path / "runs"),
    ]
    assert main(argv) == 0
    assert "| CEAG |" in capsys.readouterr().out
    assert (tmp_path / "runs" / "photos-nft-ceag-s90" / "results.md").exists()
    with pytest.raises(SystemExit):
        main(["run", "--data", str(root), "--groups", "tone", "--output", str(tmp_path / "x")])
    assert "needs --attributes" in capsys.readouterr().err


def test_fashion_mnist_written_out_as_files(tmp_path):
    """The bundled fashion-mnist, 20 images per class written as PNG files, reads back to the
    same pixels and labels through the image-folder path."""
    if not data.is_fetched("fashion-mnist") and not os.environ.get("CEAG_REQUIRE_DATA"):
        pytest.skip("fashion-mnist is not fetched")
    from ceag.app.data import fashion_mnist

    ds = data.load("fashion-mnist")
    x, y, _ = ds.train.tensors
    pick = torch.cat([torch.nonzero(y == c)[:20, 0] for c in range(10)])
    raw = ((x[pick, 0] * fashion_mnist.STD + fashion_mnist.MEAN) * 255).round().clamp(0, 255).to(torch.uint8)
    rows = []
    for k, (i, img) in enumerate(zip(pick.tolist(), raw)):
        name = f"{int(y[i]):02d}-{ds.class_names[int(y[i])].replace('/', '-')}/{k:04d}.png"
        (tmp_path / "fm" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.numpy(), mode="L").save(tmp_path / "fm" / name)
        rows.append({"file": name})
    for c in range(10):  # one test image per class, in its own folder
        name = f"{c:02d}-{ds.class_names[c].replace('/', '-')}/test.png"
        (tmp_path / "fm-test" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(raw[20 * c].numpy(), mode="L").save(tmp_path / "fm-test" / name)
        rows.append({"file": name})
    pd.DataFrame(rows).to_csv(tmp_path / "fm.csv", index=False)
    got = load_images(tmp_path / "fm", tmp_path / "fm.csv", "class", test=tmp_path / "fm-test")
    assert got.num_classes == 10 and got.num_groups == 10 and got.input_shape == (1, 28, 28)
    assert (len(got.train), len(got.test)) == (200, 10)
    assert torch.equal(got.train.tensors[1], y[pick]) and torch.equal(got.train.tensors[2], y[pick])
    # pixels: the written bytes, standardised with the training images' own mean and std
    pixels = raw.float() / 255
    want = (pixels - pixels.mean()) / pixels.std(unbiased=False)
    assert torch.allclose(got.train.tensors[0][:, 0], want, atol=1e-4)


def test_one_grey_image_does_not_turn_the_colour_ones_grey(folder):
    """Greyscale only when every image is (issue 24, bad 5): a grey first file once made all grey."""
    root, attrs = folder
    first = sorted((root / "blue").iterdir())[0]
    Image.fromarray(np.full((8, 8), 90, np.uint8), mode="L").save(first)
    ds = load_images(root, attrs, "tone", test_fraction=0.25)
    assert ds.input_shape == (3, 8, 8)
    y = ds.train.tensors[1]
    assert ds.train.tensors[0][y == 1, 0].mean() > ds.train.tensors[0][y == 0, 0].mean()  # red still red


def test_sixteen_bit_grey_keeps_its_depth(tmp_path):
    """16-bit PNGs are scaled by 65535, not clipped at 255 (issue 24, bad 6): two classes that
    differ only above 8 bits stay apart."""
    root = tmp_path / "deep"
    for c, level in (("dim", 20_000), ("bright", 50_000)):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((6, 6), level + 100 * i, np.uint16)).save(root / c / f"{i}.png")
    pd.DataFrame({"file": [f"{c}/{i}.png" for c in ("dim", "bright") for i in range(4)]}).to_csv(tmp_path / "a.csv", index=False)
    ds = load_images(root, tmp_path / "a.csv", "class", test_fraction=0.25)
    x, y = ds.train.tensors[0], ds.train.tensors[1]
    assert ds.input_shape == (1, 6, 6)
    assert float(x[y == ds.class_names.index("bright")].mean()) > float(x[y == ds.class_names.index("dim")].mean()) + 1


def test_empty_class_folder_and_decompression_bomb_are_named(folder, monkeypatch):
    root, attrs = folder
    (root / "zebra").mkdir()
    with pytest.raises(UsageError, match="class folder 'zebra' holds no images"):
        load_images(root, attrs, "tone")
    (root / "zebra").rmdir()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # every 8x8 image is now a "bomb"
    with pytest.raises(UsageError, match="too large to read safely"):
        load_images(root, attrs, "tone")


def test_a_huge_first_image_asks_for_image_size(folder, monkeypatch):
    """A 4000² first image once resized every image to 4000² and ran out of memory (issue 24)."""
    import ceag.app.data.images as images

    root, attrs = folder
    monkeypatch.setattr(images, "MAX_PIXEL_BYTES", 40 * 3 * 8 * 8 * 4 - 1)
    with pytest.raises(UsageError, match=r"40 images at 8x8 \(the first image's size\) would take .* --image-size"):
        load_images(root, attrs, "tone")
    assert load_images(root, attrs, "tone", image_size=(4, 4)).input_shape == (3, 4, 4)
