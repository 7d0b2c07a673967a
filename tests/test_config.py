import pytest

from sslnb.config import Config, ConfigError, parse_value


def test_presets_build_and_paper_is_the_seed_protocol():
    c = Config.from_preset("paper", "byol")
    assert (c.dataset, c.network, c.batch_size, c.lr, c.epochs) == ("cifar100", "resnet18", 512, 0.12, 201)
    assert c.lr_milestones == (160, 190, 200) and c.lr_decay == 0.1
    assert (c.momentum, c.weight_decay, c.ema, c.ema_schedule) == (0.9, 5e-4, 0.996, "fixed")
    assert c.augment == "aug+" and c.bn_code == "111" and c.bn_groups == 4 and c.width == 64
    for preset in ("smoke", "cpu"):
        assert Config.from_preset(preset, "byol").dataset == "digits"


def test_paper_presets_of_insdis_and_simclr_are_the_seeds_commands():
    i = Config.from_preset("paper", "insdis")
    assert (i.dataset, i.batch_size, i.lr, i.epochs, i.temperature, i.augment) == ("cifar100", 128, 0.03, 201, 0.3, "normal")
    assert (i.insdis_loss, i.insdis_head, i.bank_momentum, i.knn_k, i.knn_t) == ("softmax", "linear", 0.5, 200, 0.07)
    s = Config.from_preset("paper", "simclr")
    assert (s.batch_size, s.lr, s.temperature, s.augment, s.simclr_loss, s.bn_code[0]) == (1024, 0.3, 0.5, "aug+", "seed", "1")


@pytest.mark.parametrize("field,value,words", [
    ("method", "moco", ["method", "byol"]),
    ("dataset", "imagenet", ["dataset", "cifar100", "digits"]),
    ("bn_code", "121", ["bn_code", "BN1"]),
    ("bn_code", "11", ["bn_code"]),
    ("augment", "strong", ["augment", "aug+"]),
    ("lr", 0, ["lr", "> 0"]),
    ("knn_t", -0.1, ["knn_t", "> 0"]),
    ("bn_groups", 3, ["bn_groups", "divisor"]),
    ("epochs", -1, ["epochs"]),
    ("ema", 1.5, ["ema"]),
    ("lr_milestones", (5, 2), ["lr_milestones"]),
    ("temperature", 0, ["temperature", "> 0"]),
    ("temperature", -0.5, ["temperature", "> 0"]),
    ("simclr_loss", "infonce", ["simclr_loss", "seed", "standard"]),
    ("insdis_loss", "nce4096", ["insdis_loss", "softmax", "nce"]),
    ("insdis_head", "deep", ["insdis_head", "linear", "mlp"]),
    ("bank_momentum", 1.0, ["bank_momentum"]),
    ("nce_k", 0, ["nce_k"]),
])
def test_bad_values_fail_with_one_line_naming_the_field(field, value, words):
    with pytest.raises(ConfigError) as e:
        Config.from_preset("cpu", "byol").replace(**{field: value})
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_unknown_field_and_preset():
    with pytest.raises(ConfigError, match="unknown setting 'temprature'"):
        Config.from_preset("cpu", "byol", temprature=0.2)
    with pytest.raises(ConfigError, match="preset='gpu'.*smoke, cpu, laptop, paper"):
        Config.from_preset("gpu", "byol")


def test_parse_value_types():
    assert parse_value("lr", "0.5") == 0.5
    assert parse_value("bn_code", "011") == "011"
    assert parse_value("lr_milestones", "160,190,200") == (160, 190, 200)
    assert parse_value("bn_affine", "false") is False
    with pytest.raises(ConfigError, match="epochs"):
        parse_value("epochs", "ten")


def test_roundtrip_dict():
    c = Config.from_preset("cpu", "byol", bn_code="010")
    assert Config.from_dict(c.to_dict()) == c


def test_step_schedule_is_the_seeds():
    from sslnb.optim import learning_rate

    c = Config.from_preset("paper", "byol")
    assert [learning_rate(c, e) for e in (0, 159, 160, 189, 190, 199, 200)] == pytest.approx(
        [0.12, 0.12, 0.012, 0.012, 0.0012, 0.0012, 0.00012])


def test_every_setting_is_documented_in_help_and_in_the_book():
    import subprocess
    import sys

    from sslnb.config import field_docs, field_names, settings_markdown

    docs = [d for _, group in field_docs() for d in group]
    assert [d["name"] for d in docs] == field_names()
    assert all(d["meaning"] for d in docs), [d["name"] for d in docs if not d["meaning"]]  # a comment per field
    help_text = subprocess.run([sys.executable, "-m", "sslnb.train", "--help"], capture_output=True, text=True).stdout
    page = settings_markdown()
    for d in docs:
        flag = f"--{d['name'].replace('_', '-')}"
        assert d["name"] == "preset" or flag in help_text, flag
        assert f"| `{flag}` |" in page
    assert "one of digits | cifar10 | cifar100 | fashion" in " ".join(help_text.split())
    from sslnb.config import PRESETS

    assert f"{' | '.join(PRESETS)} (default: cpu)" in " ".join(help_text.split())  # laptop included
