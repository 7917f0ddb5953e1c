"""Colour preservation: YIQ luminance and mean/covariance colour matching."""
import torch

from worker.engine import color


def test_luminance_is_the_yiq_y_channel():
    pixel = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1)
    luma = color.luminance(pixel)
    assert luma.shape == (1, 3, 1, 1)
    assert torch.allclose(luma.flatten(), torch.full((3,), 0.299 + 0.5 * 0.587))


def test_yiq_round_trip():
    image = torch.rand(1, 3, 8, 8)
    assert torch.allclose(color.yiq_to_rgb(color.rgb_to_yiq(image)), image, atol=1e-5)


def test_recombine_keeps_content_colour_and_stylised_luminance():
    # mid-range values, so the recombined colours stay inside [0, 1] and nothing is clamped
    generator = torch.Generator().manual_seed(0)
    content = torch.rand(1, 3, 8, 8, generator=generator) * 0.2 + 0.4
    stylised = torch.rand(1, 3, 8, 8, generator=generator) * 0.2 + 0.4
    out = color.recombine(color.luminance(stylised), content)
    out_yiq, content_yiq, styl_yiq = (color.rgb_to_yiq(t) for t in (out, content, stylised))
    assert torch.allclose(out_yiq[:, 0], styl_yiq[:, 0], atol=1e-4)
    assert torch.allclose(out_yiq[:, 1:], content_yiq[:, 1:], atol=1e-4)


def test_match_luminance_takes_content_mean_and_std():
    style, content = torch.rand(1, 3, 16, 16) * 0.2, torch.rand(1, 3, 16, 16) * 0.6 + 0.2
    matched = color.match_luminance(style, content)
    assert abs(matched.mean() - content.mean()) < 1e-3
    assert abs(matched.std() - content.std()) < 1e-3


def test_match_histogram_matches_mean_and_covariance():
    generator = torch.Generator().manual_seed(0)
    style = torch.rand(1, 3, 32, 32, generator=generator) * torch.tensor([0.3, 0.2, 0.1]).view(1, 3, 1, 1) + 0.4
    content = torch.rand(1, 3, 32, 32, generator=generator) * 0.4 + 0.1
    content[:, 2] = content[:, 0] * 0.5 + 0.2  # correlated channels
    matched = color.match_histogram(style, content)

    def stats(image):
        pixels = image.reshape(3, -1)
        return pixels.mean(1), torch.cov(pixels, correction=0)

    (m_mean, m_cov), (c_mean, c_cov) = stats(matched), stats(content)
    assert torch.allclose(m_mean, c_mean, atol=1e-3)
    assert torch.allclose(m_cov, c_cov, atol=2e-3)


def test_colour_transforms_keep_to_their_images_device():
    """On the meta device (which holds no data and refuses tensors of another device) as on a GPU:
    nothing is made on the CPU beside them (a covariance's ridge once was, failing every
    `preserve_color=histogram` job on CUDA)."""
    style, content = torch.empty(1, 3, 8, 8, device="meta"), torch.empty(1, 3, 8, 8, device="meta")
    for transformed in (color.match_histogram(style, content), color.match_luminance(style, content),
                        color.recombine(style, content), color.luminance(style)):
        assert transformed.device.type == "meta" and transformed.shape == style.shape
