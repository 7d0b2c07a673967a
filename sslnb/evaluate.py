"""Evaluation: everything measured about a network, per epoch and at the end of a run.

The kNN monitor, the seed's linear probe, collapse diagnostics and feature extraction, then what the
trainer records: :func:`epoch_record` after every epoch and :func:`final_result` once at the end (the
trainer only writes what these return). The analyses the chapters show (references, the gradient
share of NT-Xent's negatives, what features encode) are here too, each with a test.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .augment import BatchAugment, resize_batch, seeded_generator
from .config import Config
from .data import ImageData, Split, dataset_of, split_sizes, steps_per_epoch, train_images
from .methods import Method, build_method


@torch.no_grad()
def extract(embed, split: Split, data: ImageData, image_size: int, device, batch_size: int = 512,
            flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean test-transform features of a whole split, in eval mode.

    ``embed``: x (B, 3, S, S) -> (h (B, D), z (B, d)). Returns h (N, D) and z (N, d) on the CPU.
    ``flip`` mirrors every image first (the seed's probe trains on flipped and unflipped images).
    """
    hs, zs = [], []
    for i in range(0, len(split), batch_size):
        x = split.x[i:i + batch_size].to(device).float().div_(255)
        x = resize_batch(x, image_size)
        if flip:
            x = x.flip(3)
        h, z = embed(data.normalize(x))
        hs.append(h.float().cpu())
        zs.append(z.float().cpu())
    return torch.cat(hs), torch.cat(zs)


