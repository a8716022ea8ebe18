import numpy as np
import torch

from deepcluster.sobel import SobelFilter, prepare_inputs


def test_sobel_responds_to_edges_not_to_intensity():
    sobel = SobelFilter()
    flat = torch.full((1, 1, 8, 8), 0.5)  # exactly representable: gradients cancel exactly
    interior = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert sobel(flat)[interior].abs().max() == 0
    vertical_edge = torch.zeros((1, 1, 8, 8))
    vertical_edge[..., 4:] = 1.0
    gradients = sobel(vertical_edge)[interior]
    assert gradients.shape == (1, 2, 6, 6)
    assert gradients[:, 0].abs().max() > 0  # gx sees the vertical edge
    assert gradients[:, 1].abs().max() == 0  # gy does not


def test_sobel_has_no_trainable_parameters_and_no_state():
    sobel = SobelFilter()
    assert list(sobel.parameters()) == [] and sobel.state_dict() == {}


def test_prepare_inputs_grayscale_and_resize():
    rgb = np.zeros((2, 3, 10, 10), np.uint8)
    rgb[:, 1] = 200  # pure green
    gray = prepare_inputs(rgb, None)
    assert gray.shape == (2, 1, 10, 10) and gray.dtype == np.uint8
    assert int(gray[0, 0, 0, 0]) == round(0.587 * 200)
    assert prepare_inputs(rgb, 16).shape == (2, 1, 16, 16)
