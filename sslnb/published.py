"""The seed study's reported numbers (WangFeng18/UnsupervisedLearningCodes README; seed-protocol 10).

All are linear-probe top-1 accuracies in % on the test split after 201 epochs on four GPUs. The book
always shows them labelled as the seed's, beside ours, never in place of ours.
"""

from __future__ import annotations

# 10.1 / 10.2: InsDis temperature sweeps, ResNet-18. 0.9 and 1.0 were in early README versions only
# (CIFAR-100), and CIFAR-10's row has two unlabelled extra values, most likely 0.9 and 1.0 (inferred).
INSDIS_SWEEP = {
    "cifar100": {0.05: 49.80, 0.07: 51.82, 0.10: 52.46, 0.20: 56.05, 0.30: 56.44, 0.40: 55.47, 0.50: 54.17,
                 0.60: 53.05, 0.70: 50.99, 0.80: 50.08, 0.90: 50.21, 1.00: 48.33},
    "cifar10": {0.05: 76.10, 0.07: 79.75, 0.10: 81.82, 0.20: 83.78, 0.30: 83.27, 0.40: 83.22, 0.50: 82.54,
                0.60: 82.97, 0.70: 82.69, 0.80: 82.67, 0.90: 81.97, 1.00: 82.21},
}
INSDIS_SWEEP_INFERRED = {"cifar100": (0.90, 1.00), "cifar10": (0.90, 1.00)}
INSDIS_MLP_HEAD = 56.48  # CIFAR-100, R18, MLP head with BN, batch 512, lr 0.12

# 10.3 / 10.4: the main comparison. None: the seed reported no number for that cell.
MAIN_TABLE = {
    ("cifar100", "resnet18"): {"BYOL": 59.96, "BYOL (aug+)": 62.74, "SimCLR": 60.78, "best InsDis": 56.44},
    ("cifar100", "resnet50"): {"BYOL": 64.64, "BYOL (aug+)": 65.51, "SimCLR": None, "best InsDis": 62.74},
    ("cifar10", "resnet18"): {"BYOL": None, "BYOL (aug+)": 89.06, "SimCLR": None, "best InsDis": 83.78},
}

# 10.5: BYOL BatchNorm ablation, CIFAR-100, R18, aug+, batch 512.
BN_TABLE = {"111": 62.74, "101": 62.66, "011": 58.18, "110": 56.37, "010": 50.67, "100": 2.7, "001": 53.72,
            "000": 1.56}

# 10.6: BYOL batch size, CIFAR-100, R18, aug+ (learning rates for 128 and 1024 not stated).
BATCH_TABLE = {128: 60.23, 512: 62.74, 1024: 59.14}

# 10.3: seven repeats of BYOL aug+ (code unknown; all above the 62.74 baseline).
REPEATS = (63.37, 62.82, 63.53, 63.32, 63.14, 63.53, 63.75)


def seed_effects() -> list[tuple[str, float]]:
    """The differences behind the seed's BatchNorm and batch-size findings, computed from its tables
    (points of linear accuracy, one run per cell): what a replication has to be able to see."""
    bn, batch = BN_TABLE, BATCH_TABLE
    return [("111 vs 011 (no BN1)", bn["111"] - bn["011"]), ("111 vs 110 (no BN3)", bn["111"] - bn["110"]),
            ("111 vs 010 (BN2 only)", bn["111"] - bn["010"]), ("batch 512 vs 128", batch[512] - batch[128]),
            ("batch 512 vs 1024", batch[512] - batch[1024])]


def byol_result(dataset: str, network: str, augment: str, bn_code: str = "111") -> float | None:
    """The seed's BYOL number for a setting, or None where it reported none."""
    if bn_code != "111":
        return BN_TABLE.get(bn_code) if (dataset, network, augment) == ("cifar100", "resnet18", "aug+") else None
    column = "BYOL (aug+)" if augment == "aug+" else "BYOL"
    return MAIN_TABLE.get((dataset, network), {}).get(column)
