"""The analyses the chapters show, now library functions (issue 14): each against a naive computation,
plus the Config fields that replaced monkeypatching (crop scale, digit style) and the run directory's
small pieces (the one records reader, atomic writes, safe checkpoint reading)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslnb.augment import BatchAugment
from sslnb.config import Config, ConfigError
from sslnb.data import dataset_of, steps_per_epoch
from sslnb.evaluate import (bn_affine_drift, collapsed, compare_with_references, learning_verdict, learns_sentence,
                            negative_gradient_share,
                            raw_pixel_knn)
from sslnb.losses import logit_matrices, nt_xent, nt_xent_seed
from sslnb.methods import CLASSES
from sslnb.config import METHODS
from sslnb.rundir import read_records, run_name, save_atomic, steps_done, write_json_atomic


def test_logit_matrices_are_the_logits_of_both_simclr_losses():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    standard, seed = logit_matrices(z1, z2)
    t, b = 0.5, len(z1)
    assert torch.isnan(standard.diagonal()).all()
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
    masked = (standard / t).nan_to_num(float("-inf"))
    assert torch.allclose(F.cross_entropy(masked, target), nt_xent(z1, z2, t), atol=1e-6)
    assert torch.allclose(F.cross_entropy(seed / t, torch.arange(b)), nt_xent_seed(z1, z2, t), atol=1e-6)


def test_negative_gradient_share_against_the_softmax_weights():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    t = 0.2
    share = negative_gradient_share(z1, z2, t)
    assert share.shape == (14,) and np.isclose(share[-1], 1.0) and np.all(np.diff(share) >= -1e-7)
    # naive: the push on negative j is its softmax weight among all 2B - 1 candidates
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sims = z[0] @ z.T
    neg = [j for j in range(16) if j not in (0, 8)]
    weights = torch.softmax(torch.cat([sims[1:]]) / t, 0)[[j - 1 for j in neg]]
    order = torch.argsort(sims[neg], descending=True)
    assert np.allclose(share, (weights[order] / weights.sum()).cumsum(0).numpy(), atol=1e-6)
    # low temperatures concentrate the push on the hardest negatives
    assert negative_gradient_share(z1, z2, 0.05)[0] > negative_gradient_share(z1, z2, 1.0)[0]


@pytest.mark.parametrize("score,expected", [(40.0, "both"), (32.0, "untrained"), (29.0, "neither")])
def test_compare_with_references_needs_five_points(score, expected):
    assert compare_with_references(score, untrained=25.0, pixels=34.0) == expected


def test_learns_sentence_needs_every_seed_and_two_of_them():
    assert "clearly beats both" in learns_sentence("X", ["both", "both"])
    assert "not raw pixels" in learns_sentence("X", ["both", "untrained"])
    assert "does not clearly beat" in learns_sentence("X", ["both", "neither"])
    assert "too few" in learns_sentence("X", ["both"])


def test_collapsed_is_a_tenth_of_the_spread_reference():
    assert collapsed({"z_std": 0.009, "z_std_ref": 0.1}) and not collapsed({"z_std": 0.011, "z_std_ref": 0.1})


def test_bn_affine_drift_reads_a_head_batchnorm():
    state = {"predictor.bn.weight": torch.tensor([1.0, 1.5]), "predictor.bn.bias": torch.tensor([0.0, -0.25])}
    assert bn_affine_drift(state, "predictor") == {"scale": 0.5, "shift": 0.25}
    assert bn_affine_drift(state, "target.projector") is None


def test_every_method_of_the_one_list_has_a_class():
    assert set(CLASSES) == set(METHODS)


# ---------------------------------------------------------------------- crop scale and digit style
def test_crop_scale_and_digits_style_are_validated_and_canonical():
    c = Config.from_preset("smoke", "byol", crop_scale=[0.5, 1], digits_style={"shift": 0, "rotation": 15})
    assert c.crop_scale == (0.5, 1.0) and c.digits_style == {"shift": 0.0}  # the default rotation is dropped
    assert Config.from_dict(json.loads(c.to_json())) == c
    for bad, field in [(dict(crop_scale=(0.8, 0.5)), "crop_scale"), (dict(crop_scale=(0, 1)), "crop_scale"),
                       (dict(digits_style={"scal": 1}), "digits_style"),
                       (dict(digits_style={"scale": 0.5}), "digits_style['scale']")]:
        with pytest.raises(ConfigError, match=field.replace("[", r"\[")):
            Config.from_preset("smoke", "byol", **bad)


def test_crop_scale_and_digits_style_enter_the_run_identity_only_when_set():
    base = Config.from_preset("cpu", "byol")
    assert base.replace(digits_style={"shift": 1.0}) == base  # the default rendering, spelt out
    names = {run_name(base), run_name(base.replace(crop_scale=(0.5, 1.0))),
             run_name(base.replace(digits_style={"shift": 0}))}
    assert len(names) == 3


def test_crop_scale_reaches_the_augmentation_and_style_the_data():
    cfg = Config.from_preset("smoke", "byol", crop_scale=(1.0, 1.0), augment="normal")
    aug = BatchAugment.for_config(cfg)
    assert aug.scale == (1.0, 1.0) and aug.size == cfg.image_size
    centred = dataset_of(cfg.replace(digits_style={"shift": 0}))
    assert not torch.equal(centred.train.x, dataset_of(cfg).train.x)
    assert centred.meta["style"]["shift"] == 0.0
    assert raw_pixel_knn(cfg, centred) != raw_pixel_knn(cfg)


# ---------------------------------------------------------------------- run directory files
def test_steps_done_counts_parsed_step_records_and_not_a_line_being_written(tmp_path):
    lines = [{"kind": "epoch", "epoch": 0}, {"kind": "step", "step": 1}, {"kind": "step", "step": 2}]
    text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in lines)  # not json.dumps' default spacing
    (tmp_path / "metrics.jsonl").write_text(text + '{"kind": "st')
    assert steps_done(tmp_path) == 2
    assert read_records(tmp_path / "nothing") == [] and steps_done(tmp_path / "nothing") == 0


def test_atomic_writes_take_the_path_first_and_leave_no_temporary_file(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    save_atomic(tmp_path / "b.pt", {"w": torch.ones(2)})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert torch.equal(torch.load(tmp_path / "b.pt", weights_only=True)["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.pt"]


def test_steps_per_epoch_without_loading_data():
    cfg = Config.from_preset("smoke", "byol")  # 256 images, batch 64
    assert steps_per_epoch(cfg) == 4
    assert steps_per_epoch(cfg.replace(train_size=250)) == 4  # 58 left over: kept (>= 2 per BN group)
    assert steps_per_epoch(cfg.replace(train_size=195)) == 3  # 3 left over: dropped


def test_step_flop_counts_the_method_and_scales_with_width():
    from sslnb.evaluate import step_flop

    byol, simclr = (step_flop(Config.from_preset("cpu", m)) for m in ("byol", "simclr"))
    assert byol > simclr > 0  # BYOL also runs its target network
    wide = step_flop(Config.from_preset("cpu", "simclr", width=16))
    assert 3.0 < wide / simclr < 4.2  # convolutions dominate: twice the channels, about four times the work


def test_run_flop_counts_every_step_and_every_measurement():
    from sslnb.data import dataset_of
    from sslnb.evaluate import embed_flop, measured_epochs, run_flop, step_flop

    cfg = Config.from_preset("smoke", "byol", epochs=5, eval_every=2)
    assert measured_epochs(cfg) == 4  # epoch 0, 2, 4 and the last, 5
    data = dataset_of(cfg)
    flop = run_flop(cfg)
    steps = 5 * (len(data.train) // cfg.batch_size + (len(data.train) % cfg.batch_size >= 2 * cfg.bn_groups))
    assert flop["train"] == steps * step_flop(cfg, num_train=len(data.train))
    assert flop["measure"] == 4 * (len(data.train) + len(data.test)) * embed_flop(cfg)  # test size from data
    # one image's embedding: the backbone's forward and the projector, about a sixth of a BYOL step per image
    per_image = step_flop(cfg) / cfg.batch_size
    assert per_image / 8 < embed_flop(cfg) < per_image / 3


def test_learning_verdict_rests_on_the_weakest_run_against_the_stronger_reference():
    row = lambda knn, init, cal: {"run": "r", "seed": 0, "kNN": knn, "untrained": init,  # noqa: E731
                                  "untrained, BN calibrated": cal, "gain": knn - init, "gain over calibrated": knn - cal,
                                  "gain over the stronger": knn - max(init, cal)}
    # beats the calibrated reference by 20 but the one as initialised by only 3: not clearly
    text = learning_verdict("M", [row(70, 67, 50), row(80, 60, 50)], pixels=40, preset="p", dataset="d")
    assert "does not clearly beat the untrained network" in text and "+3.0" in text and "as initialised" in text
    text = learning_verdict("M", [row(70, 50, 55), row(72, 50, 55)], pixels=68, preset="p", dataset="d", supervised=90)
    assert "clearly beats the untrained network in every run, but not raw pixels" in text and "**90.0%**" in text
    assert "clearly beats both" in learning_verdict("M", [row(80, 50, 55)], pixels=60, preset="p", dataset="d")