@torch.no_grad()
def knn_predict(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, num_classes: int,
                k: int = 200, t: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Weighted kNN (Wu et al., 2018; the seed's monitor, seed-protocol 6b).

    Features are l2-normalised; each of the ``k`` most cosine-similar train samples votes for its class
    with weight ``exp(sim / t)``. ``train_f`` (N, D), ``train_y`` (N,), ``test_f`` (M, D) -> (M,) labels.
    """
    train_f = F.normalize(train_f, dim=1)
    test_f = F.normalize(test_f, dim=1)
    k = min(k, len(train_f))
    preds = []
    for i in range(0, len(test_f), chunk):
        sim, nn_idx = (test_f[i:i + chunk] @ train_f.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes, dtype=sim.dtype, device=sim.device)
        votes.scatter_add_(1, train_y[nn_idx], (sim / t).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_accuracy(train_f, train_y, test_f, test_y, num_classes: int, k: int = 200, t: float = 0.07) -> float:
    """Top-1 kNN accuracy in %."""
    pred = knn_predict(train_f, train_y, test_f, num_classes, k, t)
    return 100.0 * (pred == test_y).float().mean().item()


@torch.no_grad()
def collapse_stats(z: torch.Tensor) -> dict[str, float]:
    """Collapse diagnostics of projections ``z`` (N, d).

    - ``z_std``: mean per-dimension std of the l2-normalised z. Spread-out features give about
      1/sqrt(d); a collapsed representation (every input mapped to one vector) gives 0.
    - ``eff_rank``: effective rank (Roy & Vetterli, 2007): exp of the entropy of the normalised singular
      values of the centred z; between 1 and d.
    """
    zn = F.normalize(z.float(), dim=1)
    s = torch.linalg.svdvals(zn - zn.mean(0))
    p = s / s.sum().clamp_min(1e-12)
    entropy = -(p * p.clamp_min(1e-12).log()).sum()
    return {"z_std": zn.std(0).mean().item(), "z_std_ref": 1 / math.sqrt(z.shape[1]),
            "eff_rank": entropy.exp().item()}


def linear_probe(train_h: torch.Tensor, train_h_flip: torch.Tensor, train_y: torch.Tensor,
                 test_h: torch.Tensor, test_y: torch.Tensor, num_classes: int, epochs: int = 100,
                 lr: float = 30.0, milestones=(40, 60, 80), batch_size: int = 256, seed: int = 0,
                 device="cpu") -> dict:
    """The seed's linear probe (``downstream/eval_linear.py``, seed-protocol 6a) on cached features.

    A Linear(D -> classes) with N(0, 0.01^2) weights and zero bias, SGD lr ``lr``, momentum 0.9, no
    weight decay, batch 256, lr x0.2 after each milestone epoch (epochs counted from 1). The seed's only
    training augmentation is a horizontal flip, so caching the features of the plain and the mirrored
    train images and picking one of the two per sample per epoch is exactly equivalent to recomputing
    them. Returns the test accuracy after the last epoch, the best over epochs (which the seed's log also
    printed; choosing it selects on the test set), and the per-epoch curve.
    """
    g = torch.Generator().manual_seed(seed)
    clf = nn.Linear(train_h.shape[1], num_classes).to(device)
    with torch.no_grad():
        clf.weight.copy_(torch.randn(clf.weight.shape, generator=g) * 0.01)
        clf.bias.zero_()
    opt = torch.optim.SGD(clf.parameters(), lr=lr, momentum=0.9, weight_decay=0)
    both = torch.stack([train_h, train_h_flip]).to(device)  # (2, N, D)
    train_y, test_h, test_y = train_y.to(device), test_h.to(device), test_y.to(device)
    n = len(train_y)
    curve = []
    for epoch in range(1, epochs + 1):
        for group in opt.param_groups:
            group["lr"] = lr * 0.2 ** sum(epoch > m for m in milestones)
        perm = torch.randperm(n, generator=g).to(device)
        flips = torch.randint(0, 2, (n,), generator=g).to(device)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(clf(both[flips[idx], idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = 100.0 * (clf(test_h).argmax(1) == test_y).float().mean().item()
        curve.append(acc)
    return {"last": curve[-1] if curve else float("nan"), "best": max(curve) if curve else float("nan"),
            "curve": curve}


def pixel_features(split: Split, image_size: int) -> torch.Tensor:
    """Raw pixels as features (the raw-pixel kNN baseline): (N, 3 * S * S), centred per image."""
    x = resize_batch(split.x.float().div(255), image_size).flatten(1)
    return x - x.mean(1, keepdim=True)


def nuisance_knn(features: np.ndarray, params: dict, labels: np.ndarray | None = None, bins: int = 5, k: int = 50,
                 t: float = 0.07) -> dict[str, float]:
    """What else do features encode? For each rendering parameter of the embedded dataset (background
    level, digit scale, ...), cut into ``bins`` equally populated bins, the kNN accuracy (%) of
    predicting the bin of the second half of ``features`` (N, D) from the first half (chance:
    100 / bins). ``params``: name -> (N,) arrays, as in ``ImageData.meta["test_params"]``. With
    ``labels`` (N,), the class is predicted the same way first, under the key ``class``."""
    f = torch.as_tensor(np.asarray(features, dtype=np.float32))
    half = len(f) // 2
    out = {}
    if labels is not None:
        y = torch.as_tensor(np.asarray(labels)).long()
        out["class"] = knn_accuracy(f[:half], y[:half], f[half:], y[half:], int(y.max()) + 1, k, t)
    for name, values in params.items():
        values = np.asarray(values)[: len(f)]
        if np.ptp(values) == 0:  # constant in this dataset: nothing to predict
            continue
        edges = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
        y = torch.from_numpy(np.digitize(values, edges)).long()
        out[name] = knn_accuracy(f[:half], y[:half], f[half:], y[half:], bins, k, t)
    return out


def raw_pixel_knn(cfg: Config, data: ImageData | None = None) -> float:
    """kNN accuracy (%) of the raw test pixels against the raw train pixels, at ``cfg``'s image size and
    kNN settings: the floor a learned representation has to clear. ``data``: the run's data if already
    loaded (otherwise it is loaded from ``cfg``, never downloaded)."""
    data = data or dataset_of(cfg.replace(download=False))
    return knn_accuracy(pixel_features(data.train, cfg.image_size), data.train.y,
                        pixel_features(data.test, cfg.image_size), data.test.y,
                        data.num_classes, cfg.knn_k, cfg.knn_t)


@torch.no_grad()
def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2.0) -> float:
    """Wang & Isola (2020) alignment: ``E ||f(x) - f(y)||^alpha`` over positive pairs, with f the
    l2-normalised projection. ``z1``, ``z2`` (N, d): two views of the same N images. 0 when the two views
    map to the same point (which a collapsed network also achieves); at most 2^alpha."""
    d = F.normalize(z1.float(), dim=1) - F.normalize(z2.float(), dim=1)
    return d.norm(dim=1).pow(alpha).mean().item()


@torch.no_grad()
def uniformity(z: torch.Tensor, t: float = 2.0, max_points: int = 2000) -> float:
    """Wang & Isola (2020) uniformity: ``log E exp(-t ||f(x) - f(y)||^2)`` over pairs of distinct images,
    f the l2-normalised projection. 0 for a collapsed representation (every pair at distance 0); more
    negative when the points spread over the sphere (about -2t for orthogonal points). ``z`` (N, d)."""
    f = F.normalize(z[:max_points].float(), dim=1)
    sq = torch.pdist(f).pow(2)
    return (torch.logsumexp(-t * sq, dim=0) - math.log(len(sq))).item()


def mean_and_interval(values, confidence: float = 0.95) -> dict[str, float]:
    """Mean, sample standard deviation and a Student-t confidence interval of the mean of ``values``
    (repeated runs of one setting). With one value the spread is unknown (nan)."""
    v = np.asarray(values, dtype=float)
    n, mean = len(v), float(v.mean())
    if n < 2:
        return {"n": n, "mean": mean, "std": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def difference_and_interval(a, b, confidence: float = 0.95) -> dict[str, float]:
    """How much condition ``a`` beats condition ``b`` (repeated runs of each, e.g. linear accuracy per
    seed): ``diff`` = mean(a) - mean(b) with Welch's t confidence interval (each condition its own
    variance; degrees of freedom by Welch-Satterthwaite). Needs two runs of each."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"a difference with its interval needs at least two runs of each condition "
                         f"(got {len(a)} and {len(b)})")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff, se = float(a.mean() - b.mean()), math.sqrt(va + vb)
    if se == 0:  # identical runs: no noise measured, the interval is the point
        return {"diff": diff, "se": 0.0, "df": float(len(a) + len(b) - 2), "ci_low": diff, "ci_high": diff}
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return {"diff": diff, "se": se, "df": float(df), "ci_low": diff - half, "ci_high": diff + half}


