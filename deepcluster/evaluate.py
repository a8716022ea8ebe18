"""Scoring a trained run against labels: the one place labels meet learned features.

For one finished epoch of a run, with the convnet as trained at the end of that epoch:
- every final grouping (`grouping.group`) at k = the number of true classes of the convolutional representation
  and of the features as the run clusters them, scored by NMI, ACC and ARI; where the run self-labels
  (config.self_label), its final grouping of the self-labelled copy's representation too (`selflabel`);
- the frozen representation: a k-nearest-neighbour classifier (cosine) and a linear probe (logistic
  regression), fitted on the train split and scored on the test split where the dataset has one,
  else on a fixed 20% of the run's images held out;
- baselines on the same images: every grouping of the raw pixels and of the Sobel-magnitude pixels, and
  kNN on the network's input pixels (grayscale) and on their Sobel magnitudes, on the same split.
A run of more than EVALUATION_MAX_IMAGES images is scored on a fixed random subset of that many.
Nothing here feeds back into training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from deepcluster import artifacts, metrics, run_metrics, runs, runtime, stages
from deepcluster.artifacts import RunLayout
from deepcluster.config import Config, GroupingMethod, recorded_config
from deepcluster.data import load_dataset
from deepcluster.errors import DatasetError, RunError
from deepcluster.features import extract_features, representation_features
from deepcluster.grouping import (
    GRAPH_NEIGHBOURS,
    GROUPING_METHODS,
    KMEANS_INITS,
    MIN_GROUP_SHARE,
    group,
    group_by_each,
)
from deepcluster.loader import FileRows
from deepcluster.models import DeepClusterNet
from deepcluster.selflabel import self_label
from deepcluster.sobel import SobelFilter, chunks, prepare_inputs

KNN_NEIGHBOURS = 20
HOLDOUT_FRACTION = 0.2
EVALUATION_SEED = 0  # fixed: the held-out split and the scored subset never depend on the run
# A run of more images is scored on a fixed random subset of this many, read from its files, so that memory stays
# bounded whatever the run's size (every grouping and baseline holds all the scored images' values at once). As many
# as Fashion-MNIST's, MNIST's or CIFAR-10's whole train split, which are scored whole.
EVALUATION_MAX_IMAGES = 60_000
PROBE_MAX_ITER = 1000
DATASETS_WITH_TEST_SPLIT = ("fashion-mnist", "mnist", "cifar10")


def grouping_scores(points: np.ndarray, labels: np.ndarray, method: GroupingMethod = "kmeans") -> dict[str, float]:
    """The points grouped into k = the number of classes by `method`, scored against the labels."""
    return _scores(group(points, len(np.unique(labels)), method), labels)


def _scores(groups: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """NMI, ACC and ARI of groups against the labels, and the largest group's size over a fair share."""
    num_classes = len(np.unique(labels))
    sizes = np.bincount(groups, minlength=num_classes)
    return {
        "nmi": metrics.nmi(labels, groups),
        "acc": metrics.accuracy(labels, groups),
        "ari": metrics.ari(labels, groups),
        "largest_over_fair_share": metrics.largest_over_fair_share(sizes),
    }


def all_groupings(points: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, float]]:
    """grouping_scores of every grouping method, by method (each graph built once)."""
    return _scored_groupings(group_by_each(points, len(np.unique(labels)), GROUPING_METHODS), labels)


def _scored_groupings(groupings: dict[GroupingMethod, np.ndarray], labels: np.ndarray) -> dict[str, dict[str, float]]:
    """Each method's groups (`group_by_each`) scored against the labels, by method."""
    return {method: _scores(groups, labels) for method, groups in groupings.items()}


def knn_accuracy(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray) -> float:
    """Accuracy of a KNN_NEIGHBOURS-nearest-neighbour majority vote under cosine similarity."""
    classifier = KNeighborsClassifier(KNN_NEIGHBOURS, metric="cosine", algorithm="brute")
    return float(classifier.fit(train, train_labels).score(test, test_labels))


def linear_probe_accuracy(
    train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray
) -> float:
    """Accuracy of a multinomial logistic regression on standardised features."""
    scaler = StandardScaler().fit(train)
    probe = LogisticRegression(max_iter=PROBE_MAX_ITER).fit(scaler.transform(train), train_labels)
    return float(probe.score(scaler.transform(test), test_labels))


def sobel_magnitude(inputs: np.ndarray) -> np.ndarray:
    """uint8 grayscale (N, 1, H, W) -> flattened Sobel gradient magnitudes (N, H*W), float32."""
    sobel = SobelFilter()
    magnitudes = []
    for chunk in chunks(inputs):
        gradients = sobel(torch.from_numpy(chunk).float().div_(255))
        magnitudes.append(gradients.square().sum(dim=1).sqrt().flatten(1).numpy())
    return np.concatenate(magnitudes)


