"""MeGU's finetuning loss: each term by hand, the weights, and what gets gradients."""

import math

import pytest
import torch
from torch import nn

from megu_core.megu import MeguLossConfig, megu_loss
from megu_core.models import create_model


class LinearNet(nn.Module):
    """A two-layer network with the `features` and `head` split that MeGU's loss reads."""

    def __init__(self, weight: torch.Tensor, head_weight: torch.Tensor) -> None:
        super().__init__()
        self.body = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.head = nn.Linear(head_weight.shape[1], head_weight.shape[0], bias=False)
        with torch.no_grad():
            self.body.weight.copy_(weight)
            self.head.weight.copy_(head_weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _model() -> LinearNet:
    # Identity features (d = 2) and a head that reads them as logits of two classes.
    return LinearNet(torch.eye(2), torch.eye(2))


def _batch():
    x_retain = torch.tensor([[2.0, 0.0]])  # logits (2, 0)
    y_retain = torch.tensor([0])
    x_forget = torch.tensor([[0.0, 1.0]])  # logits (0, 1)
    q_forget = torch.tensor([[0.25, 0.75]])
    z_star = torch.tensor([[1.0, 1.0]])
    return x_retain, y_retain, x_forget, q_forget, z_star


def _log_softmax(logits: list[float]) -> list[float]:
    normaliser = math.log(sum(math.exp(v) for v in logits))
    return [v - normaliser for v in logits]


def test_retain_ce_matches_hand_value():
    _, terms = megu_loss(_model(), None, *_batch(), MeguLossConfig())

    assert terms["retain_ce"] == pytest.approx(-_log_softmax([2.0, 0.0])[0], rel=1e-6)


def test_forget_ce_uses_soft_targets():
    _, terms = megu_loss(_model(), None, *_batch(), MeguLossConfig())

    log_p = _log_softmax([0.0, 1.0])
    assert terms["forget_ce"] == pytest.approx(-(0.25 * log_p[0] + 0.75 * log_p[1]), rel=1e-6)


def test_feature_term_divides_by_dim():
    _, terms = megu_loss(_model(), None, *_batch(), MeguLossConfig())

    # g(x_f) = (0, 1) and z* = (1, 1): squared distance 1, divided by d = 2.
    assert terms["feature_mse"] == pytest.approx(0.5)


def test_total_is_weighted_sum():
    cfg = MeguLossConfig(lambda_f=2.0, lambda_feat=3.0)

    total, terms = megu_loss(_model(), None, *_batch(), cfg)

    expected = terms["retain_ce"] + 2.0 * terms["forget_ce"] + 3.0 * terms["feature_mse"]
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert terms["total"] == pytest.approx(expected, rel=1e-6)


def test_zero_lambdas_leave_retain_ce():
    cfg = MeguLossConfig(lambda_f=0.0, lambda_feat=0.0)

    total, terms = megu_loss(_model(), None, *_batch(), cfg)

    assert total.item() == pytest.approx(terms["retain_ce"], rel=1e-6)


def test_zero_lambda_feat_ignores_z_star():
    model = _model()
    x_retain, y_retain, x_forget, q_forget, _ = _batch()
    far_target = torch.tensor([[100.0, -100.0]])
    cfg = MeguLossConfig(lambda_feat=0.0)

    near, _ = megu_loss(model, None, x_retain, y_retain, x_forget, q_forget, _batch()[4], cfg)
    far, _ = megu_loss(model, None, x_retain, y_retain, x_forget, q_forget, far_target, cfg)

    assert near.item() == pytest.approx(far.item())


def test_kd_skipped_when_lambda_zero():
    _, terms = megu_loss(_model(), None, *_batch(), MeguLossConfig(lambda_kd=0.0))

    assert "retain_kd" not in terms


def test_kd_matches_hand_value():
    teacher = LinearNet(torch.eye(2), torch.tensor([[0.0, 0.0], [0.0, 0.0]])).eval()  # uniform p0
    cfg = MeguLossConfig(lambda_kd=0.5)

    total, terms = megu_loss(_model(), teacher, *_batch(), cfg)

    log_p = _log_softmax([2.0, 0.0])
    expected_kd = sum(0.5 * (math.log(0.5) - v) for v in log_p)  # KL(p0 || p)
    assert terms["retain_kd"] == pytest.approx(expected_kd, rel=1e-6)
    assert terms["total"] == pytest.approx(
        terms["retain_ce"] + terms["forget_ce"] + terms["feature_mse"] + 0.5 * expected_kd, rel=1e-6
    )


def test_kd_without_f0_raises():
    with pytest.raises(ValueError, match=r"needs the original model f0"):
        megu_loss(_model(), None, *_batch(), MeguLossConfig(lambda_kd=1.0))


def test_kd_with_training_f0_raises():
    teacher = _model().train()

    with pytest.raises(ValueError, match=r"f0.eval\(\)"):
        megu_loss(_model(), teacher, *_batch(), MeguLossConfig(lambda_kd=1.0))


def test_z_star_and_f0_get_no_gradient():
    x_retain, y_retain, x_forget, q_forget, z_star = _batch()
    z_star.requires_grad_(True)
    teacher = _model().eval()
    model = _model()

    total, _ = megu_loss(
        model,
        teacher,
        x_retain,
        y_retain,
        x_forget,
        q_forget,
        z_star,
        MeguLossConfig(lambda_kd=1.0),
    )
    total.backward()

    assert z_star.grad is None
    assert teacher.body.weight.grad is None
    assert model.body.weight.grad is not None


def test_mismatched_z_star_rejected():
    x_retain, y_retain, x_forget, q_forget, _ = _batch()

    with pytest.raises(ValueError, match=r"z_star"):
        megu_loss(
            _model(),
            None,
            x_retain,
            y_retain,
            x_forget,
            q_forget,
            torch.zeros(1, 3),
            MeguLossConfig(),
        )


def test_empty_forget_batch_rejected():
    x_retain, y_retain, _, _, _ = _batch()

    with pytest.raises(ValueError, match=r"x_forget is empty"):
        megu_loss(
            _model(),
            None,
            x_retain,
            y_retain,
            torch.zeros(0, 2),
            torch.zeros(0, 2),
            torch.zeros(0, 2),
            MeguLossConfig(),
        )


def test_resnet_loss_backpropagates():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=3, base_width=2)
    x_retain, x_forget = torch.randn(4, 3, 16, 16), torch.randn(2, 3, 16, 16)
    q_forget = torch.tensor([[0.0, 0.5, 0.5], [0.0, 0.9, 0.1]])
    z_star = torch.randn(2, model.feature_dim)

    total, terms = megu_loss(
        model,
        None,
        x_retain,
        torch.tensor([0, 1, 2, 0]),
        x_forget,
        q_forget,
        z_star,
        MeguLossConfig(),
    )
    total.backward()

    assert torch.isfinite(total)
    assert model.stem[0].weight.grad is not None
    assert set(terms) == {"retain_ce", "forget_ce", "feature_mse", "total"}