def difference_verdict(diff: dict[str, float]) -> str:
    """The verdict on a :func:`difference_and_interval`: ``"higher"`` or ``"lower"`` when the interval
    lies on one side of zero (a difference beyond the noise), ``"within the noise"`` when it holds zero."""
    if diff["ci_low"] > 0:
        return "higher"
    if diff["ci_high"] < 0:
        return "lower"
    return "within the noise"


def compare_conditions(a, b, label_a: str, label_b: str, theirs: float | None = None,
                       unit: str = "points") -> dict:
    """A comparison a chapter draws, answered from the runs: ``a`` and ``b`` are the per-seed values of
    two conditions (e.g. linear accuracy of codes 111 and 011), ``theirs`` the seed's reported difference
    a - b. Returns :func:`difference_and_interval`'s numbers, the ``verdict`` (:func:`difference_verdict`,
    or ``"too few seeds"`` where a condition has one run) and a one-sentence ``text`` saying all of it,
    ready for a chapter's Markdown."""
    if len(a) < 2 or len(b) < 2:  # one run of a condition: a difference, but no interval and no verdict
        diff = float(np.mean(a) - np.mean(b))
        text = (f"{label_a} against {label_b}: {diff:+.1f} {unit} from {len(a)} and {len(b)} seed(s), too few for "
                f"an interval, so no verdict")
        if theirs is not None:
            text += f"; the seed reported {theirs:+.2f}"
        return {"diff": diff, "se": math.nan, "df": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                "verdict": "too few seeds", "text": text + "."}
    d = difference_and_interval(a, b)
    verdict = difference_verdict(d)
    said = {"higher": f"{label_a} is higher, beyond the noise", "lower": f"{label_a} is lower, beyond the noise",
            "within the noise": "the difference is within the noise"}[verdict]
    text = (f"{label_a} against {label_b}: {d['diff']:+.1f} {unit} (95% interval {d['ci_low']:+.1f} to "
            f"{d['ci_high']:+.1f}; {len(a)} and {len(b)} seeds): {said}")
    if theirs is not None:
        inside = d["ci_low"] <= theirs <= d["ci_high"]
        text += f"; the seed reported {theirs:+.2f} (one run each), {'inside' if inside else 'outside'} our interval"
    return {**d, "verdict": verdict, "text": text + "."}