def flat_pixels(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, C, H, W) -> flattened pixels in [0, 1] (N, C*H*W), float32."""
    return images.reshape(len(images), -1).astype(np.float32) / 255


ProbeSets = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class ProbeSplit:
    """Where kNN and the linear probe are fitted and scored: the dataset's test split, else a fixed holdout."""

    def __init__(self, config: Config, input_size: int, labels: np.ndarray) -> None:
        self.labels = labels
        self.test, missing = _test_split(config, input_size)
        if self.test is None:
            order = np.random.default_rng(EVALUATION_SEED).permutation(len(labels))
            self.held_out = order[: int(len(labels) * HOLDOUT_FRACTION)]
            self.kept = order[len(self.held_out) :]
            self.description = f"holdout: {len(self.held_out)} of the {len(labels)} images scored ({missing})"
        else:
            self.description = f"test split: {len(self.test[1])} images"

    def sets(self, train_features: np.ndarray, features_of: Callable[[np.ndarray], np.ndarray]) -> ProbeSets:
        """(train features, train labels, test features, test labels); features_of maps network inputs."""
        if self.test is None:
            kept, held_out = self.kept, self.held_out
            return train_features[kept], self.labels[kept], train_features[held_out], self.labels[held_out]
        test_inputs, test_labels = self.test
        return train_features, self.labels, features_of(test_inputs), test_labels


def baselines(images: np.ndarray, inputs: np.ndarray, probe: ProbeSplit) -> dict[str, dict[str, Any]]:
    """Every final grouping of the raw pixels and of the Sobel-magnitude pixels of the same images; kNN on
    the network's input pixels and on their Sobel magnitudes, on the probe split."""
    sobel = sobel_magnitude(inputs)
    return {
        "pixels": {
            "groupings": all_groupings(flat_pixels(images), probe.labels),
            "knn_accuracy": knn_accuracy(*probe.sets(flat_pixels(inputs), flat_pixels)),
        },
        "sobel_pixels": {
            "groupings": all_groupings(sobel, probe.labels),
            "knn_accuracy": knn_accuracy(*probe.sets(sobel, sobel_magnitude)),
        },
    }


def evaluate_run(layout: RunLayout, epoch: int | None = None, device: str = "auto") -> tuple[int, dict[str, Any]]:
    """Evaluate `epoch` (default: the last finished one) of a run; merge the result into evaluation.json.

    Returns the epoch evaluated and the evaluation.json contents. Raises RunError when the run has no
    labels or the epoch is not finished, or the run fails its check against the manifests.
    """
    artifacts.check_run(layout)
    record = artifacts.read_run_record(layout)
    config = recorded_config(record["config"])
    if epoch is None:
        done = layout.completed_epochs()
        if not done:
            raise RunError(f"run {layout.run_id!r} has no finished epoch to evaluate")
        epoch = done[-1]
    epoch_metrics = run_metrics.epoch_metrics(layout, epoch)  # also: the epoch must be finished
    if not layout.labels.is_file():
        raise RunError(f"run {layout.run_id!r} has no labels ({config.dataset}): evaluate needs a labelled dataset")

    torch_device = runtime.resolve_device(device)
    count = len(FileRows(layout.inputs))
    scored = scored_rows(count)
    labels = artifacts.load_array(layout.labels)[scored]
    inputs = FileRows(layout.inputs, scored).read().numpy()
    model, _ = runs.load_model(layout.model(epoch), config, torch_device)
    bf16 = runtime.use_bf16(config, torch_device)

    conv_features = _representation_of(model, config, torch_device, bf16)
    projected = extract_features(model, torch.from_numpy(inputs).to(torch_device), config.batch_size, False, bf16)
    clustered = stages.reduce(projected, config.pca_dim)[0].cpu().numpy()
    conv = conv_features(inputs)
    probe = ProbeSplit(config, record["dataset"]["input_size"], labels)
    probe_data = probe.sets(conv, conv_features)
    conv_groups = group_by_each(conv, len(np.unique(labels)), GROUPING_METHODS)

    result = {
        "epoch": epoch,
        "images": {"scored": len(labels), "of": count},
        "features": {"clustered": clustered.shape[1], "conv": conv.shape[1]},
        "grouping": config.grouping,
        "graph_neighbours": GRAPH_NEIGHBOURS,
        "groupings": {
            "clustered": all_groupings(clustered, labels),
            "conv": _scored_groupings(conv_groups, labels),
        },
        "knn_accuracy": knn_accuracy(*probe_data),
        "linear_probe_accuracy": linear_probe_accuracy(*probe_data),
        "probe_split": probe.description,
        "run_nmi_previous": epoch_metrics["nmi_previous"],
        "run_largest_over_fair_share": epoch_metrics["cluster_sizes"]["largest_over_fair_share"],
    }
    if config.self_label:
        first = conv_groups[config.grouping]
        result["self_label"] = _self_labelled_scores(
            model, inputs, conv, first, labels, probe, config, epoch, torch_device, bf16
        )
    return epoch, _merge(layout, record, result, FileRows(layout.ingested_images, scored), inputs, probe)


