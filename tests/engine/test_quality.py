"""The quality report: its cheaper computation (reused style targets, content pass to relu4_2 only)
gives the numbers of its straightforward definition."""
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from shared.params import Params, plan
from worker.engine import load_network, stylize
from worker.engine.images import fit_longest_side, to_tensor
from worker.engine.losses import gram
from worker.engine.quality import STYLE_LAYERS, quality_report, style_targets
from worker.engine.transfer import Transfer

TINY = dict(size=48, iterations=3, scales=1)


def straightforward(output: Image.Image, content: Image.Image, styles: list[Image.Image],
                    blend: list[float]) -> dict[str, float]:
    """The definition as written: three whole passes of the Caffe VGG-19 with max pooling."""
    net = load_network("caffe", "max", "cpu")
    layers = frozenset(STYLE_LAYERS + ("relu4_2",))
    with torch.no_grad():
        f_out = net(to_tensor(output), layers)
        f_content = net(to_tensor(content.resize(output.size, Image.LANCZOS)), layers)
        f_styles = [net(to_tensor(fit_longest_side(s, max(output.size), 16)), layers) for s in styles]
        distances = []
        for n in STYLE_LAYERS:
            target = sum(w * gram(f[n]) for w, f in zip(blend, f_styles))
            distances.append((torch.linalg.norm(gram(f_out[n]) - target) / torch.linalg.norm(target)).item())
        cosine = F.cosine_similarity(f_out["relu4_2"], f_content["relu4_2"], dim=1, eps=1e-8).mean().item()
    return {"style_distance": round(sum(distances) / len(distances), 4), "content_distance": round(1 - cosine, 4)}


@pytest.mark.parametrize("kw", [{}, {"preserve_color": "luminance"}, {"pooling": "avg"}, {"style_scale": 0.5},
                                {"size": 40, "scales": 2, "iterations": 4}])
def test_the_engine_reports_the_straightforward_scores(content, style, style2, kw):
    result = stylize(content, [style, style2], Params(**{**TINY, "style_weights": (3.0, 1.0), **kw}), device="cpu")
    assert result.quality == straightforward(result.image, content, [style, style2], [0.75, 0.25])


def test_reused_targets_are_the_reports_own_only_when_the_job_ran_on_its_yardstick(content, style):
    default = Transfer(content, [style], Params(**TINY), device="cpu")
    stage = plan(default.params)[-1]
    output = Image.new("RGB", (48, 36))
    reused = default._report_targets(stage, output)
    own = style_targets([style], 48, [1.0])
    assert reused.keys() == own.keys() and all(torch.equal(reused[n], own[n]) for n in own)
    for kw in ({"pooling": "avg"}, {"preserve_color": "histogram"}, {"style_scale": 0.5},
               {"style_layers": ("relu1_1", "relu2_1")}):
        other = Transfer(content, [style], Params(**{**TINY, **kw}), device="cpu")
        assert other._report_targets(stage, output) is None


def test_given_targets_replace_the_style_passes(content, style):
    output = fit_longest_side(content, 40)
    plain = quality_report(output, content, [style])
    assert quality_report(output, content, [style], targets=style_targets([style], 40, [1.0])) == plain
    # targets of another style are used as given: the report does not recompute them
    assert quality_report(output, content, [style], targets=style_targets([content], 40, [1.0])) != plain