def finding_verdict(comparison: dict, theirs: float) -> str:
    """Whether our :func:`compare_conditions` result reproduces a difference the seed reported (``theirs``,
    a - b from its one run each): ``"reproduces"`` (our interval lies on the side of zero theirs is on),
    ``"reversed"`` (on the other side), ``"not shown (within the noise)"`` or ``"too few seeds"``."""
    if comparison["verdict"] == "too few seeds":
        return "too few seeds"
    if comparison["verdict"] == "within the noise":
        return "not shown (within the noise)"
    return "reproduces" if (comparison["verdict"] == "higher") == (theirs > 0) else "reversed"


def power_of(seeds: int, difference: float, std: float, alpha: float = 0.05) -> float:
    """The chance that a two-sided two-sample t-test at level ``alpha``, with ``seeds`` runs of each of two
    conditions whose runs vary by ``std``, finds a true ``difference`` (noncentral t distribution)."""
    if seeds < 2:
        return 0.0
    df = 2 * seeds - 2
    shift = abs(difference) / (std * math.sqrt(2 / seeds))
    crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(crit, df, shift) + stats.nct.cdf(-crit, df, shift))


def seeds_needed(difference: float, std: float, alpha: float = 0.05, power: float = 0.8, most: int = 10_000) -> int:
    """How many seeds of each condition detect a true ``difference`` (points) between two conditions
    whose runs vary by ``std`` (points) with probability ``power``, two-sided at level ``alpha``
    (:func:`power_of`). ``most`` + 1 when even ``most`` seeds would not."""
    if std <= 0 or not math.isfinite(std):
        raise ValueError(f"the runs' standard deviation must be a positive number, not {std}")
    lo, hi = 2, most
    if power_of(hi, difference, std, alpha) < power:
        return most + 1
    while lo < hi:  # power grows with the seeds: the first count that reaches it
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if power_of(mid, difference, std, alpha) < power else (lo, mid)
    return lo


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches) -> nn.Module:
    """Recompute every BatchNorm's running mean and variance as the average over ``batches`` (an
    iterable of input tensors), in training mode, then return the model in eval mode.

    An untrained network's running statistics are still at their initial values (mean 0, variance 1),
    so in eval mode its BatchNorm layers do almost nothing; a trained network's have been estimated from
    the training images. Recalibrating puts an untrained network on the same footing.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momentum = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
    model.train()
    for i, x in enumerate(batches):
        for bn in bns:
            bn.momentum = 1.0 / (i + 1)  # a running average over the batches seen
        model(x)
    for bn, m in zip(bns, momentum):
        bn.momentum = m
    return model.eval()


def untrained_knn_with_calibrated_bn(cfg: Config, data: ImageData | None = None, device="cpu") -> float:
    """kNN accuracy (%) of the untrained network of ``cfg`` (built from its seed, as every run's random
    init is) after :func:`recalibrate_batchnorm` on the clean training images (``data``: loaded from
    ``cfg`` when not given)."""
    data = data or dataset_of(cfg.replace(download=False))
    torch.manual_seed(cfg.seed)
    method = build_method(cfg, data.num_classes, len(data.train)).to(device)
    batches = (data.normalize(resize_batch(data.train.x[i:i + 256].to(device).float().div(255), cfg.image_size))
               for i in range(0, len(data.train), 256))
    recalibrate_batchnorm(method.backbone, batches)
    train_h, _ = extract(method.embed, data.train, data, cfg.image_size, device)
    test_h, _ = extract(method.embed, data.test, data, cfg.image_size, device)
    return knn_accuracy(train_h, data.train.y, test_h, data.test.y, data.num_classes, cfg.knn_k, cfg.knn_t)


# ---------------------------------------------------------------------- what a run records
@torch.no_grad()
def augmented_pair(method: Method, data: ImageData, cfg: Config, device, n: int = 500):
    """Projections z of two augmented views of the first ``n`` test images (fixed randomness), eval mode:
    two (n, d) tensors on the CPU."""
    augment = BatchAugment.for_config(cfg)
    g = seeded_generator(device, cfg.seed, 7)
    x = data.test.x[:n].to(device).float().div_(255)
    return [torch.cat([method.embed(data.normalize(augment(chunk, g)))[1].float().cpu()
                       for chunk in x.split(500)]) for _ in range(2)]


def epoch_record(method: Method, data: ImageData, cfg: Config, device) -> dict:
    """What is measured after every epoch (and of the untrained network, as epoch 0): kNN accuracy of the
    last-conv feature h and of the projection z, collapse diagnostics of z (per-dimension std, effective
    rank), Wang & Isola's alignment (two augmented views of 500 test images) and uniformity (test images),
    and any kNN monitor the method adds (:meth:`~sslnb.methods.base.Method.knn_banks`)."""
    was_training = method.training
    method.eval()
    train_h, train_z = extract(method.embed, data.train, data, cfg.image_size, device)
    test_h, test_z = extract(method.embed, data.test, data, cfg.image_size, device)
    z1, z2 = augmented_pair(method, data, cfg, device)
    method.train(was_training)
    record = {**collapse_stats(test_z), "alignment": alignment(z1, z2), "uniformity": uniformity(test_z)}
    if not data.meta.get("labelled", True):  # a folder of images without classes: nothing to classify
        return record
    knn = lambda a, b: knn_accuracy(a, data.train.y, b, data.test.y, data.num_classes, cfg.knn_k, cfg.knn_t)  # noqa: E731
    record = {"knn": knn(train_h, test_h), "knn_z": knn(train_z, test_z), **record}
    for name, bank in method.knn_banks().items():
        record[name] = knn(bank.float().cpu(), test_z)
    return record


def final_result(method: Method, data: ImageData, cfg: Config, device, epochs: list[dict]) -> tuple[dict, dict]:
    """What is measured once at the end of a run, from the trained ``method`` and its epoch records.

    Returns ``(result, features)``: ``result`` the contents of ``result.json`` without wall time (final
    kNN, the untrained network's, collapse diagnostics, the seed's linear probe, and the test accuracy of
    a method trained with labels); ``features`` the test features for t-SNE: h (N, D), z (N, d) as
    float16 arrays and y (N,).
    """
    method.eval()
    test_h, test_z = extract(method.embed, data.test, data, cfg.image_size, device)
    features = {"h": test_h.half().numpy(), "z": test_z.half().numpy(), "y": data.test.y.numpy()}
    last = epochs[-1]
    labelled = data.meta.get("labelled", True)  # without labels: no kNN, no probe (None in the result)
    result = {"status": "done", "epochs": cfg.epochs, "knn": last.get("knn"), "knn_z": last.get("knn_z"),
              "knn_init": epochs[0].get("knn"), "z_std": last["z_std"], "z_std_ref": last["z_std_ref"],
              "eff_rank": last["eff_rank"], "alignment": last.get("alignment"),
              "uniformity": last.get("uniformity"), "train_images": len(data.train), "test_images": len(data.test)}
    if cfg.probe == "seed" and labelled:
        train_h, _ = extract(method.embed, data.train, data, cfg.image_size, device)
        train_h_flip, _ = extract(method.embed, data.train, data, cfg.image_size, device, flip=True)
        probe = linear_probe(train_h, train_h_flip, data.train.y, test_h, data.test.y, data.num_classes,
                             cfg.probe_epochs, cfg.probe_lr, cfg.probe_milestones, seed=cfg.seed, device=device)
        result.update(probe_last=probe["last"], probe_best=probe["best"], probe_curve=probe["curve"])
    with torch.no_grad():
        logits = [method.predict(h.to(device)) for h in test_h.split(1024)]
    if logits[0] is not None:
        pred = torch.cat([lg.cpu() for lg in logits]).argmax(1)
        result["test_acc"] = 100.0 * (pred == data.test.y).float().mean().item()
    return result, features


# ---------------------------------------------------------------------- judging results
CLEAR_MARGIN = 5.0  # points of accuracy by which a result must beat a reference to count as beating it


def compare_with_references(score: float, untrained: float, pixels: float, margin: float = CLEAR_MARGIN) -> str:
    """Which references a kNN ``score`` clearly beats (by ``margin`` points): ``"both"`` (the untrained
    network and raw pixels), ``"untrained"`` (only the untrained network) or ``"neither"``. One rule for
    every chapter's verdict."""
    if score - max(untrained, pixels) >= margin:
        return "both"
    if score - untrained >= margin:
        return "untrained"
    return "neither"


