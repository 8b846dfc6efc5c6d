"""The article's operations and experiments (shiftlab.classic), against the article's own loop definitions."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import shiftlab
from shiftlab.classic import (
    convolve,
    edge_experiment,
    max_pool,
    pixel_experiment,
    pool_iterations,
    pooling_experiment,
    sobel_kernel,
    tandem_experiment,
)
from shiftlab.errors import InputError, ShapeError


# ---- the article's definitions, as slow references (loops over pixels, try/except and all) ----------------

def article_convolve(image, filter):
    """The article's ``convolve`` without tqdm and plotting: a loop over every pixel, ReLU at the end."""
    filter_size = filter.shape[0]
    convolved = np.zeros(((image.shape[0] - filter_size) + 1, (image.shape[1] - filter_size) + 1))
    for i in range(image.shape[0]):
        for j in range(image.shape[1]):
            try:
                convolved[i, j] = (image[i:(i + filter_size), j:(j + filter_size)] * filter).sum()
            except Exception:
                pass
    return F.relu(torch.tensor(convolved)).numpy()


def article_max_pool(image, kernel_size=2):
    """The article's ``max_pool`` without tqdm and plotting."""
    pooled = np.zeros((image.shape[0] // kernel_size, image.shape[1] // kernel_size))
    k = -1
    for i in range(0, image.shape[0], kernel_size):
        k += 1
        l = -1  # noqa: E741 (the article's name)
        if k == pooled.shape[0]:
            break
        for j in range(0, image.shape[1], kernel_size):
            l += 1
            if l == pooled.shape[1]:
                break
            try:
                pooled[k, l] = (image[i:(i + kernel_size), j:(j + kernel_size)]).max()
            except ValueError:
                pass
    return pooled


SETTINGS = settings(max_examples=25, deadline=None)


# ---- convolve -------------------------------------------------------------------------------------

@SETTINGS
@given(h=st.integers(3, 14), w=st.integers(3, 14), k=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_convolve_agrees_with_the_article_loop(h, w, k, seed):
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((h, w))
    kernel = rng.standard_normal((k, k))
    ours = convolve(image, kernel)
    ref = article_convolve(image, kernel)
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float64
    assert ours.shape == ref.shape == (h - k + 1, w - k + 1)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_convolve_agrees_with_the_article_loop_on_the_photo_with_its_kernel():
    photo = shiftlab.data.bundled_photo("camera", mode="L")[200:264, 100:180]
    np.testing.assert_allclose(convolve(photo, sobel_kernel()), article_convolve(photo, sobel_kernel()),
                               rtol=0, atol=1e-12)


def test_convolve_without_relu_keeps_negative_responses():
    image = np.zeros((4, 6))
    image[:, 3:] = 1.0  # dark to bright: positive response
    raw = convolve(image[:, ::-1], sobel_kernel(), relu=False)
    assert raw.min() == -3.0
    assert convolve(image[:, ::-1], sobel_kernel()).max() == 0.0


@SETTINGS
@given(b=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(3, 11), w=st.integers(3, 11),
       kh=st.integers(1, 3), kw=st.integers(1, 3), relu=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_batched_convolve_agrees_with_conv2d_per_channel(b, c, h, w, kh, kw, relu, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, dtype=torch.float64, generator=g)
    kernel = torch.randn(kh, kw, dtype=torch.float64, generator=g)
    ref = F.conv2d(x, kernel.expand(c, 1, kh, kw), groups=c)
    if relu:
        ref = F.relu(ref)
    ours = convolve(x, kernel, relu=relu)
    assert isinstance(ours, torch.Tensor) and ours.dtype == torch.float64
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)


def test_convolve_keeps_the_type_and_float32_and_gradients():
    x = torch.rand(10, 12, requires_grad=True)
    out = convolve(x, sobel_kernel())
    assert out.dtype == torch.float32 and out.shape == (8, 10)
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    as_numpy = convolve(x.detach().numpy(), sobel_kernel())
    np.testing.assert_allclose(out.detach().numpy(), as_numpy, rtol=1e-6, atol=1e-6)
    assert convolve(np.ones((5, 5), dtype=np.uint8), np.ones((2, 2))).dtype == np.float64
    assert convolve(np.ones((5, 5), dtype=np.float32), sobel_kernel()).dtype == np.float32


def test_convolve_is_exported_from_shiftlab():
    assert shiftlab.convolve is convolve
    assert shiftlab.max_pool is max_pool and shiftlab.pool_iterations is pool_iterations
    assert shiftlab.sobel_kernel is sobel_kernel


@pytest.mark.parametrize(
    "image, kernel",
    [
        (np.zeros((5,)), np.ones((3, 3))),            # 1-D
        (np.zeros((2, 5, 5)), np.ones((3, 3))),       # 3-D
        (np.zeros((2, 2)), np.ones((3, 3))),          # kernel larger than the image
        (np.zeros((5, 5)), np.ones((3,))),            # 1-D kernel
        (np.full((5, 5), np.nan), np.ones((3, 3))),   # NaN
        (torch.zeros(5, 5, dtype=torch.int64), np.ones((3, 3))),
        ([[1.0, 2.0], [3.0, 4.0]], np.ones((1, 1))),  # not an array
    ],
)
def test_convolve_rejects_bad_input_with_a_shape_error(image, kernel):
    with pytest.raises(ShapeError):
        convolve(image, kernel)


def test_sobel_kernel_is_the_article_kernel_and_its_transpose():
    np.testing.assert_array_equal(sobel_kernel("vertical"), np.array([[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]]))
    np.testing.assert_array_equal(sobel_kernel("horizontal"), sobel_kernel("vertical").T)
    with pytest.raises(InputError):
        sobel_kernel("diagonal")


def test_the_vertical_kernel_finds_vertical_edges_only():
    stripes = np.zeros((8, 8))
    stripes[:, 4:] = 1.0
    assert convolve(stripes, sobel_kernel("vertical")).max() == 3.0
    assert convolve(stripes, sobel_kernel("horizontal")).max() == 0.0
    assert convolve(stripes.T, sobel_kernel("horizontal")).max() == 3.0


# ---- max pooling ----------------------------------------------------------------------------------

@SETTINGS
@given(h=st.integers(1, 17), w=st.integers(1, 17), k=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_max_pool_agrees_with_the_article_loop(h, w, k, seed):
    assume(h >= k and w >= k)
    image = np.random.default_rng(seed).standard_normal((h, w))
    ours = max_pool(image, k)
    assert ours.shape == (h // k, w // k)
    np.testing.assert_array_equal(ours, article_max_pool(image, k))


def test_max_pool_on_tensors_agrees_with_torch():
    x = torch.randn(2, 3, 11, 9)
    torch.testing.assert_close(max_pool(x, 2), F.max_pool2d(x, 2), rtol=0, atol=0)
    torch.testing.assert_close(max_pool(x, 3), F.max_pool2d(x, 3), rtol=0, atol=0)


def test_pool_iterations_drop_the_remainder_like_the_article():
    maps = pool_iterations(np.arange(100.0).reshape(10, 10), 3)
    assert [m.shape for m in maps] == [(10, 10), (5, 5), (2, 2), (1, 1)]
    assert maps[3][0, 0] == 77.0  # the 5th row and column were dropped at 5x5 -> 2x2
    assert pool_iterations(np.ones((4, 4)), 0)[0] is not None and len(pool_iterations(np.ones((4, 4)), 0)) == 1


def test_max_pool_rejects_bad_input():
    with pytest.raises(ShapeError):
        max_pool(np.zeros((1, 5)), 2)
    with pytest.raises(InputError):
        max_pool(np.zeros((4, 4)), 0)
    with pytest.raises(InputError):
        pool_iterations(np.zeros((4, 4)), -1)
    with pytest.raises(ShapeError):
        pool_iterations(np.zeros((4, 4)), 3)


# ---- the pixel experiment -------------------------------------------------------------------------

def test_pixel_experiment_reproduces_the_article():
    result = pixel_experiment()
    assert result.pixels == ((2, 2), (7, 7))
    assert result.shapes == ((10, 10), (5, 5), (2, 2), (1, 1))
    assert result.positions[0][2] == (0, 0)
    assert result.positions[1][2] == (1, 1)
    assert [d[0] for d in result.distances] == [5, 2, 1, 0]
    assert [d[1] for d in result.distances] == [5, 2, 1, 0]
    assert json.loads(json.dumps(result.to_dict()))["distances"] == [[5, 5], [2, 2], [1, 1], [0, 0]]


def test_pixel_experiment_reports_a_pixel_lost_in_a_dropped_remainder():
    # [4, 4] survives 10 -> 5 as [2, 2]... but [9, 9] -> [4, 4] is dropped by 5 -> 2
    result = pixel_experiment(pixels=((0, 0), (9, 9)), iterations=2)
    assert result.positions[1] == ((9, 9), (4, 4), None)
    assert result.distances[2] is None


# ---- the photo experiments ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def edges():
    return edge_experiment()


def test_edges_of_the_translated_photo_are_the_translated_edges_away_from_the_seam(edges):
    assert edges.source == "bundled:camera" and edges.edge_shape == (510, 510)
    dy, dx = edges.shift
    assert dy % 2 == 1 and dx != 0  # a real shift, odd on one axis
    # exact, not approximately: the same products summed in the same order
    assert edges.translation_interior_max_abs == 0.0
    assert edges.translation_interior_pixels == (510 - abs(dy)) * (510 - abs(dx))
    # negative control: on the wrap-around seam it does not hold
    assert edges.translation_seam_max_abs > 0.1 * edges.scale


@pytest.mark.parametrize("shift", [(0, 1), (-5, 3), (31, -200)])
def test_translation_identity_for_other_shifts_on_a_random_image(shift):
    image = np.random.default_rng(0).random((40, 250))
    result = edge_experiment(image, shift=shift, kernel=np.random.default_rng(1).standard_normal((3, 4)))
    assert result.translation_interior_max_abs == 0.0
    assert result.translation_seam_max_abs > 0.0


def test_mirroring_flips_the_sign_of_the_raw_response(edges):
    raw, raw_mirrored = edges.raw, edges.raw_mirrored
    np.testing.assert_allclose(raw_mirrored, -raw[:, ::-1], rtol=0, atol=1e-12 * edges.scale)
    np.testing.assert_allclose(np.abs(raw_mirrored), np.abs(raw)[:, ::-1], rtol=0, atol=1e-12 * edges.scale)
    assert edges.mirror_raw_max_abs <= 1e-12 * edges.scale
    assert edges.mirror_magnitude_max_abs <= 1e-12 * edges.scale
    # negative control: without the sign flip, or one pixel off, the identity fails
    assert np.abs(raw_mirrored - raw[:, ::-1]).max() > 0.5 * edges.scale
    assert np.abs(raw_mirrored[:, 1:] + raw[:, ::-1][:, :-1]).max() > 0.1 * edges.scale


def test_after_relu_the_mirrored_photo_keeps_the_other_edges(edges):
    mirrored_negative_part = np.maximum(-edges.raw, 0.0)[:, ::-1]
    np.testing.assert_allclose(edges.edges_mirrored, mirrored_negative_part, rtol=0, atol=1e-12 * edges.scale)
    assert edges.mirror_relu_max_abs <= 1e-12 * edges.scale
    # negative control: the article's "the same edges were detected" is not the mirrored edge map
    assert edges.mirror_relu_same_edges_max_abs > 0.5 * edges.scale
    assert edges.mirror_relu_same_edges_correlation < 0.5
    # the kept edges and the lost edges add up to the mirrored magnitude
    np.testing.assert_allclose(edges.edges_mirrored + edges.edges[:, ::-1], np.abs(edges.raw)[:, ::-1],
                               rtol=0, atol=1e-12 * edges.scale)


def test_mirror_identity_needs_an_antisymmetric_kernel():
    image = np.random.default_rng(2).random((30, 30))
    symmetric = edge_experiment(image, shift=(3, 4), kernel=np.array([[1.0, 2.0, 1.0]] * 3))
    assert symmetric.mirror_raw_max_abs > 1.0  # for a symmetric kernel R(x_m) = +mirror R(x), not minus


def test_edge_experiment_reads_any_photo_file(tmp_path):
    from PIL import Image

    rgb = (np.random.default_rng(3).random((20, 30, 3)) * 255).astype(np.uint8)
    path = tmp_path / "photo.jpg"
    Image.fromarray(rgb).save(path)
    result = edge_experiment(path, shift=(2, 5))
    assert result.photo_shape == (20, 30) and result.source == str(path)
    assert result.translation_interior_max_abs == 0.0
    with pytest.raises(InputError):
        edge_experiment(tmp_path / "missing.png")
    with pytest.raises(InputError):
        edge_experiment(None, shift=(0, 600))
    json.dumps(result.to_dict(), allow_nan=False)


def test_pooling_experiment_shapes_like_the_article():
    result = pooling_experiment(iterations=6)
    assert result.shapes == ((510, 510), (255, 255), (127, 127), (63, 63), (31, 31), (15, 15), (7, 7))
    assert list(result.maxima) == sorted(result.maxima)  # max pooling never lowers the maximum
    with pytest.raises(InputError):
        pooling_experiment(iterations=9)


def test_tandem_brings_moved_edges_together_on_the_grid():
    result = tandem_experiment(iterations=6)
    assert result.shapes[-1] == (7, 7) and len(result.shapes) == 7
    for name in ("translated", "other_side"):
        comparison = result.comparisons[name]
        cells = comparison["centroid_distance_cells"]
        corr = comparison["correlation"]
        assert len(cells) == len(corr) == 7
        # in cells of the grid, the distance shrinks with every pooling; the maps grow alike
        assert all(b < a for a, b in zip(cells, cells[1:])), cells
        assert corr[-1] > corr[0] + 0.2, corr
        # the distance in pixels is the distance in cells times the cell size
        np.testing.assert_allclose(comparison["centroid_distance_pixels"],
                                   [c * 2**t for t, c in enumerate(cells)], rtol=1e-12)
    json.dumps(result.to_dict(), allow_nan=False)


def test_tandem_of_a_single_square_moves_by_the_shift():
    image = np.zeros((128, 128))
    image[20:40, 30:50] = 1.0  # a bright square; its left edge is the only positive vertical edge
    result = tandem_experiment(image, shift=(16, 32), iterations=4)
    pixels = result.comparisons["translated"]["centroid_distance_pixels"]
    assert pixels[0] == pytest.approx(np.hypot(16, 32), abs=1e-9)  # equivariance, exactly
    cells = result.comparisons["translated"]["centroid_distance_cells"]
    assert cells[-1] < cells[0] / 8