def _self_labelled_scores(
    model: DeepClusterNet,
    inputs: np.ndarray,
    conv: np.ndarray,
    first: np.ndarray,
    labels: np.ndarray,
    probe: ProbeSplit,
    config: Config,
    epoch: int,
    device: torch.device,
    bf16: bool,
) -> dict[str, Any]:
    """The run's final grouping at k = the number of classes of the representation of its convnet self-labelled for
    those k groups (`selflabel`, from `first`, the grouping of `conv`, the convnet's own representation of `inputs`),
    scored, with kNN on that representation and the share of images it trained on."""
    tensor = torch.from_numpy(inputs).to(device)
    tuned = self_label(model, tensor, config, conv, first, len(np.unique(labels)), epoch, bf16)
    conv_features = _representation_of(tuned.model, config, device, bf16)
    tuned_conv = conv_features(inputs)
    return {
        "passes": config.self_label,
        "grouping": config.grouping,
        "confident_share": tuned.confident_share,
        **grouping_scores(tuned_conv, labels, config.grouping),
        "knn_accuracy": knn_accuracy(*probe.sets(tuned_conv, conv_features)),
    }


def _representation_of(
    model: DeepClusterNet, config: Config, device: torch.device, bf16: bool
) -> Callable[[np.ndarray], np.ndarray]:
    """Network inputs (numpy) -> the model's L2-normalised convolutional representation (numpy)."""

    def conv_features(images: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(images).to(device)
        return representation_features(model, tensor, config.batch_size, bf16).cpu().numpy()

    return conv_features


def scored_rows(count: int) -> range | np.ndarray:
    """The rows of a run of `count` images that evaluation scores: all of them, or beyond EVALUATION_MAX_IMAGES that
    many drawn at random (a fixed seed: the same rows for every epoch and every run of that size), in index order."""
    if count <= EVALUATION_MAX_IMAGES:
        return range(count)
    chosen = np.random.default_rng(EVALUATION_SEED).choice(count, EVALUATION_MAX_IMAGES, replace=False)
    return np.sort(chosen)


def _test_split(config: Config, input_size: int) -> tuple[tuple[np.ndarray, np.ndarray] | None, str]:
    """The dataset's test split (same classes, no limit) as network inputs and labels, or None and why not."""
    if config.dataset not in DATASETS_WITH_TEST_SPLIT:
        return None, f"{config.dataset} has no test split"
    if config.split != "train":
        return None, "the run trained on the test split"
    try:
        test_set = load_dataset(config.model_copy(update={"split": "test", "limit": None}))
    except (DatasetError, FileNotFoundError) as error:
        return None, f"test split unavailable: {error}"
    if test_set.labels is None:
        return None, "the test split has no labels"
    return (prepare_inputs(test_set.images, input_size), test_set.labels), ""


def read_evaluation(layout: RunLayout) -> dict[str, Any]:
    """evaluation.json (results derived from the run, not part of it); a RunError naming it where damaged."""
    evaluation = artifacts.read_json(layout.evaluation)
    if not (isinstance(evaluation, dict) and isinstance(evaluation.get("epochs"), dict)):
        raise RunError(f"{layout.evaluation} is damaged: delete it and evaluate again")
    return evaluation


def _merge(
    layout: RunLayout,
    record: dict[str, Any],
    result: dict[str, Any],
    images: FileRows,
    inputs: np.ndarray,
    probe: ProbeSplit,
) -> dict[str, Any]:
    """Add `result` to evaluation.json under its epoch (computing the baselines once per run, on `images`, the scored
    rows as ingested), atomically. Baselines recorded before every grouping method and kNN baseline existed, on
    other images than `result`'s, or with graphs of other sizes, are computed again."""
    path = layout.evaluation
    with artifacts.FileLock(layout.evaluation_lock):
        evaluation: dict[str, Any] = (
            read_evaluation(layout) if path.is_file() else {"run_id": layout.run_id, "epochs": {}}
        )
        missing = set(GROUPING_METHODS) - set(evaluation.get("baselines", {}).get("pixels", {}).get("groupings", {}))
        scored_before = evaluation.get("baselines_scored", result["images"]["of"])  # before subsets: every image
        graphs_before = evaluation.get("baselines_graph_neighbours")
        if missing or scored_before != result["images"]["scored"] or graphs_before != GRAPH_NEIGHBOURS:
            evaluation["baselines"] = baselines(images.read().numpy(), inputs, probe)
            evaluation["baselines_scored"] = result["images"]["scored"]
            evaluation["baselines_graph_neighbours"] = GRAPH_NEIGHBOURS
        evaluation["dataset"] = record["dataset"]["source"]
        evaluation["num_classes"] = int(len(np.unique(probe.labels)))
        evaluation["epochs"][str(result["epoch"])] = result
        artifacts.write_json(path, evaluation)
    return evaluation


TABLE_COLUMNS = ("features", "grouping", "nmi", "acc", "ari", "knn_accuracy", "linear_probe_accuracy")


def final_scores(result: dict[str, Any]) -> dict[str, float]:
    """An epoch's scores by the run's final grouping: its `grouping` on the convolutional representation, of the
    self-labelled copy where the run self-labels (evaluations written before there was a choice: k-means on the
    clustered features)."""
    if "grouping" not in result:
        return result["kmeans"]
    if "self_label" in result:
        return result["self_label"]
    return result["groupings"]["conv"][result["grouping"]]


def format_evaluation(evaluation: dict[str, Any], epoch: int) -> str:
    """The evaluation of `epoch` and the baselines as a plain-text table, a row per features and grouping."""
    result = evaluation["epochs"][str(epoch)]
    dims = result["features"]
    sources = [
        (f"baseline: {name}", scores.get("groupings"), scores) for name, scores in evaluation["baselines"].items()
    ]
    if "grouping" in result:
        sources.append((f"epoch {epoch}, clustered ({dims['clustered']}-d)", result["groupings"]["clustered"], {}))
        sources.append((f"epoch {epoch}, conv ({dims['conv']}-d)", result["groupings"]["conv"], result))
        if "self_label" in result:
            tuned = result["self_label"]
            scores = {key: tuned[key] for key in ("nmi", "acc", "ari")}
            name = f"epoch {epoch}, conv self-labelled ({tuned['passes']} passes)"
            sources.append((name, {result["grouping"]: scores}, {"knn_accuracy": tuned["knn_accuracy"]}))
    else:  # written before there were several groupings: k-means on the clustered features and the trunk
        sources.append((f"epoch {epoch}, clustered ({dims['clustered']}-d)", {"kmeans": result["kmeans"]}, {}))
        sources.append((f"epoch {epoch}, trunk ({dims['trunk']}-d)", {"kmeans": result["kmeans_trunk"]}, result))
    rows = []
    for features, by_method, extra in sources:
        by_method = by_method or {"kmeans": extra}
        for index, (method, scores) in enumerate(by_method.items()):
            probes = extra if index == 0 else {}  # kNN and probe accuracy do not depend on the grouping
            rows.append({**probes, "features": features, "grouping": method, **scores})
    final = f"; the run's final grouping: {result['grouping']} on the conv features" if "grouping" in result else ""
    if "self_label" in result:
        share = result["self_label"]["confident_share"]
        final += f" of the convnet self-labelled on the {share:.1%} of images whose neighbours mostly share their group"
    images = result.get("images", {})
    if images and images["scored"] < images["of"]:
        final += f"; scored on a fixed random {images['scored']:,} of the run's {images['of']:,} images"
    return "\n".join(
        [
            run_metrics.format_table(rows, TABLE_COLUMNS),
            (
                f"grouped into k = {evaluation['num_classes']} classes (k-means: best of {KMEANS_INITS} k-means++ "
                f"starts; spectral: {GRAPH_NEIGHBOURS['spectral']}-nearest-neighbour graph; snn: "
                f"{GRAPH_NEIGHBOURS['snn']}-nearest-neighbour graph weighted by shared neighbours; snn-kmeans: its "
                f"spectral embedding divided by k-means; snn-sized: the same, no group below {MIN_GROUP_SHARE:.0%} of "
                f"an even share; leiden: that graph's communities of highest modularity)"
                f"{final}; "
                f"kNN (k = {KNN_NEIGHBOURS}, "
                f"cosine) and linear probe on the conv features, the baselines' kNN on the input pixels: "
                f"{result['probe_split']}"
            ),
        ]
    )