def learns_sentence(name: str, kinds: list[str], margin: float = CLEAR_MARGIN) -> str:
    """The verdict on a method from its seeds' :func:`compare_with_references` outcomes, as a sentence:
    what it clearly beats on *every* seed (a claim that a method learns needs two seeds at least)."""
    n = len(kinds)
    if n < 2:
        return f"{name} has {n} seed here: too few to say whether it learns."
    if all(k == "both" for k in kinds):
        what = "clearly beats both the untrained network and raw pixels"
    elif all(k in ("both", "untrained") for k in kinds):
        what = "clearly beats the untrained network, but not raw pixels,"
    else:
        return (f"{name} does not clearly beat the untrained network on every one of its {n} seeds "
                f"(by {margin:g} kNN points).")
    return f"{name} {what} on every one of its {n} seeds (by {margin:g} kNN points at least)."


def reference_gains(runs: dict, data: ImageData, calibrated: dict[int, float] | None = None) -> list[dict]:
    """Each run (label -> a finished run: ``.config``, ``.result``) against the untrained network with its own
    initial weights (same seed), both ways: as initialised (the run's epoch-0 kNN) and with BatchNorm
    statistics estimated from the training images (:func:`untrained_knn_with_calibrated_bn`, measured once
    per seed; ``calibrated`` caches it by seed and is filled in). One row per run, gains in kNN points."""
    calibrated = {} if calibrated is None else calibrated
    rows = []
    for label, run in runs.items():
        seed, r = run.config.seed, run.result
        if seed not in calibrated:
            calibrated[seed] = untrained_knn_with_calibrated_bn(run.config, data)
        stronger = max(r["knn_init"], calibrated[seed])
        rows.append({"run": label, "seed": seed, "kNN": r["knn"], "untrained": r["knn_init"],
                     "untrained, BN calibrated": calibrated[seed], "gain": r["knn"] - r["knn_init"],
                     "gain over calibrated": r["knn"] - calibrated[seed], "gain over the stronger": r["knn"] - stronger})
    return rows


def learning_verdict(name: str, gains: list[dict], pixels: float, preset: str, dataset: str,
                     supervised: float | None = None, margin: float = CLEAR_MARGIN) -> str:
    """The chapter's verdict on a method, as Markdown, from :func:`reference_gains`' rows: what its weakest
    run clearly beats (by ``margin`` kNN points) among the *stronger* untrained reference and raw pixels
    (``pixels``), every gain behind it, and how far the supervised reference (``supervised``, test accuracy)
    says the images go."""
    weakest = min(gains, key=lambda g: g["gain over the stronger"])
    verdict = {"both": f"{name} **clearly beats both references in every run**",
               "untrained": f"{name} **clearly beats the untrained network in every run, but not raw pixels**",
               "neither": (f"{name} **does not clearly beat the untrained network in every run at this budget**: its "
                           "loss falls, but its features do not carry clearly more about the class than random "
                           "ones do"),
               }[compare_with_references(weakest["kNN"], weakest["kNN"] - weakest["gain over the stronger"], pixels,
                                         margin)]
    listed = {key: ", ".join(f"{g[key]:+.1f}" for g in gains)
              for key in ("gain", "gain over calibrated", "gain over the stronger")}
    text = (f"At the `{preset}` preset on `{dataset}`, {verdict} ({len(gains)} runs, "
            f"{len({g['seed'] for g in gains})} seeds; *clearly* means by at least {margin:g} kNN points). The "
            f"reference is the stronger of two measurements of the untrained network with the same initial "
            f"weights: as initialised (its BatchNorm layers pass activations through almost unchanged in eval "
            f"mode), where the runs gain {listed['gain']} points, and measured the way a trained network is, with "
            f"BatchNorm statistics estimated from the training images, where they gain "
            f"{listed['gain over calibrated']}; over the stronger one they gain {listed['gain over the stronger']}. "
            f"Raw pixels give **{pixels:.1f}%**, and the best run is {max(g['kNN'] for g in gains) - pixels:+.1f} "
            f"points from them. ")
    if supervised is not None:
        text += (f"The supervised reference reaches **{supervised:.1f}%**, so the images and the network allow far "
                 f"more. " if supervised > weakest["kNN"] + 10 else
                 f"The supervised reference reaches only **{supervised:.1f}%** at this budget. ")
    initialised_higher = sum(g["untrained"] for g in gains) > sum(g["untrained, BN calibrated"] for g in gains)
    return text + ("Which untrained reference scores higher depends on the data; here it is the one "
                   + ("as initialised" if initialised_higher else "with calibrated BatchNorm")
                   + ", so the table shows both for every seed.")


COLLAPSE_FRACTION = 0.1  # z_std below this fraction of 1/sqrt(d) counts as collapsed


def collapsed(result: dict) -> bool:
    """Whether a run's projections collapsed: the per-dimension std of its normalised z is below
    ``COLLAPSE_FRACTION`` of the well-spread value 1/sqrt(d) (``result``: a run's ``result.json``)."""
    return result["z_std"] < COLLAPSE_FRACTION * result["z_std_ref"]


def rank_below_repeats(result: dict, repeats: list[dict]) -> bool:
    """Whether a run's projection uses fewer directions than every repeat of its baseline: its effective
    rank is below the lowest effective rank of ``repeats`` (the ``result.json`` of the baseline trained
    with other seeds). This is the partial, *dimensional* collapse that :func:`collapsed` does not see:
    the projections fold onto a few directions and keep a large spread along them. The yardstick is the
    baseline's own seed-to-seed range, not a fixed number."""
    if not repeats:
        raise ValueError("rank_below_repeats needs at least one repeat of the baseline")
    return result["eff_rank"] < min(r["eff_rank"] for r in repeats)


def collapse_kind(result: dict, repeats: list[dict]) -> str:
    """The BN chapter's verdict on a run, by its two rules: ``"complete"`` (:func:`collapsed`),
    ``"partial"`` (:func:`rank_below_repeats` against the baseline's ``repeats``) or ``"no"``."""
    if collapsed(result):
        return "complete"
    return "partial" if rank_below_repeats(result, repeats) else "no"


def collapse_tally(kinds: list[str]) -> str:
    """A setting's verdict over its seeds, from each run's :func:`collapse_kind`: ``"2 of 3 seeds
    collapse (complete 1, partial 1)"`` or ``"0 of 3 seeds collapse"``."""
    hit = [k for k in kinds if k != "no"]
    detail = ", ".join(f"{k} {hit.count(k)}" for k in ("complete", "partial") if k in hit)
    seeds = "seeds collapse" if len(kinds) != 1 else "seed collapses"
    return f"{len(hit)} of {len(kinds)} {seeds}" + (f" ({detail})" if detail else "")


def negative_gradient_share(z1: torch.Tensor, z2: torch.Tensor, temperature: float, anchor: int = 0) -> np.ndarray:
    """How NT-Xent spreads its push over the negatives, for one anchor.

    ``z1``, ``z2`` (B, d): two views' projections; the anchor is ``z1[anchor]``, its positive
    ``z2[anchor]`` and its 2B - 2 negatives the other rows of both. The loss's gradient with respect to
    each negative's cosine is the softmax weight that pushes it away; returns the cumulative share of the
    total push, negatives sorted hardest (most similar) first, shape (2B - 2,). Low temperatures
    concentrate the push on the hardest few (Wang & Liu, 2021).
    """
    b = len(z1)
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sims = (z[anchor] @ z.T).detach().clone().requires_grad_(True)  # (2B,)
    others = torch.cat([torch.arange(anchor), torch.arange(anchor + 1, 2 * b)])
    logits = sims[others] / temperature
    positive = int((others == b + anchor).nonzero())
    loss = -torch.log_softmax(logits, 0)[positive]
    (grad,) = torch.autograd.grad(loss, sims)
    negatives = others[others != b + anchor]
    push = grad[negatives].clamp_min(0)
    order = torch.argsort(sims[negatives].detach(), descending=True)
    return (push[order] / push.sum()).cumsum(0).numpy()


def bn_affine_drift(state: dict, module: str) -> dict[str, float] | None:
    """How far the BatchNorm of a head (``module``, e.g. ``"predictor"`` or ``"target.projector"``) moved
    from its initial scale 1 and shift 0, in a saved model state: ``{"scale": max |gamma - 1|,
    "shift": max |beta|}``, or None when that BatchNorm has no affine parameters (or does not exist)."""
    w, b = state.get(f"{module}.bn.weight"), state.get(f"{module}.bn.bias")
    if w is None:
        return None
    return {"scale": (w - 1).abs().max().item(), "shift": b.abs().max().item()}


def step_flop(cfg: Config, num_classes: int = 10, num_train: int = 3000) -> float:
    """FLOP of one training step of ``cfg``'s method: forward and backward of the loss on a batch of
    ``cfg.batch_size`` views at ``cfg.image_size`` (the target's forward included for BYOL; the optimiser's
    elementwise update is not counted), counted by ``torch.utils.flop_counter`` on the step's real
    operations. The network is built on the meta device (shapes only, nothing computed), or on the CPU for
    a method whose step needs values (InsDis with NCE)."""
    def count(device: str) -> float:
        torch.manual_seed(0)
        with torch.device(device):
            method = build_method(cfg.replace(device="cpu"), num_classes, num_train)
            views = [torch.rand(cfg.batch_size, 3, cfg.image_size, cfg.image_size) for _ in range(method.n_views)]
            y, idx = torch.zeros(cfg.batch_size, dtype=torch.long), torch.arange(cfg.batch_size)
        with FlopCounterMode(display=False) as counter:
            loss, _ = method(views, y, idx)
            loss.backward()
        return float(counter.get_total_flops())

    try:
        return count("meta")
    except (NotImplementedError, RuntimeError):  # a value was needed (e.g. NCE's normaliser)
        return count("cpu")


def embed_flop(cfg: Config, num_classes: int = 10, num_train: int = 3000) -> float:
    """FLOP of embedding one image at ``cfg.image_size`` (``Method.embed``: what each measurement runs on
    every train and test image), counted on the meta device as :func:`step_flop` does."""
    torch.manual_seed(0)
    with torch.device("meta"):
        method = build_method(cfg.replace(device="cpu"), num_classes, num_train).eval()
        x = torch.rand(8, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        method.embed(x)
    return counter.get_total_flops() / 8


def measured_epochs(cfg: Config) -> int:
    """How many times a run measures itself (epoch 0, every ``eval_every``-th epoch and the last)."""
    return 1 + len({e for e in range(1, cfg.epochs + 1) if e % cfg.eval_every == 0 or e == cfg.epochs})


def run_flop(cfg: Config) -> dict[str, float]:
    """FLOP a run of ``cfg`` computes, counted from its config without training: ``train`` (every
    optimiser step, :func:`step_flop`) and ``measure`` (each measurement embeds the train and test images
    once, :func:`embed_flop`; the alignment pairs, the kNN and the final probe are left out)."""
    n_train = train_images(cfg)
    images = n_train + split_sizes(cfg.dataset)[1]
    return {"train": step_flop(cfg, num_train=n_train) * steps_per_epoch(cfg) * cfg.epochs,
            "measure": embed_flop(cfg, num_train=n_train) * images * measured_epochs(cfg)}
